//! Where messages live. The processing rules talk to this trait only, so the
//! same rules run on MongoDB ([`mongo`], the services) and on SQLite
//! ([`sqlite`], the all-in-one binary).
//!
//! Every method is idempotent: a payload redelivered after a crash, or
//! processed by two replicas at once, converges to the same stored state.

pub mod mongo;
pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::domain::{Conversation, Message, Page, Stats, StatusChange};

/// A webhook body exactly as received, kept because Meta offers no way to
/// fetch a webhook again.
#[derive(Debug, Clone)]
pub struct RawPayload {
    /// SHA-256 of the body, hex: the same id the gateway gives the broker.
    pub id: String,
    pub body: Bytes,
    pub received_at: DateTime<Utc>,
}

/// What applying a status did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    /// The status moved forward; the message lives in this conversation.
    Applied { conversation_id: String },
    /// Stale, repeated, unknown, or not a business message: nothing changed
    /// (beyond remembering when the status was first seen).
    Unchanged,
    /// No message with this id is stored (yet).
    MessageNotFound,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
    /// True when retrying the same input can never succeed (the data itself
    /// is refused); false for outages and timeouts.
    pub permanent: bool,
}

impl StoreError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reachable and answering.
    async fn ping(&self) -> StoreResult<()>;

    /// Creates what the store needs (indexes, tables); idempotent.
    async fn prepare(&self) -> StoreResult<()>;

    /// Keeps raw webhook bodies; a body already kept is skipped.
    async fn archive_payloads(&self, payloads: &[RawPayload]) -> StoreResult<()>;

    /// Inserts the messages not stored yet, in one round trip where the
    /// store allows. Returns the ids that were actually inserted.
    async fn insert_messages(&self, messages: &[Message]) -> StoreResult<Vec<String>>;

    /// Archives the payloads, then inserts their messages; returns the ids
    /// inserted. A store may do both in one write.
    async fn archive_and_insert(
        &self,
        payloads: &[RawPayload],
        messages: &[Message],
    ) -> StoreResult<Vec<String>> {
        self.archive_payloads(payloads).await?;
        self.insert_messages(messages).await
    }

    /// Moves a business message's status forward, atomically: a stale or
    /// repeated status changes nothing, whatever else runs concurrently.
    async fn advance_status(&self, change: &StatusChange) -> StoreResult<StatusOutcome>;

    /// Keeps a status whose message is not stored yet.
    async fn park_status(&self, change: &StatusChange) -> StoreResult<()>;

    /// Parked statuses of these messages.
    async fn parked_statuses(&self, message_ids: &[String]) -> StoreResult<Vec<StatusChange>>;

    /// Forgets parked statuses once they have been applied.
    async fn unpark_statuses(&self, changes: &[StatusChange]) -> StoreResult<()>;

    /// Recomputes a conversation's summary (last message, counts, unread)
    /// from its messages. Concurrent refreshes of one conversation must not
    /// let an older computation overwrite a newer one.
    async fn refresh_conversation(&self, conversation_id: &str) -> StoreResult<()>;

    /// Refreshes several conversations (those a batch touched); a store may
    /// do it in one go.
    async fn refresh_conversations(&self, conversation_ids: &[String]) -> StoreResult<()> {
        use futures::{StreamExt, TryStreamExt};
        let refreshing: Vec<_> = conversation_ids
            .iter()
            .map(|id| self.refresh_conversation(id))
            .collect();
        futures::stream::iter(refreshing)
            .buffer_unordered(16)
            .try_collect::<()>()
            .await
    }

    /// Marks a conversation's unread inbound messages read, each only if it
    /// is still unread; returns the ids that changed.
    async fn mark_inbound_read(
        &self,
        conversation_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<String>>;

    /// Conversation summaries, newest last message first.
    async fn conversations(&self, page: Page) -> StoreResult<Vec<Conversation>>;

    /// The newest messages of a conversation (per `page`), oldest first.
    async fn messages(&self, conversation_id: &str, page: Page) -> StoreResult<Vec<Message>>;

    async fn message(&self, message_id: &str) -> StoreResult<Option<Message>>;

    async fn stats(&self) -> StoreResult<Stats>;
}

/// Key under which the conversation list is ordered: newest last message
/// first, ties broken by message id, so paging is stable.
pub fn conversation_sort_key(timestamp: DateTime<Utc>, message_id: &str) -> String {
    format!("{:015}|{message_id}", timestamp.timestamp_millis().max(0))
}
