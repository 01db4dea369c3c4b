//! The embedded store: one SQLite file, for the all-in-one binary.
//!
//! Messages keep the API-shaped object as JSON next to the columns that
//! queries filter and sort on; summaries and counters are plain rows. A
//! change set is applied in one transaction, with its guards checked
//! inside it, so nothing is ever half applied here: messages are always
//! settled and journals always empty.

pub mod db;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};

use crate::db::Database;
use wa_core::domain::{
    Conversation, Direction, Event, Message, Page, QueuedSend, RECEIVED, RawPayload,
    SERVICE_WINDOW, Stats, StatusChange, is_local_id, status_rank,
};
use wa_core::plan::counts::Counts;
use wa_core::plan::summary::Last;
use wa_core::plan::{
    ChangeSet, ConversationChange, Known, Lookup, PARKED_STATUS_TTL, Stored, Summary,
};
use wa_core::search::{self, Query};
use wa_store::error::Error;
use wa_store::{
    KeyClaim, SearchPage, SearchScope, Store, StoreError, StoreResult, conversations_before,
};

/// `PRAGMA user_version` of the current schema.
const SCHEMA_VERSION: i64 = 3;

#[derive(Clone)]
pub struct SqliteStore {
    db: Database,
    /// Whether new messages go into the search index (always, but in the
    /// benchmark that measures what the index costs).
    indexed: bool,
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = Database::open(path)
            .map_err(|e| StoreError::transient(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self { db, indexed: true })
    }

    /// Benchmarks only: stores messages without indexing them for search,
    /// to measure what the index costs the write path.
    #[doc(hidden)]
    pub fn without_search_index(mut self) -> Self {
        self.indexed = false;
        self
    }

    async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, Error> + Send + 'static,
    {
        self.db.transaction(work).await
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// Placeholders `?,?,...` for an `IN` list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// Runs `sql` (with one `IN ({})` list) for the ids in chunks SQLite
/// accepts, collecting the first column as JSON documents.
fn docs_in<T: serde::de::DeserializeOwned>(
    t: &Transaction<'_>,
    sql: &str,
    ids: &[String],
) -> rusqlite::Result<Vec<T>> {
    let mut found = Vec::new();
    for chunk in ids.chunks(500) {
        let mut query = t.prepare(&sql.replace("{}", &placeholders(chunk.len())))?;
        let docs = query.query_map(params_from_iter(chunk), |r| r.get::<_, String>(0))?;
        for doc in docs {
            found.push(from_json(&doc?)?);
        }
    }
    Ok(found)
}

/// A message by its WhatsApp id or its permanent key.
fn load_message(t: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Message>> {
    t.prepare_cached("SELECT doc FROM messages WHERE message_id = ?1 OR id = ?1 LIMIT 1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|doc| from_json(&doc).map(Message::with_media_url))
        .transpose()
}

/// A summary row, all columns.
struct SummaryRow {
    id: String,
    sort_key: String,
    last_message_id: String,
    last_status_rank: i32,
    name_key: String,
    user_name: String,
    last_body: String,
    last_ts: i64,
    last_status: String,
    last_direction: String,
    participants: String,
    message_count: i64,
    unread_count: i64,
    /// Time of the customer's newest message (ms).
    last_inbound_ts: Option<i64>,
}

const SUMMARY_COLUMNS: &str =
    "id, sort_key, last_message_id, last_status_rank, name_key, user_name,
    last_body, last_ts, last_status, last_direction, participants, message_count, unread_count,
    last_inbound_ts";

impl SummaryRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            sort_key: r.get(1)?,
            last_message_id: r.get(2)?,
            last_status_rank: r.get(3)?,
            name_key: r.get(4)?,
            user_name: r.get(5)?,
            last_body: r.get(6)?,
            last_ts: r.get(7)?,
            last_status: r.get(8)?,
            last_direction: r.get(9)?,
            participants: r.get(10)?,
            message_count: r.get(11)?,
            unread_count: r.get(12)?,
            last_inbound_ts: r.get(13)?,
        })
    }

    fn load(t: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Self>> {
        t.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE id = ?1"
        ))?
        .query_row([id], Self::read)
        .optional()
    }

    fn save(&self, t: &Transaction<'_>) -> rusqlite::Result<()> {
        t.prepare_cached(&format!(
            "INSERT OR REPLACE INTO summaries ({SUMMARY_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))?
        .execute(params![
            self.id,
            self.sort_key,
            self.last_message_id,
            self.last_status_rank,
            self.name_key,
            self.user_name,
            self.last_body,
            self.last_ts,
            self.last_status,
            self.last_direction,
            self.participants,
            self.message_count,
            self.unread_count,
            self.last_inbound_ts
        ])
        .map(drop)
    }

    /// A row for a summary being created (counts and fields added after).
    fn empty(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            sort_key: String::new(),
            last_message_id: String::new(),
            last_status_rank: 0,
            name_key: String::new(),
            user_name: String::new(),
            last_body: String::new(),
            last_ts: 0,
            last_status: String::new(),
            last_direction: String::new(),
            participants: "[]".to_owned(),
            message_count: 0,
            unread_count: 0,
            last_inbound_ts: None,
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            last_key: self.sort_key.clone(),
            last_message_id: self.last_message_id.clone(),
            last_status_rank: self.last_status_rank,
            name_key: self.name_key.clone(),
            last_inbound: self
                .last_inbound_ts
                .and_then(DateTime::from_timestamp_millis),
            journal: Default::default(),
        }
    }

    fn set_last(&mut self, last: &Last) -> rusqlite::Result<()> {
        self.sort_key.clone_from(&last.key);
        self.last_message_id.clone_from(&last.message_id);
        self.last_status_rank = last.status_rank;
        self.last_body.clone_from(&last.body);
        self.last_ts = last.timestamp.timestamp_millis();
        self.last_status.clone_from(&last.status);
        self.last_direction = direction_name(last.direction).to_owned();
        self.participants = to_json(&last.participants)?;
        Ok(())
    }

    fn conversation(&self) -> rusqlite::Result<Conversation> {
        Ok(Conversation {
            conversation_id: self.id.clone(),
            user_name: self.user_name.clone(),
            last_message_id: self.last_message_id.clone(),
            last_message_body: wa_core::plan::summary::preview(&self.last_body),
            last_timestamp: DateTime::from_timestamp_millis(self.last_ts).unwrap_or_default(),
            last_message_status: self.last_status.clone(),
            last_message_direction: if self.last_direction == "outbound" {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            message_count: self.message_count,
            unread_count: self.unread_count,
            participants: from_json(&self.participants)?,
            window_expires_at: self
                .last_inbound_ts
                .and_then(DateTime::from_timestamp_millis)
                .map(|at| at + SERVICE_WINDOW),
        })
    }
}

/// Applies a summary change: counters always, the rest only if newer.
fn apply_summary(t: &Transaction<'_>, change: &ConversationChange) -> Result<(), Error> {
    let stored = SummaryRow::load(t, &change.conversation_id)?;
    let mut row = match (stored, change.create) {
        (None, true) => {
            add_counter(t, CONVERSATIONS_COUNTER, 1)?;
            SummaryRow::empty(&change.conversation_id)
        }
        (Some(row), false) => row,
        (Some(_), true) => {
            return Err(Error::conflict(format!(
                "summary of {} created meanwhile",
                change.conversation_id
            )));
        }
        (None, false) => {
            return Err(Error::conflict(format!(
                "summary of {} is gone",
                change.conversation_id
            )));
        }
    };
    row.message_count += change.counts.messages;
    row.unread_count += change.counts.unread;
    if let Some(last) = change.last.as_ref().filter(|l| l.key > row.sort_key) {
        row.set_last(last)?;
    }
    if let Some(moved) = &change.last_status
        && (moved.message_id == row.last_message_id
            || moved.renamed_from.as_ref() == Some(&row.last_message_id))
        && moved.rank > row.last_status_rank
    {
        row.last_status.clone_from(&moved.status);
        row.last_status_rank = moved.rank;
        if moved.renamed_from.is_some() {
            row.last_message_id.clone_from(&moved.message_id);
            row.sort_key.clone_from(&moved.key);
        }
    }
    if let Some(at) = change.last_inbound.map(|at| at.timestamp_millis())
        && row.last_inbound_ts.is_none_or(|stored| stored < at)
    {
        row.last_inbound_ts = Some(at);
    }
    if let Some(name) = &change.name
        && (change.create || name.key > row.name_key)
    {
        row.user_name.clone_from(&name.name);
        row.name_key.clone_from(&name.key);
    }
    row.save(t)?;
    Ok(())
}

/// Counter of summaries, next to the stats counters.
const CONVERSATIONS_COUNTER: &str = "conversations";
/// Counter of rejected webhook items.
const REJECTED_COUNTER: &str = "rejected";

fn add_counter(t: &Transaction<'_>, name: &str, n: i64) -> rusqlite::Result<()> {
    t.prepare_cached(
        "INSERT INTO counters (name, n) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET n = n + ?2",
    )?
    .execute(params![name, n])
    .map(drop)
}

fn archive(t: &Transaction<'_>, payloads: &[RawPayload]) -> rusqlite::Result<()> {
    let mut insert = t.prepare_cached(
        "INSERT OR IGNORE INTO webhook_payloads (id, body, received_at) VALUES (?1, ?2, ?3)",
    )?;
    for p in payloads {
        insert.execute(params![
            p.id,
            p.body.as_ref(),
            p.received_at.timestamp_millis()
        ])?;
    }
    Ok(())
}

fn apply_in(t: &Transaction<'_>, changes: &ChangeSet, indexed: bool) -> Result<(), Error> {
    archive(t, &changes.payloads)?;
    let mut reject = t.prepare_cached(
        "INSERT OR IGNORE INTO rejected_items (id, payload_id, path, reason, item, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for r in &changes.rejected {
        let kept = reject.execute(params![
            r.id,
            r.payload_id,
            r.path,
            r.reason,
            to_json(&r.item)?,
            Utc::now().timestamp_millis()
        ])?;
        add_counter(t, REJECTED_COUNTER, i64::try_from(kept).unwrap_or(0))?;
    }
    let mut insert = t.prepare_cached(
        "INSERT OR IGNORE INTO messages
            (id, conversation_id, ts, direction, status, status_rank, doc, message_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for m in &changes.inserts {
        let inserted = insert.execute(params![
            m.id,
            m.conversation_id,
            m.timestamp.timestamp_millis(),
            direction_name(m.direction),
            m.status,
            status_rank(&m.status).unwrap_or(0),
            to_json(m)?,
            m.message_id
        ])?;
        if inserted == 0 {
            return Err(Error::conflict(format!(
                "{} was stored meanwhile",
                m.message_id
            )));
        }
        // In the same transaction: searchable once `GET` shows it.
        if indexed {
            index_for_search(t, m)?;
        }
    }
    let mut update = t.prepare_cached(
        "UPDATE messages SET status = ?2, status_rank = ?3, doc = ?4, message_id = ?6
         WHERE id = ?1 AND status_rank = ?5",
    )?;
    for u in &changes.updates {
        let m = &u.message;
        let updated = update.execute(params![
            m.id,
            m.status,
            status_rank(&m.status).unwrap_or(0),
            to_json(m)?,
            u.expected_rank,
            m.message_id
        ])?;
        if updated == 0 {
            return Err(Error::conflict(format!(
                "{} changed meanwhile",
                m.message_id
            )));
        }
    }
    let now = Utc::now().timestamp_millis();
    for change in &changes.park {
        t.prepare_cached(
            "INSERT OR IGNORE INTO pending_statuses (key, message_id, doc, parked_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            wa_core::plan::status::parked_key(change),
            change.message_id,
            to_json(change)?,
            now
        ])?;
    }
    for key in &changes.unpark {
        t.prepare_cached("DELETE FROM pending_statuses WHERE key = ?1")?
            .execute([key])?;
    }
    for change in &changes.conversations {
        apply_summary(t, change)?;
    }
    for change in &changes.stats {
        for (name, n) in change.counts.fields() {
            add_counter(t, &name, n)?;
        }
    }
    let mut outbox = t.prepare_cached(
        "INSERT OR IGNORE INTO outbox (id, n, event, at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (n, event) in changes.events.iter().enumerate() {
        outbox.execute(params![event.id(), n as i64, to_json(event)?, now])?;
    }
    for send in &changes.enqueue {
        t.prepare_cached(
            "INSERT OR IGNORE INTO sends (id, due, doc, conversation_id, ord, held)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            send.id,
            send.due.timestamp_millis(),
            to_json(send)?,
            send.conversation_id,
            send.order(),
            send.held
        ])?;
    }
    for id in &changes.dequeue {
        t.prepare_cached("DELETE FROM sends WHERE id = ?1")?
            .execute([id])?;
    }
    // Settling and journals are for stores that apply in several steps.
    Ok(())
}

fn load_in(t: &Transaction<'_>, lookup: &Lookup) -> Result<Known, Error> {
    let mut known = Known {
        atomic: true,
        ..Known::default()
    };
    let (messages, mut conversation_ids): (Vec<Message>, Vec<String>) = match lookup {
        Lookup::Items {
            message_ids,
            conversation_ids,
        } => {
            known.parked = docs_in::<StatusChange>(
                t,
                "SELECT doc FROM pending_statuses WHERE message_id IN ({})",
                message_ids,
            )?;
            // By WhatsApp's id, or by the key of one we sent (a status may
            // name it by key once it has WhatsApp's id).
            let keys: Vec<String> = message_ids
                .iter()
                .filter(|id| is_local_id(id))
                .cloned()
                .collect();
            let mut messages: Vec<Message> = docs_in(
                t,
                "SELECT doc FROM messages WHERE message_id IN ({})",
                message_ids,
            )?;
            if !keys.is_empty() {
                let by_key: Vec<Message> =
                    docs_in(t, "SELECT doc FROM messages WHERE id IN ({})", &keys)?;
                for message in by_key {
                    if !messages.iter().any(|m| m.id == message.id) {
                        messages.push(message);
                    }
                }
            }
            (messages, conversation_ids.clone())
        }
        Lookup::Unread { conversation_id } => {
            let docs: Vec<String> = t
                .prepare_cached(
                    "SELECT doc FROM messages
                     WHERE conversation_id = ?1 AND direction = 'inbound' AND status = ?2",
                )?
                .query_map(params![conversation_id, RECEIVED], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let messages = docs
                .iter()
                .map(|d| from_json(d))
                .collect::<rusqlite::Result<_>>()?;
            (messages, vec![conversation_id.clone()])
        }
    };
    conversation_ids.extend(messages.iter().map(|m| m.conversation_id.clone()));
    conversation_ids.sort();
    conversation_ids.dedup();
    for id in &conversation_ids {
        if let Some(row) = SummaryRow::load(t, id)? {
            known.summaries.insert(id.clone(), row.summary());
        }
    }
    // Applied in one transaction: every stored message is settled.
    known.messages = messages
        .into_iter()
        .map(|message| {
            let settled = Some(message.status.clone());
            (message.message_id.clone(), Stored { message, settled })
        })
        .collect::<HashMap<_, _>>();
    Ok(known)
}

/// Creates the tables (once) and moves a store written by an earlier
/// version to them.
fn prepare_in(t: &Transaction<'_>) -> Result<(), Error> {
    t.execute_batch(
        "CREATE TABLE IF NOT EXISTS messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            ts INTEGER NOT NULL,
            direction TEXT NOT NULL,
            status TEXT NOT NULL,
            status_rank INTEGER NOT NULL,
            contact_name TEXT,
            doc TEXT NOT NULL,
            -- WhatsApp's id; `id` (the key) differs for messages sent
            -- through the API, which get WhatsApp's id once accepted.
            message_id TEXT
         );
         DROP INDEX IF EXISTS messages_by_conversation;
         -- Mark-read of one conversation.
         CREATE INDEX IF NOT EXISTS messages_unread ON messages (conversation_id, direction, status);
         -- Summaries and stats keep counters and names now: no scans to serve.
         DROP INDEX IF EXISTS messages_by_status;
         DROP INDEX IF EXISTS messages_by_direction;
         DROP INDEX IF EXISTS messages_by_status_direction;
         DROP INDEX IF EXISTS messages_named;
         CREATE TABLE IF NOT EXISTS summaries (
            id TEXT PRIMARY KEY,
            sort_key TEXT NOT NULL,
            last_message_id TEXT NOT NULL,
            last_status_rank INTEGER NOT NULL,
            name_key TEXT NOT NULL,
            user_name TEXT NOT NULL,
            last_body TEXT NOT NULL,
            last_ts INTEGER NOT NULL,
            last_status TEXT NOT NULL,
            last_direction TEXT NOT NULL,
            participants TEXT NOT NULL,
            message_count INTEGER NOT NULL,
            unread_count INTEGER NOT NULL,
            last_inbound_ts INTEGER
         );
         CREATE INDEX IF NOT EXISTS summaries_by_sort_key ON summaries (sort_key);
         CREATE TABLE IF NOT EXISTS counters (
            name TEXT PRIMARY KEY,
            n INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS pending_statuses (
            key TEXT PRIMARY KEY,
            message_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            parked_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS pending_by_message ON pending_statuses (message_id);
         CREATE TABLE IF NOT EXISTS webhook_payloads (
            id TEXT PRIMARY KEY,
            body BLOB NOT NULL,
            received_at INTEGER NOT NULL
         );
         -- Malformed webhook items, kept with the reason they were refused.
         CREATE TABLE IF NOT EXISTS rejected_items (
            id TEXT PRIMARY KEY,
            payload_id TEXT NOT NULL,
            path TEXT NOT NULL,
            reason TEXT NOT NULL,
            item TEXT NOT NULL,
            at INTEGER NOT NULL
         );
         -- Events committed with their changes, until relayed to the log.
         CREATE TABLE IF NOT EXISTS outbox (
            id TEXT PRIMARY KEY,
            n INTEGER NOT NULL,
            event TEXT NOT NULL,
            at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS outbox_by_time ON outbox (at, n);
         -- Messages waiting to be sent through WhatsApp.
         CREATE TABLE IF NOT EXISTS sends (
            id TEXT PRIMARY KEY,
            due INTEGER NOT NULL,
            doc TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS sends_by_due ON sends (due);
         -- Idempotency keys of POST /api/messages, with what they were used for.
         CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            at INTEGER NOT NULL
         );",
    )?;
    add_send_order(t)?;
    let version: i64 = t.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < SCHEMA_VERSION {
        migrate_from_v1(t)?;
        migrate_to_v3(t)?;
        t.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    }
    // After the migrations: it reads messages in the current form.
    create_search_index(t)?;
    // Pages of a conversation, ordered like MongoDB's (by WhatsApp's id);
    // after the migrations (`message_id`), and on stores already at this
    // version, which had the index ordered by key.
    t.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_by_conversation_v3
            ON messages (conversation_id, ts DESC, message_id DESC);",
    )?;
    let ttl = i64::try_from(PARKED_STATUS_TTL.as_millis()).unwrap_or(i64::MAX);
    let expired_before = Utc::now().timestamp_millis() - ttl;
    t.prepare_cached("DELETE FROM pending_statuses WHERE parked_at < ?1")?
        .execute([expired_before])?;
    Ok(())
}

/// The search index (FTS5), created once; messages stored before it
/// existed are indexed then. Each row's id orders it by the message's
/// time, newest first, so a page of the newest hits is the first rows of
/// each word's list, with no sort.
fn create_search_index(t: &Transaction<'_>) -> Result<(), Error> {
    let exists: i64 = t.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'message_search'",
        [],
        |r| r.get(0),
    )?;
    if exists > 0 {
        return Ok(());
    }
    t.execute_batch(
        // `words`: the message's words, normalized and split in Rust (see
        // `wa_core::search`), space-separated; `scope`: tokens of its
        // conversation and number. The `ascii` tokenizer splits at ASCII
        // spaces and punctuation only, so each of those words stays whole
        // (`unicode61` would split Devanagari at its vowel signs).
        // No `prefix` indexes: measured, they made storing 45% slower
        // instead of 28% and searches no faster (BENCHMARKS.md, "Search").
        "CREATE VIRTUAL TABLE message_search USING fts5(
            words, scope, key UNINDEXED,
            tokenize = 'ascii'
         );",
    )?;
    // One message at a time from a cursor: memory stays flat however many.
    let mut all = t.prepare("SELECT doc FROM messages")?;
    let mut rows = all.query([])?;
    while let Some(row) = rows.next()? {
        index_for_search(t, &from_json::<Message>(&row.get::<_, String>(0)?)?)?;
    }
    Ok(())
}

/// Row ids of the search index one millisecond has: WhatsApp's times are
/// whole seconds, so a busy second's messages share 1,000 × this.
const SEARCH_SLOTS: i64 = 1 << 20;

/// Indexes a new message for search, under a row id ordered by its time,
/// newest first: the next free one of its millisecond (one index lookup).
fn index_for_search(t: &Transaction<'_>, m: &Message) -> rusqlite::Result<()> {
    // Newer messages get smaller row ids: FTS5 reads a word's list forwards
    // cheaply (backwards it loads each segment's whole list), and a page of
    // the newest hits is the first rows.
    let last_millis = i64::MAX / SEARCH_SLOTS - 1;
    let millis = m.timestamp.timestamp_millis().clamp(0, last_millis);
    let base = (last_millis - millis) * SEARCH_SLOTS;
    let last: Option<i64> = t
        .prepare_cached(
            "SELECT rowid FROM message_search WHERE rowid BETWEEN ?1 AND ?2
             ORDER BY rowid DESC LIMIT 1",
        )?
        .query_row([base, base + SEARCH_SLOTS - 1], |r| r.get(0))
        .optional()?;
    let row = last.map_or(base, |last| last + 1);
    if row >= base + SEARCH_SLOTS {
        // Over a million messages in one millisecond: this one is not found.
        tracing::warn!(id = %m.id, "too many messages in one millisecond to index this one for search");
        return Ok(());
    }
    t.prepare_cached(
        "INSERT INTO message_search (rowid, words, scope, key) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        row,
        search::indexed_text(m),
        search_scope(m.conversation_id.as_str(), m.phone_number_id.as_deref()),
        m.id
    ])?;
    Ok(())
}

/// The scope tokens of a message: its conversation and its number, hashed
/// to letters and digits (what the tokenizer keeps whole).
fn search_scope(conversation_id: &str, phone_number_id: Option<&str>) -> String {
    format!(
        "{} {}",
        scope_token('c', conversation_id),
        scope_token('p', phone_number_id.unwrap_or_default())
    )
}

fn scope_token(kind: char, id: &str) -> String {
    use sha2::Digest;
    format!(
        "{kind}{}",
        &hex::encode(sha2::Sha256::digest(id.as_bytes()))[..20]
    )
}

/// The columns a send is read from: the columns `due` and `held` are the
/// ones senders claim and hold by (moved without rewriting the document).
const SEND_COLUMNS: &str = "doc, due, held";

fn send_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedSend> {
    let mut send: QueuedSend = from_json(&row.get::<_, String>(0)?)?;
    send.due = DateTime::from_timestamp_millis(row.get(1)?).unwrap_or(send.due);
    send.held = row.get(2)?;
    Ok(send)
}

/// Whether a table of an older store has the column yet.
fn has_column(t: &Transaction<'_>, table: &str, column: &str) -> rusqlite::Result<bool> {
    t.prepare(&format!(
        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
    ))?
    .exists([column])
}

/// Sends carry their conversation and place in its queue (columns added
/// to stores created before; sends queued then keep their due time's order).
fn add_send_order(t: &Transaction<'_>) -> Result<(), Error> {
    if !has_column(t, "sends", "ord")? {
        // `ord`: when it was queued, in microseconds (its due time's for
        // sends queued without the time).
        t.execute_batch(
            "ALTER TABLE sends ADD COLUMN conversation_id TEXT NOT NULL DEFAULT '';
             ALTER TABLE sends ADD COLUMN ord INTEGER NOT NULL DEFAULT 0;
             UPDATE sends SET conversation_id = json_extract(doc, '$.conversationId'),
                ord = COALESCE(
                    CAST((julianday(json_extract(doc, '$.queuedAt')) - 2440587.5) * 86400000000 AS INTEGER),
                    due * 1000);",
        )?;
    }
    if !has_column(t, "sends", "held")? {
        t.execute_batch("ALTER TABLE sends ADD COLUMN held INTEGER NOT NULL DEFAULT 0;")?;
    }
    t.execute_batch(
        "CREATE INDEX IF NOT EXISTS sends_by_conversation ON sends (conversation_id, ord, id);",
    )?;
    Ok(())
}

/// Version 3 keeps WhatsApp's id apart from a message's key, and the time
/// of each conversation's newest inbound message.
fn migrate_to_v3(t: &Transaction<'_>) -> Result<(), Error> {
    if !has_column(t, "messages", "message_id")? {
        t.execute_batch("ALTER TABLE messages ADD COLUMN message_id TEXT")?;
    }
    if !has_column(t, "summaries", "last_inbound_ts")? {
        t.execute_batch("ALTER TABLE summaries ADD COLUMN last_inbound_ts INTEGER")?;
    }
    t.execute_batch(
        "UPDATE messages SET message_id = id WHERE message_id IS NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS messages_by_message_id ON messages (message_id);
         UPDATE summaries SET last_inbound_ts = (
            SELECT MAX(ts) FROM messages
            WHERE conversation_id = summaries.id AND direction = 'inbound'
         ) WHERE last_inbound_ts IS NULL;",
    )?;
    Ok(())
}

/// Version 1 kept summaries as JSON in `conversations` (counts in
/// `conversation_counts`, or only in the JSON before that) and counted the
/// stats on every request. Builds the summaries and counters from them,
/// once; nothing to do on a new store.
fn migrate_from_v1(t: &Transaction<'_>) -> Result<(), Error> {
    let table_exists = |name: &str| -> rusqlite::Result<bool> {
        t.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])
    };
    if !table_exists("conversations")? {
        return Ok(());
    }
    tracing::info!("migrating the SQLite store: conversation summaries and counters");
    let counts: HashMap<String, (i64, i64)> = if table_exists("conversation_counts")? {
        t.prepare("SELECT id, messages, unread FROM conversation_counts")?
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        HashMap::new()
    };
    let old: Vec<(String, String)> = t
        .prepare("SELECT sort_key, doc FROM conversations")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (sort_key, doc) in old {
        let c: Conversation = from_json(&doc)?;
        let (message_count, unread_count) = counts
            .get(&c.conversation_id)
            .copied()
            .unwrap_or((c.message_count, c.unread_count));
        SummaryRow {
            id: c.conversation_id.clone(),
            // A name shown came from the last message or an earlier one.
            name_key: if c.user_name.starts_with('+') {
                String::new()
            } else {
                sort_key.clone()
            },
            sort_key,
            last_message_id: c.last_message_id,
            last_status_rank: status_rank(&c.last_message_status).unwrap_or(0),
            user_name: c.user_name,
            last_body: c.last_message_body,
            last_ts: c.last_timestamp.timestamp_millis(),
            last_status: c.last_message_status,
            last_direction: direction_name(c.last_message_direction).to_owned(),
            participants: to_json(&c.participants)?,
            message_count,
            unread_count,
            last_inbound_ts: None,
        }
        .save(t)?;
        add_counter(t, CONVERSATIONS_COUNTER, 1)?;
    }
    let mut totals = Counts::default();
    let groups: Vec<(String, String, i64)> = t
        .prepare("SELECT status, direction, COUNT(*) FROM messages GROUP BY status, direction")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (status, direction, n) in groups {
        let direction = if direction == "outbound" {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        for (name, one) in Counts::of(direction, &status).fields() {
            totals.add_field(&name, one * n);
        }
    }
    for (name, n) in totals.fields() {
        add_counter(t, &name, n)?;
    }
    t.execute_batch("DROP TABLE conversations; DROP TABLE IF EXISTS conversation_counts;")?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.run(|t| Ok(t.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?))
            .await
    }

    async fn prepare(&self) -> StoreResult<()> {
        self.run(prepare_in).await
    }

    async fn load(&self, lookup: &Lookup) -> StoreResult<Known> {
        let lookup = lookup.clone();
        self.run(move |t| load_in(t, &lookup)).await
    }

    /// One transaction: one commit (and fsync) for the whole change set.
    async fn apply(&self, changes: &ChangeSet) -> StoreResult<()> {
        let changes = changes.clone();
        let indexed = self.indexed;
        self.run(move |t| apply_in(t, &changes, indexed)).await
    }

    async fn conversations(&self, page: Page) -> StoreResult<Vec<Conversation>> {
        let before = conversations_before(&page).unwrap_or_else(|| "~".to_owned());
        self.run(move |t| {
            let rows = t
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE sort_key < ?1
                     ORDER BY sort_key DESC LIMIT ?2"
                ))?
                .query_map(params![before, page.limit], SummaryRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .iter()
                .map(SummaryRow::conversation)
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn messages(&self, conversation_id: &str, page: Page) -> StoreResult<Vec<Message>> {
        let id = conversation_id.to_owned();
        let before = page.before.map_or(i64::MAX, |b| b.timestamp_millis());
        // No id: nothing at exactly `before` (every id is above '').
        let before_id = page.before_id.clone().unwrap_or_default();
        self.run(move |t| {
            let mut newest_first: Vec<Message> = t
                .prepare_cached(
                    "SELECT doc FROM messages WHERE conversation_id = ?1
                       AND (ts < ?2 OR (ts = ?2 AND message_id < ?3))
                     ORDER BY ts DESC, message_id DESC LIMIT ?4",
                )?
                .query_map(params![id, before, before_id, page.limit], |r| {
                    r.get::<_, String>(0)
                })?
                .map(|doc| from_json(&doc?).map(Message::with_media_url))
                .collect::<rusqlite::Result<_>>()?;
            newest_first.reverse();
            Ok(newest_first)
        })
        .await
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        let id = message_id.to_owned();
        self.run(move |t| Ok(load_message(t, &id)?)).await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        self.run(|t| {
            let mut counts = Counts::default();
            let (mut conversations, mut rejected) = (0, 0);
            let rows = t
                .prepare_cached("SELECT name, n FROM counters")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (name, n) in rows {
                match name.as_str() {
                    CONVERSATIONS_COUNTER => conversations = n,
                    REJECTED_COUNTER => rejected = n,
                    _ => counts.add_field(&name, n),
                }
            }
            let mut stats = counts.to_stats(conversations);
            stats.rejected_items = rejected;
            Ok(stats)
        })
        .await
    }

    async fn outbox(&self, age: Duration, limit: usize) -> StoreResult<Vec<Event>> {
        let before =
            Utc::now().timestamp_millis() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            let docs: Vec<String> = t
                .prepare_cached("SELECT event FROM outbox WHERE at < ?1 ORDER BY at, n LIMIT ?2")?
                .query_map(params![before, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(docs.iter().filter_map(|d| from_json(d).ok()).collect())
        })
        .await
    }

    async fn relayed(&self, ids: &[String]) -> StoreResult<()> {
        let ids = ids.to_vec();
        self.run(move |t| {
            let mut delete = t.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            for id in &ids {
                delete.execute([id])?;
            }
            Ok(())
        })
        .await
    }

    async fn conversation(&self, conversation_id: &str) -> StoreResult<Option<Conversation>> {
        let id = conversation_id.to_owned();
        self.run(move |t| {
            Ok(SummaryRow::load(t, &id)?
                .map(|row| row.conversation())
                .transpose()?)
        })
        .await
    }

    async fn due_sends(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<QueuedSend>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            Ok(t.prepare_cached(&format!(
                "SELECT {SEND_COLUMNS} FROM sends WHERE due <= ?1 ORDER BY due LIMIT ?2"
            ))?
            .query_map(params![now.timestamp_millis(), limit], send_row)?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn first_send(&self, conversation_id: &str) -> StoreResult<Option<QueuedSend>> {
        let id = conversation_id.to_owned();
        self.run(move |t| {
            Ok(t
                .prepare_cached(&format!(
                    "SELECT {SEND_COLUMNS} FROM sends WHERE conversation_id = ?1 ORDER BY ord, id LIMIT 1"
                ))?
                .query_row([id], send_row)
                .optional()?)
        })
        .await
    }

    async fn search(
        &self,
        query: &Query,
        scope: &SearchScope,
        limit: usize,
    ) -> StoreResult<SearchPage> {
        let mut expression = format!("words : ({})", query.fts5());
        if let Some(id) = &scope.conversation_id {
            expression.push_str(&format!(" AND scope : \"{}\"", scope_token('c', id)));
        }
        if let Some(id) = &scope.phone_number_id {
            expression.push_str(&format!(" AND scope : \"{}\"", scope_token('p', id)));
        }
        // Rows after the cursor's: older hits (row ids count down in time).
        let after = match scope.before.as_deref() {
            None => -1,
            Some(cursor) => cursor
                .parse::<i64>()
                .map_err(|_| StoreError::rejected("not a cursor of this search (next)"))?,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            let hits: Vec<(i64, String)> = t
                .prepare_cached(
                    "SELECT rowid, key FROM message_search
                     WHERE message_search MATCH ?1 AND rowid > ?2
                     ORDER BY rowid LIMIT ?3",
                )?
                .query_map(params![expression, after, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut read = t.prepare_cached("SELECT doc FROM messages WHERE id = ?1")?;
            let mut messages = Vec::with_capacity(hits.len());
            for (_, key) in &hits {
                if let Some(doc) = read
                    .query_row([key], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    messages.push(from_json::<Message>(&doc)?.with_media_url());
                }
            }
            let full = i64::try_from(hits.len()).unwrap_or(0) == limit;
            Ok(SearchPage {
                messages,
                next: full
                    .then(|| hits.last().map(|(row, _)| row.to_string()))
                    .flatten(),
            })
        })
        .await
    }

    async fn release_key(&self, key: &str, fingerprint: &str) -> StoreResult<()> {
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        self.run(move |t| {
            t.prepare_cached("DELETE FROM idempotency_keys WHERE key = ?1 AND fingerprint = ?2")?
                .execute([key, fingerprint])?;
            Ok(())
        })
        .await
    }

    async fn claim_key(&self, key: &str, fingerprint: &str) -> StoreResult<KeyClaim> {
        let (key, fingerprint) = (key.to_owned(), fingerprint.to_owned());
        self.run(move |t| {
            let inserted = t
                .prepare_cached(
                    "INSERT OR IGNORE INTO idempotency_keys (key, fingerprint, at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![key, fingerprint, Utc::now().timestamp_millis()])?;
            if inserted == 1 {
                return Ok(KeyClaim::New);
            }
            let first: String = t
                .prepare_cached("SELECT fingerprint FROM idempotency_keys WHERE key = ?1")?
                .query_row([key], |r| r.get(0))?;
            Ok(if first == fingerprint {
                KeyClaim::Same
            } else {
                KeyClaim::Other
            })
        })
        .await
    }

    async fn update_send(
        &self,
        send: &QueuedSend,
        expected_due: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let send = send.clone();
        self.run(move |t| {
            let updated = t
                .prepare_cached(
                    "UPDATE sends SET due = ?2, doc = ?3, held = ?5 WHERE id = ?1 AND due = ?4",
                )?
                .execute(params![
                    send.id,
                    send.due.timestamp_millis(),
                    to_json(&send)?,
                    expected_due.timestamp_millis(),
                    send.held
                ])?;
            Ok(updated == 1)
        })
        .await
    }

    async fn hold_sends(
        &self,
        conversation_id: &str,
        first: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (conversation_id, first) = (conversation_id.to_owned(), first.to_owned());
        self.run(move |t| {
            t.prepare_cached(
                "UPDATE sends SET due = ?3, held = 1
                 WHERE conversation_id = ?1 AND id <> ?2 AND due < ?3",
            )?
            .execute(params![conversation_id, first, until.timestamp_millis()])?;
            Ok(())
        })
        .await
    }
}
