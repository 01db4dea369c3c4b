//! The sender: sends the queued messages through WhatsApp's Cloud API and
//! stores what WhatsApp answered. Runs in every processor (and in the
//! all-in-one); replicas share the queue.
//!
//! A send is claimed by moving its due time forward by a lease: only one
//! sender's guarded update can move it from the time it read. WhatsApp's
//! id is noted on the send the moment WhatsApp accepts it, before the
//! outcome is stored with its events; a sender that finds a send with an
//! id (its first sender stopped in between) stores the outcome without
//! sending again. A send is sent twice only if a sender stops between
//! WhatsApp's answer and that one write, or WhatsApp's answer is lost.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::domain::{PENDING, QueuedSend};
use crate::graph::Graph;
use crate::outbound::{self, MAX_ATTEMPTS, backoff};
use crate::plan::SendOutcome;
use crate::processing::Processor;
use crate::relay::Relay;
use crate::store::StoreResult;

/// How often an idle sender looks for due sends.
const POLL: Duration = Duration::from_millis(250);
/// A send whose message is not stored after this long was not stored at
/// all (the request that queued it failed); it is dropped.
const ORPHAN_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Conversations sent to at once; within one, sends go in order.
const CONVERSATIONS_AT_ONCE: usize = 8;

pub struct Sender {
    processor: Processor,
    relay: Relay,
    graph: Graph,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// How long a claimed send is left to its sender.
    lease: chrono::TimeDelta,
}

impl Sender {
    pub fn new(processor: Processor, relay: Relay, graph: Graph, timeout: Duration) -> Self {
        let rate = NonZeroU32::new(graph.send_rate()).unwrap_or(NonZeroU32::MIN);
        // Claims per round are bounded by the rate, so a claimed send waits
        // about a second for its turn, then at most `timeout` for WhatsApp.
        let lease = chrono::TimeDelta::from_std(timeout.saturating_mul(2) + Duration::from_secs(2))
            .unwrap_or(chrono::TimeDelta::seconds(30));
        Self {
            processor,
            relay,
            graph,
            limiter: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
            lease,
        }
    }

    /// Sends until `cancel`; the sends in hand are finished first.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(
            phone_number_id = self.graph.phone_number_id(),
            rate = self.graph.send_rate(),
            "sending queued messages through the WhatsApp Cloud API"
        );
        while !cancel.is_cancelled() {
            let sent = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the send queue; retrying");
                    0
                }
            };
            if sent == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// Claims the sends due now (a second's worth at the send rate) and
    /// sends them; returns how many were claimed.
    async fn round(&self) -> StoreResult<usize> {
        let now = now();
        let store = self.processor.store();
        let due = store
            .due_sends(now, self.graph.send_rate().max(1) as usize)
            .await?;
        let mut claimed: BTreeMap<String, Vec<QueuedSend>> = BTreeMap::new();
        let mut n = 0;
        for send in due {
            let mut claim = send.clone();
            claim.due = now + self.lease;
            if store.update_send(&claim, send.due).await? {
                n += 1;
                claimed
                    .entry(claim.conversation_id.clone())
                    .or_default()
                    .push(claim);
            }
        }
        futures::stream::iter(claimed.into_values())
            .for_each_concurrent(CONVERSATIONS_AT_ONCE, |sends| async move {
                for send in sends {
                    if let Err(e) = self.send(send).await {
                        // Left claimed: tried again when the lease runs out.
                        tracing::warn!(error = %e, "send not finished; retried later");
                    }
                }
            })
            .await;
        Ok(n)
    }

    /// Sends one claimed send and stores the outcome.
    async fn send(&self, send: QueuedSend) -> StoreResult<()> {
        if let Some(wamid) = send.wamid.clone() {
            // Accepted by WhatsApp before its sender stopped.
            let outcome = SendOutcome::Accepted { wamid, at: now() };
            return self.finish(&send, &outcome).await;
        }
        let store = self.processor.store();
        let Some(message) = store.message(&send.id).await? else {
            if now() - queued_at(&send) > ORPHAN_AGE {
                tracing::warn!(id = %send.id, "dropping a send whose message was never stored");
                return self.finish(&send, &SendOutcome::Dropped).await;
            }
            // Its message may be being stored right now.
            return self.later(send, chrono::TimeDelta::seconds(1)).await;
        };
        if message.message_id != send.id {
            // Accepted and renamed, by a sender that stopped before the
            // rest of the outcome was stored: finish it.
            let outcome = SendOutcome::Accepted {
                wamid: message.message_id,
                at: now(),
            };
            return self.finish(&send, &outcome).await;
        }
        if message.status != PENDING {
            let outcome = match message.errors {
                Some(errors) if message.status == "failed" => {
                    SendOutcome::Refused { errors, at: now() }
                }
                _ => SendOutcome::Dropped,
            };
            return self.finish(&send, &outcome).await;
        }
        if !self.processor.stored_whole(&message).await? {
            // The request that stored it failed half-way (and was answered
            // 503): sent only if a retry with its key finishes storing it.
            if now() - queued_at(&send) > ORPHAN_AGE {
                let outcome = SendOutcome::Refused {
                    errors: not_sent("its request failed before it was stored whole"),
                    at: now(),
                };
                return self.finish(&send, &outcome).await;
            }
            return self.later(send, chrono::TimeDelta::seconds(1)).await;
        }
        let mut send = send;
        match self.resolve_references(&mut send).await? {
            References::Ready => {}
            References::Waiting => return self.later(send, chrono::TimeDelta::seconds(1)).await,
            References::Failed(why) => {
                let outcome = SendOutcome::Refused {
                    errors: not_sent(&why),
                    at: now(),
                };
                return self.finish(&send, &outcome).await;
            }
        }
        self.limiter.until_ready().await;
        // Claimed again for this one request: the round's claim may have
        // run low while earlier sends of the conversation went out.
        let Some(mut send) = self.reclaim(send).await? else {
            return Ok(());
        };
        send.attempts += 1;
        let claimed = send.due;
        match self.graph.send(&send.request).await {
            Ok(wamid) => {
                metrics::counter!("messages_sent_total").increment(1);
                send.wamid = Some(wamid.clone());
                self.note(&send, claimed).await;
                let outcome = SendOutcome::Accepted { wamid, at: now() };
                self.finish(&send, &outcome).await
            }
            Err(e) if e.retry && send.attempts < MAX_ATTEMPTS => {
                metrics::counter!("send_retries_total").increment(1);
                let wait = backoff(send.attempts, jitter(&send.id, send.attempts));
                tracing::info!(id = %send.id, attempt = send.attempts, error = %e, ?wait, "WhatsApp did not take the message; trying again");
                send.last_error = Some(e.to_string());
                send.due = now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
                store.update_send(&send, claimed).await.map(drop)
            }
            Err(e) => {
                metrics::counter!("send_failures_total").increment(1);
                tracing::warn!(id = %send.id, error = %e, "WhatsApp refused the message");
                let outcome = SendOutcome::Refused {
                    errors: e.to_errors(),
                    at: now(),
                };
                self.finish(&send, &outcome).await
            }
        }
    }

    /// Leaves a claimed send for `wait` (its attempts unchanged).
    async fn later(&self, send: QueuedSend, wait: chrono::TimeDelta) -> StoreResult<()> {
        self.move_due(send, wait).await.map(drop)
    }

    /// Claims a send again for one request (`None`: another sender has it).
    async fn reclaim(&self, send: QueuedSend) -> StoreResult<Option<QueuedSend>> {
        self.move_due(send, self.lease).await
    }

    /// Moves a claimed send's due time `wait` from now, if it is still as
    /// claimed (`None`: another sender has it).
    async fn move_due(
        &self,
        mut send: QueuedSend,
        wait: chrono::TimeDelta,
    ) -> StoreResult<Option<QueuedSend>> {
        let claimed = send.due;
        send.due = now() + wait;
        let ours = self.processor.store().update_send(&send, claimed).await?;
        Ok(ours.then_some(send))
    }

    /// Replaces the local ids a reply or reaction names with WhatsApp's
    /// (the message it refers to may have been sent just before it).
    async fn resolve_references(&self, send: &mut QueuedSend) -> StoreResult<References> {
        for local in outbound::local_references(&send.request) {
            match self.processor.store().message(&local).await? {
                Some(target) if target.message_id != local => {
                    outbound::replace_reference(&mut send.request, &local, &target.message_id);
                }
                Some(target) if target.status == PENDING => return Ok(References::Waiting),
                _ => {
                    return Ok(References::Failed(format!(
                        "the message it refers to ({local}) was not sent"
                    )));
                }
            }
        }
        Ok(References::Ready)
    }

    /// Notes WhatsApp's id on the send: a few tries, since a sender that
    /// stops before this write or the outcome's would send it again.
    async fn note(&self, send: &QueuedSend, claimed: DateTime<Utc>) {
        let mut send = send.clone();
        send.due = claimed;
        for attempt in 1..=5u32 {
            match self.processor.store().update_send(&send, claimed).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot note WhatsApp's id yet");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }

    /// Stores the outcome (the message's new state and its events, the
    /// send dropped from the queue) and relays the events.
    async fn finish(&self, send: &QueuedSend, outcome: &SendOutcome) -> StoreResult<()> {
        let events = self.processor.send_outcome(send, outcome).await?;
        self.relay.relay(&events).await;
        Ok(())
    }
}

/// Now, to the millisecond: due times are compared at that precision.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
}

/// When the send was queued (sends queued without the time: their due time).
fn queued_at(send: &QueuedSend) -> DateTime<Utc> {
    send.queued_at.unwrap_or(send.due)
}

/// Whether the messages a send refers to have WhatsApp's ids.
enum References {
    Ready,
    Waiting,
    Failed(String),
}

/// The `errors` of a message that was not sent, for a reason of ours.
fn not_sent(why: &str) -> serde_json::Value {
    serde_json::json!([{"title": "Not sent", "message": format!("Not sent: {why}")}])
}

/// A number in 0..1, different per send and attempt.
fn jitter(id: &str, attempt: u32) -> f64 {
    let hash = RandomState::new().hash_one((id, attempt));
    (hash % 10_000) as f64 / 10_000.0
}
