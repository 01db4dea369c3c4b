//! The all-in-one's event log: a table in its own SQLite file. `seq` is
//! the row's number; appends are committed (fsync'd) before they are told
//! to live readers, in order. Kept for [`EVENT_RETENTION`].

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use futures::stream::BoxStream;
use rusqlite::{OptionalExtension, params};
use tokio::sync::{Mutex, broadcast};

use wa_broker::{BrokerError, Cause, EVENT_RETENTION, EventBus, ReadError};
use wa_core::domain::{Event, Sequenced};
use wa_store_sqlite::db::Database;

/// Live events a slow reader may fall behind by before its stream ends.
const LIVE_BUFFER: usize = 16_384;

pub struct EmbeddedEvents {
    db: Database,
    /// The last `seq` told to live readers, and the channel that tells
    /// them; appends hold it from commit to broadcast, so live readers get
    /// every event in order.
    live: Arc<Mutex<(u64, broadcast::Sender<Sequenced>)>>,
    /// When events past the retention were last dropped.
    pruned: std::sync::Mutex<std::time::Instant>,
}

/// How often appends drop the events past the retention.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl EmbeddedEvents {
    pub async fn open(path: &Path) -> Result<Self, BrokerError> {
        // A small page cache: large bodies pass through once.
        let db = Database::open_with_cache(path, 8 * 1024 * 1024).map_err(|e| {
            BrokerError::Unavailable(Cause::new(
                format!("cannot open {}: {e}", path.display()),
                e,
            ))
        })?;
        let unavailable = crate::unavailable;
        let head = db
            .transaction(|t| -> rusqlite::Result<u64> {
                t.execute_batch(
                    "CREATE TABLE IF NOT EXISTS events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        event TEXT NOT NULL,
                        at INTEGER NOT NULL
                     );
                     CREATE INDEX IF NOT EXISTS events_by_time ON events (at);",
                )?;
                last_seq(t)
            })
            .await
            .map_err(unavailable)?;
        let events = Self {
            db,
            live: Arc::new(Mutex::new((head, broadcast::channel(LIVE_BUFFER).0))),
            pruned: std::sync::Mutex::new(std::time::Instant::now()),
        };
        events.forget_old().await?;
        Ok(events)
    }

    /// Drops events older than the retention.
    async fn forget_old(&self) -> Result<(), BrokerError> {
        let before = Utc::now().timestamp_millis()
            - i64::try_from(EVENT_RETENTION.as_millis()).unwrap_or(i64::MAX);
        self.db
            .transaction(move |t| {
                t.prepare_cached("DELETE FROM events WHERE at < ?1")?
                    .execute([before])
                    .map(drop)
            })
            .await
            .map_err(crate::unavailable)
    }
}

/// The last `seq` ever given, kept events or not.
fn last_seq(t: &rusqlite::Transaction<'_>) -> rusqlite::Result<u64> {
    let last: Option<i64> = t
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(last.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

fn sequenced(seq: i64, event: &str) -> Option<Sequenced> {
    Some(Sequenced {
        seq: u64::try_from(seq).ok()?,
        event: serde_json::from_str(event).ok()?,
    })
}

#[async_trait]
impl EventBus for EmbeddedEvents {
    async fn append(&self, events: &[Event]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let prune = self.pruned.lock().is_ok_and(|mut pruned| {
            let due = pruned.elapsed() >= PRUNE_EVERY;
            if due {
                *pruned = std::time::Instant::now();
            }
            due
        });
        if prune {
            // The log stays a day long however long the process runs.
            self.forget_old().await?;
        }
        let rows: Vec<(String, String)> = events
            .iter()
            .map(|e| Ok((e.id(), serde_json::to_string(e)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| {
                BrokerError::Unavailable(Cause::new(format!("event not serialisable: {e}"), e))
            })?;
        let mut live = self.live.lock().await;
        let head = live.0;
        let now = Utc::now().timestamp_millis();
        let appended = self
            .db
            .transaction(move |t| -> rusqlite::Result<Vec<(i64, String)>> {
                let mut insert = t.prepare_cached(
                    "INSERT OR IGNORE INTO events (id, event, at) VALUES (?1, ?2, ?3)",
                )?;
                for (id, event) in &rows {
                    insert.execute(params![id, event, now])?;
                }
                // Everything after what readers were told: this append's
                // rows (an id kept before was ignored).
                let mut select =
                    t.prepare_cached("SELECT seq, event FROM events WHERE seq > ?1 ORDER BY seq")?;
                let rows = select.query_map([i64::try_from(head).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                rows.collect()
            })
            .await
            .map_err(crate::unavailable)?;
        for (seq, event) in appended {
            if let Some(event) = sequenced(seq, &event) {
                live.0 = event.seq;
                // No live reader is fine: nobody is watching.
                let _ = live.1.send(event);
            }
        }
        Ok(())
    }

    async fn live(&self) -> Result<(u64, BoxStream<'static, Sequenced>), BrokerError> {
        let live = self.live.lock().await;
        let receiver = live.1.subscribe();
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(event) => Some((event, receiver)),
                // Fell behind (or closed): end; the reader catches up by reading.
                Err(_) => None,
            }
        });
        Ok((live.0, stream.boxed()))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError> {
        let (from, limit) = (
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        let (first, last, rows) = self
            .db
            .transaction(
                move |t| -> rusqlite::Result<(Option<i64>, u64, Vec<(i64, String)>)> {
                    let first: Option<i64> = t
                        .prepare_cached("SELECT MIN(seq) FROM events")?
                        .query_row([], |r| r.get(0))?;
                    let rows = t
                        .prepare_cached(
                            "SELECT seq, event FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                        )?
                        .query_map(params![from, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    Ok((first, last_seq(t)?, rows))
                },
            )
            .await
            .map_err(crate::unavailable)?;
        // The oldest kept, or (all forgotten) the next to come.
        let first = first
            .and_then(|f| u64::try_from(f).ok())
            .unwrap_or(last + 1);
        if after.saturating_add(1) < first {
            return Err(ReadError::Gone { after, first });
        }
        if after > last {
            return Err(ReadError::Ahead { after, last });
        }
        Ok(rows
            .iter()
            .filter_map(|(seq, event)| sequenced(*seq, event))
            .collect())
    }
}
