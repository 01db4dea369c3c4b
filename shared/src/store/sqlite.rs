//! The embedded store: one SQLite file, for the all-in-one binary.
//!
//! Each table keeps the API-shaped object as JSON next to the columns that
//! queries filter and sort on. Every method runs as one transaction on one
//! connection, so the read-modify-writes below are atomic.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};

use super::{RawPayload, StatusOutcome, Store, StoreError, StoreResult, conversation_sort_key};
use crate::domain::{
    Conversation, Direction, KNOWN_STATUSES, Message, Page, RECEIVED, Stats, StatusChange,
    is_safe_status_name, status_rank,
};
use crate::sqlite::Database;

/// How long a status may wait for its message before it is forgotten.
const PENDING_STATUS_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Clone)]
pub struct SqliteStore {
    db: Database,
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = Database::open(path)
            .map_err(|e| StoreError::transient(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self { db })
    }

    async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.db
            .transaction(work)
            .await
            .map_err(|e| StoreError::transient(format!("SQLite: {e}")))
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

fn save_message(t: &Transaction<'_>, message: &Message) -> rusqlite::Result<()> {
    t.prepare_cached("UPDATE messages SET status = ?2, status_rank = ?3, doc = ?4 WHERE id = ?1")?
        .execute(params![
            message.message_id,
            message.status,
            status_rank(&message.status).unwrap_or(0),
            to_json(message)?
        ])
        .map(drop)
}

fn load_message(t: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Message>> {
    t.prepare_cached("SELECT doc FROM messages WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|doc| from_json(&doc))
        .transpose()
}

fn archive_in(t: &Transaction<'_>, payloads: &[RawPayload]) -> rusqlite::Result<()> {
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

/// Inserts the messages not stored yet; returns the ids actually inserted.
fn insert_in(t: &Transaction<'_>, messages: &[Message]) -> rusqlite::Result<Vec<String>> {
    let mut insert = t.prepare_cached(
        "INSERT OR IGNORE INTO messages
            (id, conversation_id, ts, direction, status, status_rank, contact_name, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut inserted = Vec::new();
    for m in messages {
        let changed = insert.execute(params![
            m.message_id,
            m.conversation_id,
            m.timestamp.timestamp_millis(),
            direction_name(m.direction),
            m.status,
            status_rank(&m.status).unwrap_or(0),
            m.contact_name,
            to_json(m)?
        ])?;
        if changed == 1 {
            let unread = m.direction == Direction::Inbound && m.status == RECEIVED;
            count_in(t, &m.conversation_id, 1, i64::from(unread))?;
            inserted.push(m.message_id.clone());
        }
    }
    Ok(inserted)
}

/// Adds to a conversation's counts. Called in the same transaction as the
/// change counted, so the counts are exact however often a payload is
/// redelivered (unlike MongoDB without transactions, which recomputes).
fn count_in(t: &Transaction<'_>, id: &str, messages: i64, unread: i64) -> rusqlite::Result<()> {
    t.prepare_cached(
        "INSERT INTO conversation_counts (id, messages, unread) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET messages = messages + ?2, unread = unread + ?3",
    )?
    .execute(params![id, messages, unread])
    .map(drop)
}

/// Recomputes one conversation's summary from its messages, inside `t`.
fn refresh_in(t: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    let Some(last) = t
        .prepare_cached(
            "SELECT doc FROM messages WHERE conversation_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1",
        )?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
    else {
        return Ok(());
    };
    let last: Message = from_json(&last)?;
    let (message_count, unread_count): (i64, i64) = t
        .prepare_cached("SELECT messages, unread FROM conversation_counts WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_default();
    // The newest message usually carries the contact's name itself.
    let name: Option<String> = match &last.contact_name {
        Some(name) => Some(name.clone()),
        None => t
        .prepare_cached(
            "SELECT contact_name FROM messages WHERE conversation_id = ?1 AND contact_name IS NOT NULL
             ORDER BY ts DESC, id DESC LIMIT 1",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?,
    };
    let business = match last.direction {
        Direction::Outbound => last.from.clone(),
        Direction::Inbound => last.to.clone(),
    };
    let conversation = Conversation {
        conversation_id: id.to_owned(),
        user_name: name.unwrap_or_else(|| format!("+{}", last.wa_id)),
        last_message_id: last.message_id.clone(),
        last_message_body: last.body.clone(),
        last_timestamp: last.timestamp,
        last_message_status: last.status.clone(),
        last_message_direction: last.direction,
        message_count,
        unread_count,
        participants: [last.wa_id.clone(), business]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect(),
    };
    t.prepare_cached(
        "INSERT OR REPLACE INTO conversations (id, sort_key, doc) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        id,
        conversation_sort_key(last.timestamp, &last.message_id),
        to_json(&conversation)?
    ])
    .map(drop)
}

/// Placeholders `?,?,...` for an `IN` list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.run(|t| t.prepare_cached("SELECT 1")?.query_row([], |_| Ok(())))
            .await
    }

    async fn prepare(&self) -> StoreResult<()> {
        let expired_before = Utc::now().timestamp_millis() - PENDING_STATUS_TTL_MS;
        self.run(move |t| {
            t.execute_batch(
                "CREATE TABLE IF NOT EXISTS messages (
                    id TEXT PRIMARY KEY,
                    conversation_id TEXT NOT NULL,
                    ts INTEGER NOT NULL,
                    direction TEXT NOT NULL,
                    status TEXT NOT NULL,
                    status_rank INTEGER NOT NULL,
                    contact_name TEXT,
                    doc TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, ts DESC, id DESC);
                 -- Mark-read of one conversation. (Single-column
                 -- status/direction indexes tempted the planner into scanning every
                 -- inbound message of every conversation: dropped.)
                 DROP INDEX IF EXISTS messages_by_status;
                 DROP INDEX IF EXISTS messages_by_direction;
                 CREATE INDEX IF NOT EXISTS messages_unread ON messages (conversation_id, direction, status);
                 -- Stats: one pass over a covering index.
                 CREATE INDEX IF NOT EXISTS messages_by_status_direction ON messages (status, direction);
                 -- The contact's newest name without walking business-only stretches.
                 CREATE INDEX IF NOT EXISTS messages_named ON messages (conversation_id, ts DESC, id DESC)
                    WHERE contact_name IS NOT NULL;
                 CREATE TABLE IF NOT EXISTS conversations (
                    id TEXT PRIMARY KEY,
                    sort_key TEXT NOT NULL,
                    doc TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS conversations_by_sort_key ON conversations (sort_key);
                 -- Per conversation: messages, and inbound ones not yet read.
                 CREATE TABLE IF NOT EXISTS conversation_counts (
                    id TEXT PRIMARY KEY,
                    messages INTEGER NOT NULL,
                    unread INTEGER NOT NULL
                 );
                 -- Counts of a store written before they were kept (once).
                 INSERT INTO conversation_counts (id, messages, unread)
                    SELECT conversation_id, COUNT(*), SUM(direction = 'inbound' AND status = 'received')
                    FROM messages
                    WHERE NOT EXISTS (SELECT 1 FROM conversation_counts)
                    GROUP BY conversation_id;
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
                 );",
            )?;
            t.prepare_cached("DELETE FROM pending_statuses WHERE parked_at < ?1")?
                .execute([expired_before]).map(drop)
        })
        .await
    }

    async fn archive_payloads(&self, payloads: &[RawPayload]) -> StoreResult<()> {
        let payloads = payloads.to_vec();
        self.run(move |t| archive_in(t, &payloads)).await
    }

    async fn insert_messages(&self, messages: &[Message]) -> StoreResult<Vec<String>> {
        let messages = messages.to_vec();
        self.run(move |t| insert_in(t, &messages)).await
    }

    /// One transaction: one commit (and fsync) for the batch's writes.
    async fn archive_and_insert(
        &self,
        payloads: &[RawPayload],
        messages: &[Message],
    ) -> StoreResult<Vec<String>> {
        let (payloads, messages) = (payloads.to_vec(), messages.to_vec());
        self.run(move |t| {
            archive_in(t, &payloads)?;
            insert_in(t, &messages)
        })
        .await
    }

    async fn advance_status(&self, change: &StatusChange) -> StoreResult<StatusOutcome> {
        let change = change.clone();
        self.run(move |t| {
            let Some(mut message) = load_message(t, &change.message_id)? else {
                return Ok(StatusOutcome::MessageNotFound);
            };
            if message.direction != Direction::Outbound || !is_safe_status_name(&change.status) {
                return Ok(StatusOutcome::Unchanged);
            }
            let current = status_rank(&message.status).unwrap_or(0);
            match status_rank(&change.status) {
                Some(rank) if rank > current => {
                    message.status = change.status.clone();
                    message
                        .status_timestamps
                        .insert(change.status.clone(), change.timestamp);
                    if change.errors.is_some() {
                        message.errors = change.errors.clone();
                    }
                    save_message(t, &message)?;
                    Ok(StatusOutcome::Applied {
                        conversation_id: message.conversation_id,
                    })
                }
                _ => {
                    // Not applied: still remember when this status was first seen.
                    if !message.status_timestamps.contains_key(&change.status) {
                        message
                            .status_timestamps
                            .insert(change.status.clone(), change.timestamp);
                        save_message(t, &message)?;
                    }
                    Ok(StatusOutcome::Unchanged)
                }
            }
        })
        .await
    }

    async fn park_status(&self, change: &StatusChange) -> StoreResult<()> {
        let change = change.clone();
        let now = Utc::now().timestamp_millis();
        self.run(move |t| {
            let key = format!("{}|{}", change.message_id, change.status);
            t.prepare_cached(
                "INSERT OR IGNORE INTO pending_statuses (key, message_id, doc, parked_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, change.message_id, to_json(&change)?, now])
            .map(drop)
        })
        .await
    }

    async fn parked_statuses(&self, message_ids: &[String]) -> StoreResult<Vec<StatusChange>> {
        let ids = message_ids.to_vec();
        self.run(move |t| {
            let mut found = Vec::new();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT doc FROM pending_statuses WHERE message_id IN ({})",
                    placeholders(chunk.len())
                );
                let mut query = t.prepare(&sql)?;
                let docs = query.query_map(params_from_iter(chunk), |r| r.get::<_, String>(0))?;
                for doc in docs {
                    found.push(from_json(&doc?)?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn unpark_statuses(&self, changes: &[StatusChange]) -> StoreResult<()> {
        let keys: Vec<String> = changes
            .iter()
            .map(|c| format!("{}|{}", c.message_id, c.status))
            .collect();
        self.run(move |t| {
            for key in &keys {
                t.prepare_cached("DELETE FROM pending_statuses WHERE key = ?1")?
                    .execute([key])?;
            }
            Ok(())
        })
        .await
    }

    async fn refresh_conversation(&self, conversation_id: &str) -> StoreResult<()> {
        let id = conversation_id.to_owned();
        self.run(move |t| refresh_in(t, &id)).await
    }

    /// All in one transaction: one fsync for the batch, not one per conversation.
    async fn refresh_conversations(&self, conversation_ids: &[String]) -> StoreResult<()> {
        let ids = conversation_ids.to_vec();
        self.run(move |t| ids.iter().try_for_each(|id| refresh_in(t, id)))
            .await
    }

    async fn mark_inbound_read(
        &self,
        conversation_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<String>> {
        let id = conversation_id.to_owned();
        self.run(move |t| {
            let docs: Vec<String> = t
                .prepare_cached("SELECT doc FROM messages WHERE conversation_id = ?1 AND direction = 'inbound' AND status = ?2")?
                .query_map(params![id, RECEIVED], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut changed = Vec::new();
            for doc in docs {
                let mut message: Message = from_json(&doc)?;
                message.status = "read".to_owned();
                message.status_timestamps.insert("read".to_owned(), at);
                save_message(t, &message)?;
                changed.push(message.message_id);
            }
            if !changed.is_empty() {
                count_in(t, &id, 0, -(changed.len() as i64))?;
            }
            Ok(changed)
        })
        .await
    }

    async fn conversations(&self, page: Page) -> StoreResult<Vec<Conversation>> {
        // Keys of earlier milliseconds sort below the bare millisecond prefix.
        let before = match (page.before, &page.before_id) {
            (Some(before), Some(id)) => conversation_sort_key(before, id),
            (Some(before), None) => format!("{:015}", before.timestamp_millis().max(0)),
            (None, _) => "~".to_owned(),
        };
        self.run(move |t| {
            t.prepare_cached(
                "SELECT doc FROM conversations WHERE sort_key < ?1 ORDER BY sort_key DESC LIMIT ?2",
            )?
            .query_map(params![before, page.limit], |r| r.get::<_, String>(0))?
            .map(|doc| from_json(&doc?))
            .collect()
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
                    "SELECT doc FROM messages WHERE conversation_id = ?1 AND (ts < ?2 OR (ts = ?2 AND id < ?3))
                     ORDER BY ts DESC, id DESC LIMIT ?4",
                )?
                .query_map(params![id, before, before_id, page.limit], |r| r.get::<_, String>(0))?
                .map(|doc| from_json(&doc?))
                .collect::<rusqlite::Result<_>>()?;
            newest_first.reverse();
            Ok(newest_first)
        })
        .await
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        let id = message_id.to_owned();
        self.run(move |t| load_message(t, &id)).await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        self.run(|t| {
            let mut stats = Stats {
                total_conversations: t
                    .prepare_cached("SELECT COUNT(*) FROM conversations")?
                    .query_row([], |r| r.get(0))?,
                status_breakdown: KNOWN_STATUSES
                    .iter()
                    .map(|s| ((*s).to_owned(), 0))
                    .collect(),
                ..Stats::default()
            };
            // One pass over the (status, direction) index.
            let mut counts = t.prepare_cached(
                "SELECT status, direction, COUNT(*) FROM messages GROUP BY status, direction",
            )?;
            let rows = counts.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (status, direction, n) = row?;
                stats.total_messages += n;
                match direction.as_str() {
                    "inbound" => stats.inbound += n,
                    _ => stats.outbound += n,
                }
                if let Some(count) = stats.status_breakdown.get_mut(&status) {
                    *count += n;
                }
            }
            Ok(stats)
        })
        .await
    }
}
