//! The embedded store: one SQLite file, for the all-in-one binary.
//!
//! Messages keep the API-shaped object as JSON next to the columns that
//! queries filter and sort on; summaries and counters are plain rows. A
//! change set is applied in one transaction, with its guards checked
//! inside it, so nothing is ever half applied here: messages are always
//! settled and journals always empty.
//!
//! Modules: [`db`] (the connection, its writer thread and group commit),
//! `migrate` (the schema), `rows` (values to rows and back), `changes`
//! (load and apply a batch), `fts` (the search index) and `numbers`
//! (business numbers: the home number, per-number lists and counters,
//! adopting data stored before numbers existed).

mod changes;
pub mod db;
mod fts;
mod migrate;
mod numbers;
mod rows;

use changes::*;
use fts::*;
use migrate::*;
use numbers::*;
use rows::*;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::db::Database;
use wa_core::domain::{Conversation, Event, Message, Page, QueuedSend, Stats};
use wa_core::plan::{ChangeSet, Known, Lookup};
use wa_core::search::Query;
use wa_store::error::Error;
use wa_store::{
    KeyClaim, SearchPage, SearchScope, Store, StoreError, StoreResult, conversations_before,
};

/// `PRAGMA user_version` of the current schema.
const SCHEMA_VERSION: i64 = 5;

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

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.run(|t| Ok(t.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?))
            .await
    }

    /// The schema, then the media ids of messages stored before version 5,
    /// in steps of [`MEDIA_IDS_BATCH`] messages, each its own transaction.
    async fn prepare(&self) -> StoreResult<()> {
        self.run(prepare_in).await?;
        while self.run(fill_media_ids_step).await? {}
        Ok(())
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

    async fn conversations(
        &self,
        page: Page,
        numbers: Option<&[String]>,
    ) -> StoreResult<Vec<Conversation>> {
        let before = conversations_before(&page).unwrap_or_else(|| "~".to_owned());
        let numbers = numbers.map(<[String]>::to_vec);
        self.run(move |t| {
            if let Some(numbers) = &numbers {
                return Ok(conversations_of(t, numbers, &before, page.limit)?);
            }
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

    async fn home_number(&self, candidate: Option<&str>) -> StoreResult<Option<String>> {
        let candidate = candidate.map(str::to_owned);
        self.run(move |t| Ok(claim_home(t, candidate.as_deref())?))
            .await
    }

    async fn note_numbers(&self, numbers: &[(String, Option<String>)]) -> StoreResult<()> {
        let numbers = numbers.to_vec();
        self.run(move |t| Ok(note_numbers_in(t, &numbers)?)).await
    }

    async fn numbers(&self) -> StoreResult<Vec<wa_core::numbers::BusinessNumber>> {
        self.run(|t| Ok(numbers_in(t)?)).await
    }

    /// In steps of [`ADOPT_BATCH`] rows, each its own transaction, so the
    /// writer serves the deployment between them; a step interrupted is
    /// redone by the next call (each only tags what is untagged). The
    /// search index goes first: messages still untagged say it may not be
    /// done.
    async fn adopt_numbers(&self, default: Option<&str>) -> StoreResult<Option<String>> {
        let default = default.map(str::to_owned);
        let Adoption { untagged, home } = self
            .run(move |t| Ok(begin_adoption(t, default.as_deref())?))
            .await?;
        if !untagged {
            return Ok(home);
        }
        tracing::info!(home = ?home, "giving stored data a business number");
        for step in [
            AdoptStep::Search,
            AdoptStep::Messages,
            AdoptStep::Summaries,
            AdoptStep::Sends,
        ] {
            let mut cursor = Cursor::Start;
            loop {
                let home = home.clone();
                let next = self
                    .run(move |t| adopt_step(t, step, home.as_deref(), &cursor))
                    .await?;
                match next {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
        }
        Ok(home)
    }

    async fn stats(&self, numbers: Option<&[String]>) -> StoreResult<Stats> {
        let numbers = numbers.map(<[String]>::to_vec);
        self.run(move |t| Ok(stats_in(t, numbers.as_deref())?))
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

    /// By `messages_by_media` (`media_id = ?` implies its `IS NOT NULL`).
    async fn media_conversation(&self, media_id: &str) -> StoreResult<Option<String>> {
        let media_id = media_id.to_owned();
        self.run(move |t| {
            Ok(t.prepare_cached(
                // The first message naming it owns it (by time, then
                // key, as every store answers).
                "SELECT conversation_id FROM messages WHERE media_id = ?1
                     ORDER BY ts, id LIMIT 1",
            )?
            .query_row([media_id], |r| r.get(0))
            .optional()?)
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
        if let Some(numbers) = &scope.numbers {
            if numbers.is_empty() {
                return Ok(SearchPage::default());
            }
            let tokens: Vec<String> = numbers
                .iter()
                .map(|id| format!("scope : \"{}\"", scope_token('p', id)))
                .collect();
            expression.push_str(&format!(" AND ({})", tokens.join(" OR ")));
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
