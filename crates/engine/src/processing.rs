//! Running the processing rules against a store: read what a batch needs,
//! plan it ([`wa_core::plan`]), have the store apply the change set, and
//! start over when a guard reports that another replica got there first.
//!
//! The processor service and the all-in-one binary call
//! [`Processor::process`] with the payloads they received and publish the
//! events it returns; the API calls [`Processor::mark_read`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use wa_broker::Ingest;
use wa_broker::retry::{self, Backoff};
use wa_core::domain::{Event, Message, QueuedSend, RawPayload};
use wa_core::numbers;
use wa_core::plan::{self, Batch, ChangeSet, Known, Lookup, RejectedItem, SendOutcome};
use wa_core::webhook::{self, Parsed, PayloadError};
use wa_store::{ErrorKind, Store, StoreError, StoreResult};

use crate::numbers::Numbers;

/// Turns an ingested payload into what it asks to store.
pub fn decode(kind: Ingest, body: &[u8]) -> Result<Parsed, PayloadError> {
    match kind {
        Ingest::Webhook => webhook::parse(body),
        // Queued by an earlier version's API (the API now stores its sends).
        Ingest::Send => serde_json::from_slice::<Message>(body)
            .map(|message| Parsed {
                messages: vec![message],
                ..Parsed::default()
            })
            .map_err(|e| PayloadError(format!("not a message to send: {e}"))),
    }
}

/// Read-plan-apply rounds before a batch that keeps meeting concurrent
/// changes is handed back (to be retried later).
const MAX_ROUNDS: u32 = 8;
/// How long a round that met a concurrent change waits before reading
/// again, so the other writer can finish: 5 ms doubling to 40 ms. It grew
/// by 5 ms a round (5 to 40 ms, 180 ms in all); doubling waits a little
/// longer in all (235 ms at most, about 175 ms on average with the
/// jitter), and the jitter is what matters here: two writers that collide
/// and wait the same time collide again.
const CONFLICT_RETRY: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(40));

#[derive(Clone)]
pub struct Processor {
    store: Arc<dyn Store>,
    numbers: Numbers,
}

impl Processor {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            numbers: Numbers::new(store.clone()),
            store,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The home number and the numbers webhooks came for.
    pub fn numbers(&self) -> &Numbers {
        &self.numbers
    }

    /// Stores a batch of parsed payloads and returns one event per change
    /// actually made: a redelivered payload changes nothing and emits
    /// nothing. Safe to call again with the same payloads after a failure
    /// or a crash at any point.
    pub async fn process(&self, items: Vec<(RawPayload, Parsed)>) -> StoreResult<Vec<Event>> {
        let mut batch = Batch::default();
        for (raw, parsed) in items {
            for error in &parsed.whatsapp_errors {
                tracing::warn!(payload = %raw.id, %error, "WhatsApp reports an error");
            }
            for item in parsed.rejected {
                tracing::warn!(payload = %raw.id, path = %item.path, reason = %item.reason, "webhook item refused");
                metrics::counter!("webhook_items_rejected_total").increment(1);
                batch.rejected.push(RejectedItem {
                    id: format!("{}:{}", raw.id, item.path),
                    payload_id: raw.id.clone(),
                    path: item.path,
                    reason: item.reason,
                    item: item.item,
                });
            }
            batch.payloads.push(raw);
            batch.messages.extend(parsed.messages);
            batch.statuses.extend(parsed.statuses);
        }
        // Each item to the conversation of its business number: the first
        // number ever stored for becomes the home number.
        let first = numbers::first_number(&batch.messages, &batch.statuses);
        let home = self.numbers.home_or(first).await?;
        numbers::route(&mut batch.messages, &mut batch.statuses, home.as_deref());
        self.numbers.note(&batch.messages, &batch.statuses).await?;
        self.process_batch(&batch).await
    }

    /// Stores what a batch carries (see [`Processor::process`]).
    pub async fn process_batch(&self, batch: &Batch) -> StoreResult<Vec<Event>> {
        let offered = batch.messages.len();
        let committed = self
            .commit(&batch.lookup(), |known| plan::plan_batch(batch, known))
            .await?;
        metrics::counter!("messages_stored_total").increment(committed.inserted as u64);
        metrics::counter!("messages_duplicate_total")
            .increment(offered.saturating_sub(committed.inserted) as u64);
        Ok(committed.events)
    }

    /// Marks a conversation's inbound messages read (the business has seen
    /// them); returns one event per message that changed, and the newest
    /// of those messages (the one to tell WhatsApp about).
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<(Vec<Event>, Option<Message>)> {
        let lookup = Lookup::Unread {
            conversation_id: conversation_id.to_owned(),
        };
        let committed = self
            .commit(&lookup, |known| {
                plan::plan_mark_read(conversation_id, at, known)
            })
            .await?;
        Ok((committed.events, committed.newest_update))
    }

    /// Stores a message the business sends, with its send queued for
    /// WhatsApp (`None`: stored only); returns its events. Called again
    /// with the same message, it changes nothing (or finishes what a
    /// failure left half done).
    pub async fn send(
        &self,
        send: Option<&QueuedSend>,
        message: &Message,
    ) -> StoreResult<Vec<Event>> {
        let lookup = Lookup::Items {
            message_ids: vec![message.message_id.clone()],
            conversation_ids: vec![message.conversation_id.clone()],
        };
        let committed = self
            .commit(&lookup, |known| match send {
                Some(send) => plan::plan_send(send, message, known),
                None => plan::plan_batch(
                    &Batch {
                        messages: vec![message.clone()],
                        ..Batch::default()
                    },
                    known,
                ),
            })
            .await?;
        Ok(committed.events)
    }

    /// Stores WhatsApp's answer to the send of message `id` and drops the
    /// send from the queue; returns the events.
    pub async fn send_outcome(
        &self,
        send: &QueuedSend,
        outcome: &SendOutcome,
    ) -> StoreResult<Vec<Event>> {
        let lookup = outcome.lookup(&send.id, &send.conversation_id);
        let mut committed = self
            .commit(&lookup, |known| {
                plan::plan_send_outcome(&send.id, outcome, known)
            })
            .await?;
        if let SendOutcome::Accepted { wamid, .. } = outcome {
            // A status that was parked for the wamid after this change set
            // read the parked ones, and missed the renamed message on its
            // own second look: applied now.
            let lookup = Lookup::Items {
                message_ids: vec![wamid.clone()],
                conversation_ids: vec![send.conversation_id.clone()],
            };
            let again = self
                .commit(&lookup, |known| plan::plan_batch(&Batch::default(), known))
                .await?;
            committed.events.extend(again.events);
        }
        Ok(committed.events)
    }

    /// Whether a message was stored by a change set that finished (one
    /// that failed half-way leaves it unsettled until a retry finishes it).
    pub async fn stored_whole(&self, message: &Message) -> StoreResult<bool> {
        let lookup = Lookup::Items {
            message_ids: vec![message.message_id.clone()],
            conversation_ids: vec![message.conversation_id.clone()],
        };
        let known = self.store.load(&lookup).await?;
        Ok(known
            .messages
            .get(&message.message_id)
            .is_some_and(|stored| stored.settled.is_some()))
    }

    /// Reads, plans and applies until no guard objects. A change set that
    /// parked statuses gets one more round: their message may have been
    /// stored (by another writer) between our read and our parking.
    async fn commit(
        &self,
        lookup: &Lookup,
        plan: impl Fn(&Known) -> ChangeSet,
    ) -> StoreResult<Committed> {
        let mut committed = Committed::default();
        let mut recheck_parked = true;
        let mut last = None;
        for round in 1..=MAX_ROUNDS {
            let known = self.store.load(lookup).await?;
            let mut changes = plan(&known);
            if !recheck_parked {
                // Kept by the round that succeeded.
                changes.payloads.clear();
            }
            match self.store.apply(&changes).await {
                Ok(()) => {
                    let applied = changes
                        .events
                        .iter()
                        .filter(|e| matches!(e, Event::StatusUpdate(_)))
                        .count();
                    metrics::counter!("statuses_applied_total").increment(applied as u64);
                    committed.inserted += changes.inserts.len();
                    committed.events.extend(changes.events);
                    if let Some(newest) = changes
                        .updates
                        .into_iter()
                        .map(|u| u.message)
                        .max_by_key(|m| m.timestamp)
                    {
                        committed.newest_update = Some(newest);
                    }
                    if changes.park.is_empty() || !std::mem::take(&mut recheck_parked) {
                        return Ok(committed);
                    }
                }
                Err(e) if e.kind == ErrorKind::Conflict => {
                    last = Some(e.clone());
                    metrics::counter!("store_conflicts_total").increment(1);
                    tracing::debug!(error = %e, round, "concurrent change; planning again");
                    // Let the other writer finish before reading again.
                    retry::pause(&CONFLICT_RETRY, round).await;
                }
                Err(e) => return Err(e),
            }
        }
        let gave_up = StoreError::transient(
            "the same data kept changing under this batch; it will be retried",
        );
        Err(match last {
            Some(conflict) => gave_up.caused_by(conflict),
            None => gave_up,
        })
    }
}

/// What rounds of [`Processor::commit`] did.
#[derive(Default)]
struct Committed {
    inserted: usize,
    events: Vec<Event>,
    /// The newest message (by its time) whose status changed.
    newest_update: Option<Message>,
}
