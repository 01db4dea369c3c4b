//! The sender: sends the queued messages through WhatsApp's Cloud API and
//! stores what WhatsApp answered. Runs in every processor (and in the
//! all-in-one); replicas share the queue.
//!
//! Order: only a conversation's first queued send (by when it was
//! accepted) may go out. One that waits for a retry, or is leased to a
//! sender (even a dead one, until its lease runs out), holds back the rest
//! of its conversation, never the other conversations.
//!
//! A send is claimed by moving its due time forward by a lease: only one
//! sender's guarded update can move it from the time it read. WhatsApp's
//! id is noted on the send the moment WhatsApp accepts it, before the
//! outcome is stored with its events; a sender that finds a send with an
//! id (its first sender stopped in between) stores the outcome without
//! sending again. Stopping (SIGTERM), a sender starts no new request and
//! waits for the answers in flight. A send goes out twice only if a sender
//! is killed between WhatsApp's answer and that one write, or the answer is
//! lost, and even then not if a status webhook naming the message
//! (`biz_opaque_callback_data`) arrives before the lease runs out.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::processing::Processor;
use crate::relay::Relay;
use wa_broker::retry::{self, Backoff};
use wa_core::domain::{PENDING, QueuedSend};
use wa_core::outbound::{self, MAX_ATTEMPTS, SEND_RETRY};
use wa_core::plan::SendOutcome;
use wa_graph::Graph;
use wa_store::StoreResult;

/// How often an idle sender looks for due sends.
const POLL: Duration = Duration::from_millis(250);
/// A send whose message is not stored after this long was not stored at
/// all (the request that queued it failed); it is dropped.
const ORPHAN_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Conversations sent to at once; within one, sends go one by one, in order.
const CONVERSATIONS_AT_ONCE: usize = 8;
/// Sends of one conversation a round takes, so that a long queue does not
/// keep the round (and a stop) waiting.
const MAX_PER_CONVERSATION: usize = 20;
/// Tries at noting WhatsApp's id on a send before going on without it.
const NOTE_ATTEMPTS: u32 = 5;
/// Waits between those tries: 100 ms doubling to 500 ms, jittered. (They
/// grew by 100 ms a try, 1.5 s in all counting a pointless wait after the
/// last try; now at most 1.2 s.)
const NOTE_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));

pub struct Sender {
    processor: Processor,
    relay: Relay,
    graph: Graph,
    /// `SEND_RATE` per business number: a number's state is made on its
    /// first send (and dropped again when it is back to full), so there are
    /// at most as many as numbers sent through.
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// How long a claimed send is left to its sender.
    lease: chrono::TimeDelta,
    /// Requests to WhatsApp not answered yet (reported when stopping).
    in_flight: Arc<AtomicUsize>,
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
            limiter: Arc::new(RateLimiter::keyed(Quota::per_second(rate))),
            lease,
            in_flight: Arc::default(),
        }
    }

    /// Sends until `cancel`. Then no new request starts; those WhatsApp
    /// has not answered yet are waited for (each at most the Graph
    /// timeout) and their answers stored, so a deploy sends nothing twice.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(
            default_number = self.graph.default_number().unwrap_or("<none>"),
            rate_per_number = self.graph.send_rate(),
            "sending queued messages through the WhatsApp Cloud API"
        );
        let announce = {
            let (cancel, in_flight) = (cancel.clone(), self.in_flight.clone());
            tokio::spawn(async move {
                cancel.cancelled().await;
                tracing::info!(
                    in_flight = in_flight.load(Ordering::Relaxed),
                    "stopping the sender: no new sends; waiting for WhatsApp's answers to those in flight"
                );
            })
        };
        while !cancel.is_cancelled() {
            let sent = match self.round(&cancel).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the send queue; retrying");
                    0
                }
            };
            if sent == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        announce.abort();
        tracing::info!("sender stopped: every send in flight was answered and stored");
    }

    /// Sends the queues of the conversations with sends due now (a
    /// second's worth at the send rate), each from its first send, in
    /// order; returns how many were claimed.
    async fn round(&self, cancel: &CancellationToken) -> StoreResult<usize> {
        let store = self.processor.store();
        // Numbers whose limiter is full again need no state.
        self.limiter.retain_recent();
        let due = store
            .due_sends(now(), self.graph.send_rate().max(1) as usize)
            .await?;
        let mut conversations: Vec<String> = Vec::new();
        for send in due {
            if !conversations.contains(&send.conversation_id) {
                conversations.push(send.conversation_id);
            }
        }
        let claimed = AtomicUsize::new(0);
        futures::stream::iter(conversations)
            .for_each_concurrent(CONVERSATIONS_AT_ONCE, |id| {
                let claimed = &claimed;
                async move {
                    match self.drain(&id, cancel).await {
                        Ok(n) => {
                            claimed.fetch_add(n, Ordering::Relaxed);
                        }
                        // Left claimed: tried again when the lease runs out.
                        Err(e) => tracing::warn!(error = %e, "send not finished; retried later"),
                    }
                }
            })
            .await;
        Ok(claimed.into_inner())
    }

    /// Sends a conversation's queue from its first send while that one is
    /// ours to take: due, or held behind one we just finished. A first
    /// send that waits (for a retry, or leased to another sender, perhaps
    /// one that died) holds back the rest of its conversation, in one
    /// write, so they neither overtake it nor fill the next rounds.
    /// Returns how many were claimed.
    async fn drain(&self, conversation_id: &str, cancel: &CancellationToken) -> StoreResult<usize> {
        let store = self.processor.store();
        let mut claimed = 0;
        let mut after_ours = false;
        let mut lost_race = false;
        while claimed < MAX_PER_CONVERSATION && !cancel.is_cancelled() {
            let Some(first) = store.first_send(conversation_id).await? else {
                return Ok(claimed);
            };
            let now = now();
            let takeable = first.due <= now || (after_ours && first.held);
            let mut claim = first.clone();
            claim.due = now + self.lease;
            claim.held = false;
            if takeable && !store.update_send(&claim, first.due).await? {
                if after_ours && !std::mem::replace(&mut lost_race, true) {
                    // Held by another sender just as we read it: read again.
                    continue;
                }
                // Another sender's now: the rest wait behind it.
                store
                    .hold_sends(conversation_id, &first.id, claim.due)
                    .await?;
                return Ok(claimed);
            }
            if !takeable {
                store
                    .hold_sends(conversation_id, &first.id, first.due)
                    .await?;
                return Ok(claimed);
            }
            claimed += 1;
            match self.send(claim, cancel).await? {
                Step::Finished => after_ours = true,
                Step::Left => {
                    if let Some(first) = store.first_send(conversation_id).await? {
                        store
                            .hold_sends(conversation_id, &first.id, first.due.max(now))
                            .await?;
                    }
                    return Ok(claimed);
                }
            }
        }
        // Stopped at the round's share or by a stop: the next one, held
        // behind those just sent, is due at once for whoever comes next
        // (not when the lease of the one before it would have run out).
        if let Some(next) = store.first_send(conversation_id).await?
            && next.held
        {
            let mut due_now = next.clone();
            due_now.due = now();
            due_now.held = false;
            store.update_send(&due_now, next.due).await?;
        }
        Ok(claimed)
    }

    /// Sends one claimed send and stores the outcome; `Left` when it stays
    /// queued (a retry, a wait, or another sender's).
    async fn send(&self, send: QueuedSend, cancel: &CancellationToken) -> StoreResult<Step> {
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
            // Accepted and renamed: by a sender that stopped before the
            // rest of the outcome was stored, or by a status webhook that
            // named this message (`biz_opaque_callback_data`): finish it.
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
        // The conversation's own number; sends queued before numbers
        // existed (or with none) go through the default one.
        let number = send
            .phone_number_id
            .clone()
            .filter(|number| !number.is_empty())
            .or_else(|| self.graph.default_number().map(str::to_owned));
        let number = match number {
            Some(number) if self.graph.has_token_for(&number) => number,
            // A configuration matter: retrying would not help.
            unserved => {
                let why = match unserved {
                    Some(number) => format!(
                        "no access token serves business number {number} (set WHATSAPP_ACCESS_TOKEN, or a token for it in WHATSAPP_NUMBER_TOKENS)"
                    ),
                    None => "it names no business number and WHATSAPP_PHONE_NUMBER_ID is not set"
                        .to_owned(),
                };
                metrics::counter!("send_failures_total").increment(1);
                tracing::warn!(id = %send.id, "not sent: {why}");
                let outcome = SendOutcome::Refused {
                    errors: not_sent(&why),
                    at: now(),
                };
                return self.finish(&send, &outcome).await;
            }
        };
        tokio::select! {
            () = self.limiter.until_key_ready(&number) => {}
            () = cancel.cancelled() => return self.release(send).await,
        }
        if cancel.is_cancelled() {
            return self.release(send).await;
        }
        // Claimed again for this one request: the round's claim may have
        // run low while earlier sends of the conversation went out.
        let Some(mut send) = self.reclaim(send).await? else {
            return Ok(Step::Left);
        };
        if cancel.is_cancelled() {
            return self.release(send).await;
        }
        send.attempts += 1;
        let claimed = send.due;
        let answer = {
            let _in_flight = InFlight::new(&self.in_flight);
            self.graph.send_from(&number, &send.request).await
        };
        match answer {
            Ok(wamid) => {
                metrics::counter!("messages_sent_total").increment(1);
                send.wamid = Some(wamid.clone());
                self.note(&send, claimed).await;
                let outcome = SendOutcome::Accepted { wamid, at: now() };
                self.finish(&send, &outcome).await
            }
            Err(e) if e.retry && send.attempts < MAX_ATTEMPTS => {
                metrics::counter!("send_retries_total").increment(1);
                let wait = retry::wait(&SEND_RETRY, send.attempts);
                tracing::info!(id = %send.id, attempt = send.attempts, error = %e, ?wait, "WhatsApp did not take the message; trying again");
                send.last_error = Some(e.to_string());
                send.due = now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
                store.update_send(&send, claimed).await?;
                Ok(Step::Left)
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

    /// Gives a claimed send back at once (stopping): the next sender, here
    /// or on another replica, takes it without waiting out the lease.
    async fn release(&self, send: QueuedSend) -> StoreResult<Step> {
        self.later(send, chrono::TimeDelta::zero()).await
    }

    /// Leaves a claimed send for `wait` (its attempts unchanged).
    async fn later(&self, send: QueuedSend, wait: chrono::TimeDelta) -> StoreResult<Step> {
        self.move_due(send, wait).await?;
        Ok(Step::Left)
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
        for attempt in 1..=NOTE_ATTEMPTS {
            match self.processor.store().update_send(&send, claimed).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot note WhatsApp's id yet");
                    if attempt < NOTE_ATTEMPTS {
                        retry::pause(&NOTE_RETRY, attempt).await;
                    }
                }
            }
        }
    }

    /// Stores the outcome (the message's new state and its events, the
    /// send dropped from the queue) and relays the events.
    async fn finish(&self, send: &QueuedSend, outcome: &SendOutcome) -> StoreResult<Step> {
        let events = self.processor.send_outcome(send, outcome).await?;
        self.relay.relay(&events).await;
        Ok(Step::Finished)
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

/// Where a send stands after a turn of the sender.
enum Step {
    /// Out of the queue: WhatsApp's answer (or why it was not sent) stored.
    Finished,
    /// Still queued.
    Left,
}

/// Counts a request to WhatsApp while it is in flight.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
