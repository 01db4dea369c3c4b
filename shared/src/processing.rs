//! The processing rules: what storing a batch of webhook payloads means.
//!
//! Independent of MongoDB and NATS: the processor service and the all-in-one
//! binary both call [`Processor::process`] with payloads they received and
//! publish the events it returns.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};

use chrono::{DateTime, Utc};

use crate::broker::Ingest;
use crate::domain::{Event, Message, StatusChange, StatusUpdate, status_rank};
use crate::store::{RawPayload, StatusOutcome, Store, StoreResult};
use crate::webhook::{self, Parsed, PayloadError};

/// Turns an ingested payload into what it asks to store.
pub fn decode(kind: Ingest, body: &[u8]) -> Result<Parsed, PayloadError> {
    match kind {
        Ingest::Webhook => webhook::parse(body),
        Ingest::Send => serde_json::from_slice::<Message>(body)
            .map(|message| Parsed {
                messages: vec![message],
                ..Parsed::default()
            })
            .map_err(|e| PayloadError(format!("not a message to send: {e}"))),
    }
}

/// How many independent store operations one batch runs at once.
const CONCURRENCY: usize = 16;

#[derive(Clone)]
pub struct Processor {
    store: Arc<dyn Store>,
}

impl Processor {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stores a batch of parsed payloads and returns one event per change
    /// actually made: a redelivered payload changes nothing and emits nothing.
    ///
    /// Safe to call again with the same payloads after a failure or a crash
    /// at any point: every step is idempotent, and conversation summaries
    /// are recomputed rather than incremented.
    pub async fn process(&self, batch: &[(RawPayload, Parsed)]) -> StoreResult<Vec<Event>> {
        for (raw, parsed) in batch {
            for error in &parsed.whatsapp_errors {
                tracing::warn!(payload = %raw.id, %error, "WhatsApp reports an error");
            }
        }
        let raw: Vec<RawPayload> = batch.iter().map(|(raw, _)| raw.clone()).collect();
        let messages: Vec<&Message> = batch.iter().flat_map(|(_, p)| &p.messages).collect();
        let statuses: Vec<&StatusChange> = batch.iter().flat_map(|(_, p)| &p.statuses).collect();
        let owned: Vec<Message> = messages.iter().map(|m| (*m).clone()).collect();
        let inserted = self.store.archive_and_insert(&raw, &owned).await?;
        metrics::counter!("messages_stored_total").increment(inserted.len() as u64);
        metrics::counter!("messages_duplicate_total")
            .increment((messages.len() - inserted.len()) as u64);

        // One event per inserted message, even if it appeared twice in the batch.
        let mut not_yet_announced: BTreeSet<&str> = inserted.iter().map(String::as_str).collect();
        let mut events: Vec<Event> = Vec::new();
        for message in &messages {
            if not_yet_announced.remove(message.message_id.as_str()) {
                events.push(Event::NewMessage(Box::new((*message).clone())));
            }
        }

        // Statuses of this batch, then statuses that were waiting for the
        // messages just inserted.
        // (Futures are built before the stream, not in a `map` closure, so
        // the whole future stays `Send` for `tokio::spawn`.)
        let applying: Vec<_> = statuses
            .iter()
            .map(|change| self.apply_status(change))
            .collect();
        let applied: Vec<Option<StatusUpdate>> = stream::iter(applying)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        events.extend(applied.into_iter().flatten().map(Event::StatusUpdate));
        // Parked statuses of every message in the batch, not only the newly
        // inserted: a retry after a failure must still apply them.
        let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
        events.extend(self.apply_parked(&ids).await?);

        let touched: BTreeSet<&str> = messages
            .iter()
            .map(|m| m.conversation_id.as_str())
            .chain(statuses.iter().map(|s| s.conversation_id.as_str()))
            .chain(events.iter().map(Event::conversation_id))
            .collect();
        let touched: Vec<String> = touched.into_iter().map(str::to_owned).collect();
        self.store.refresh_conversations(&touched).await?;
        Ok(events)
    }

    /// Marks a conversation's inbound messages read (the business has seen
    /// them); returns one event per message that changed.
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Event>> {
        let changed = self.store.mark_inbound_read(conversation_id, at).await?;
        self.store.refresh_conversation(conversation_id).await?;
        Ok(changed
            .into_iter()
            .map(|message_id| {
                Event::StatusUpdate(StatusUpdate {
                    message_id,
                    status: "read".to_owned(),
                    conversation_id: conversation_id.to_owned(),
                    timestamp: at,
                })
            })
            .collect())
    }

    /// Applies one status; keeps it for later if its message isn't stored.
    async fn apply_status(&self, change: &StatusChange) -> StoreResult<Option<StatusUpdate>> {
        let outcome = match self.store.advance_status(change).await? {
            StatusOutcome::MessageNotFound => {
                self.store.park_status(change).await?;
                // The message may have been inserted (and its parked
                // statuses read) between our two steps: try once more.
                let retry = self.store.advance_status(change).await?;
                if retry != StatusOutcome::MessageNotFound {
                    self.store
                        .unpark_statuses(std::slice::from_ref(change))
                        .await?;
                }
                retry
            }
            outcome => outcome,
        };
        Ok(status_event(change, outcome))
    }

    /// Applies statuses that arrived before these messages, oldest rank first.
    async fn apply_parked(&self, message_ids: &[String]) -> StoreResult<Vec<Event>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut parked = self.store.parked_statuses(message_ids).await?;
        parked.sort_by_key(|c| {
            (
                c.message_id.clone(),
                status_rank(&c.status).unwrap_or(i32::MAX),
                c.timestamp,
            )
        });
        let mut events = Vec::new();
        for change in &parked {
            let outcome = self.store.advance_status(change).await?;
            events.extend(status_event(change, outcome).map(Event::StatusUpdate));
        }
        if !parked.is_empty() {
            self.store.unpark_statuses(&parked).await?;
        }
        Ok(events)
    }
}

fn status_event(change: &StatusChange, outcome: StatusOutcome) -> Option<StatusUpdate> {
    match outcome {
        StatusOutcome::Applied { conversation_id } => {
            metrics::counter!("statuses_applied_total").increment(1);
            Some(StatusUpdate {
                message_id: change.message_id.clone(),
                status: change.status.clone(),
                conversation_id,
                timestamp: change.timestamp,
            })
        }
        StatusOutcome::Unchanged | StatusOutcome::MessageNotFound => None,
    }
}
