//! Where messages live. A store does two things for the processing rules
//! (see `wa_core::plan`): it reads what a batch needs to be planned
//! ([`Store::load`]) and applies the resulting change set
//! ([`Store::apply`]), refusing any change whose guard no longer holds with
//! a [`ErrorKind::Conflict`](crate::error::ErrorKind::Conflict). Besides,
//! it answers the API's queries, and keeps the events of each change set in
//! an outbox, committed with the changes, until they are in the event log
//! (the engine's relay). The same rules thus run on MongoDB
//! (`wa-store-mongo`, the services) and on SQLite (`wa-store-sqlite`, the
//! all-in-one).

pub mod error;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use wa_core::domain::{Conversation, Event, Message, Page, QueuedSend, Stats};
use wa_core::numbers::BusinessNumber;
use wa_core::plan::{ChangeSet, Known, Lookup};
use wa_core::search::Query;

pub use crate::error::{Error as StoreError, ErrorKind, Result as StoreResult};

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reachable and answering.
    async fn ping(&self) -> StoreResult<()>;

    /// Creates what the store needs (indexes, tables) and migrates data
    /// written by an earlier version; idempotent.
    async fn prepare(&self) -> StoreResult<()>;

    /// What the store holds about a lookup's messages and conversations.
    /// Summaries come for the lookup's conversations and for those of the
    /// stored messages found.
    async fn load(&self, lookup: &Lookup) -> StoreResult<Known>;

    /// Applies a change set: at once, or in steps that a retry can finish
    /// (see `wa_core::plan`). A guard that no longer holds refuses with a
    /// conflict; whatever was applied before it stays valid.
    async fn apply(&self, changes: &ChangeSet) -> StoreResult<()>;

    /// Conversation summaries, newest last message first; of these
    /// business numbers only, if given.
    async fn conversations(
        &self,
        page: Page,
        numbers: Option<&[String]>,
    ) -> StoreResult<Vec<Conversation>>;

    /// The newest messages of a conversation (per `page`), oldest first.
    async fn messages(&self, conversation_id: &str, page: Page) -> StoreResult<Vec<Message>>;

    /// A message by its WhatsApp id, or by its permanent key (a message
    /// sent through the API keeps its local id as key).
    async fn message(&self, message_id: &str) -> StoreResult<Option<Message>>;

    /// The conversation of the message whose media object has this id
    /// (`content.id` of an image, document, ...), by an index: what a
    /// token scoped to numbers may fetch of WhatsApp's media.
    async fn media_conversation(&self, media_id: &str) -> StoreResult<Option<String>>;

    /// One conversation's summary.
    async fn conversation(&self, conversation_id: &str) -> StoreResult<Option<Conversation>>;

    /// Totals, from counters (no scan of the messages); of these business
    /// numbers only, if given.
    async fn stats(&self, numbers: Option<&[String]>) -> StoreResult<Stats>;

    /// The home number (see `wa_core::numbers`): the one recorded, else
    /// `candidate`, recorded now. Of concurrent callers with different
    /// candidates one wins, and all get its number. `None`: none is
    /// recorded and no candidate was given.
    async fn home_number(&self, candidate: Option<&str>) -> StoreResult<Option<String>>;

    /// Records business numbers webhooks came for, with their display
    /// numbers (a number's latest non-empty display number is kept).
    async fn note_numbers(&self, numbers: &[(String, Option<String>)]) -> StoreResult<()>;

    /// The business numbers recorded, each with its conversations and
    /// unread messages, by phone number id.
    async fn numbers(&self) -> StoreResult<Vec<BusinessNumber>>;

    /// Gives data stored before numbers existed a number: conversations,
    /// messages and queued sends without one belong to the home number,
    /// recorded first if none is (`default`, else the number found on a
    /// stored message). Idempotent, and safe while the deployment serves:
    /// ids do not change. Returns the home number.
    async fn adopt_numbers(&self, default: Option<&str>) -> StoreResult<Option<String>>;

    /// Events committed with their changes (the outbox) and not yet in the
    /// event log, oldest first, written at least `age` ago.
    async fn outbox(&self, age: Duration, limit: usize) -> StoreResult<Vec<Event>>;

    /// Forgets outbox events now in the event log (by [`Event::id`]).
    async fn relayed(&self, ids: &[String]) -> StoreResult<()>;

    /// Queued sends due at `now` (a change set queues them), soonest first.
    async fn due_sends(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<QueuedSend>>;

    /// Replaces a queued send if its due time is still `expected_due`
    /// (millisecond precision): `false` if another sender changed it first
    /// or it is gone. The due time is what senders claim a send by; the
    /// store's own due time and held flag are what reads return.
    async fn update_send(
        &self,
        send: &QueuedSend,
        expected_due: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Holds the conversation's sends other than `first` behind it: those
    /// due before `until` become due then, marked held (whoever finishes
    /// `first` may take the next at once). One write, whatever their number.
    async fn hold_sends(
        &self,
        conversation_id: &str,
        first: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The send its conversation queued first (by [`QueuedSend::order`],
    /// then id): the only one of the conversation that may go out, so a
    /// customer gets the business's messages in the order they were
    /// accepted.
    async fn first_send(&self, conversation_id: &str) -> StoreResult<Option<QueuedSend>>;

    /// Claims an idempotency key for the request with this fingerprint, in
    /// one atomic write: of concurrent requests with one key, exactly one
    /// gets [`KeyClaim::New`] (whatever the store: no transaction needed).
    async fn claim_key(&self, key: &str, fingerprint: &str) -> StoreResult<KeyClaim>;

    /// Gives a claimed key back (its request stored nothing), so that it
    /// can be used again, with any body.
    async fn release_key(&self, key: &str, fingerprint: &str) -> StoreResult<()>;

    /// Messages matching `query` within `scope`, newest first, served by an
    /// index (its cost follows the hits read, not the messages stored).
    async fn search(
        &self,
        query: &Query,
        scope: &SearchScope,
        limit: usize,
    ) -> StoreResult<SearchPage>;
}

/// Where a search looks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchScope {
    pub conversation_id: Option<String>,
    /// Messages of these business numbers only, if given.
    pub numbers: Option<Vec<String>>,
    /// The `next` cursor of the previous page.
    pub before: Option<String>,
}

/// A page of hits, and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub messages: Vec<Message>,
    pub next: Option<String>,
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is ours: store and send the message.
    New,
    /// Claimed before by a request with the same fingerprint: a repeat.
    Same,
    /// Claimed before by a request with another fingerprint.
    Other,
}

/// The lower bound of a newest-first page of conversations: keys of
/// earlier milliseconds sort below a bare millisecond prefix.
pub fn conversations_before(page: &Page) -> Option<String> {
    let before = page.before?;
    Some(match &page.before_id {
        Some(id) => wa_core::plan::summary::sort_key(before, id),
        None => format!("{:015}", before.timestamp_millis().max(0)),
    })
}
