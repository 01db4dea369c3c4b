//! The in-process broker of the all-in-one binary.
//!
//! The queue is a table in its own SQLite file: `enqueue` returns once the
//! payload is committed (fsync'd), so a webhook's 200 means durable here
//! too, and whatever was not acknowledged is delivered again after a crash.
//! Events go to a log in another SQLite file ([`events`]).

mod events;

pub use events::EmbeddedEvents;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use wa_broker::{
    BatchLimits, BrokerError, Cause, Delivery, Enqueued, Ingest, NotReady, Queue, Settle,
};
use wa_store_sqlite::db::{DISK_FULL, Database};

/// Below this much free space in the data directory the queue is not
/// ready: a webhook (up to a few MB, written to the WAL, then copied into
/// the database) would likely fail half-way.
const LOW_SPACE: u64 = 1024 * 1024;

/// A storage error as the broker's: a full disk is told apart. The
/// storage error (and its SQLite error) is kept as the source.
fn broker_error(e: wa_store::error::Error) -> BrokerError {
    if e.out_of_space {
        BrokerError::Full {
            reason: DISK_FULL,
            detail: Cause::of(e),
        }
    } else {
        unavailable(e)
    }
}

/// A storage error as the broker being unavailable, kept as the source.
fn unavailable(e: wa_store::error::Error) -> BrokerError {
    BrokerError::Unavailable(Cause::of(e))
}

/// While a batch is being handled its payloads are leased, so they are not
/// handed out again; after a crash the lease is cleared at startup.
const LEASE: Duration = Duration::from_secs(60);
/// A payload enqueued again within this time of its first enqueue is a
/// duplicate, even once processed and gone from the queue: the same window
/// as JetStream's de-duplication in the microservices.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

pub struct EmbeddedQueue {
    db: Database,
    arrived: std::sync::Arc<Notify>,
    /// The directory of the file: its free space is part of readiness.
    dir: std::path::PathBuf,
}

impl EmbeddedQueue {
    pub async fn open(path: &Path) -> Result<Self, BrokerError> {
        // A small page cache: large bodies pass through once.
        let db = Database::open_with_cache(path, 4 * 1024 * 1024).map_err(|e| {
            BrokerError::Unavailable(Cause::new(
                format!("cannot open {}: {e}", path.display()),
                e,
            ))
        })?;
        db.transaction(|t| {
            t.execute_batch(
                "CREATE TABLE IF NOT EXISTS queue (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    kind TEXT NOT NULL,
                    body BLOB NOT NULL,
                    enqueued_at INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    available_at INTEGER NOT NULL,
                    leased_until INTEGER NOT NULL DEFAULT 0
                 );
                 CREATE INDEX IF NOT EXISTS queue_ready ON queue (available_at, seq);
                 -- Ids enqueued in the last DUPLICATE_WINDOW, with when they first were.
                 CREATE TABLE IF NOT EXISTS recent_ids (
                    id TEXT PRIMARY KEY,
                    enqueued_at INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS recent_ids_age ON recent_ids (enqueued_at);
                 CREATE TABLE IF NOT EXISTS dead_letters (
                    seq INTEGER PRIMARY KEY,
                    id TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    body BLOB NOT NULL,
                    reason TEXT NOT NULL,
                    dead_at INTEGER NOT NULL
                 );
                 -- Only this process consumes: leases of a previous run are void.
                 UPDATE queue SET leased_until = 0;",
            )
        })
        .await
        .map_err(unavailable)?;
        Ok(Self {
            db,
            arrived: Default::default(),
            dir: path
                .parent()
                .map_or_else(|| Path::new(".").to_owned(), Path::to_owned),
        })
    }

    /// Payloads waiting (or in flight), and dead letters.
    pub async fn depth(&self) -> Result<(i64, i64), BrokerError> {
        self.db
            .transaction(|t| -> rusqlite::Result<_> {
                let queued = t
                    .prepare_cached("SELECT COUNT(*) FROM queue")?
                    .query_row([], |r| r.get(0))?;
                let dead = t
                    .prepare_cached("SELECT COUNT(*) FROM dead_letters")?
                    .query_row([], |r| r.get(0))?;
                Ok((queued, dead))
            })
            .await
            .map_err(unavailable)
    }

    /// Leases payloads that are due, within `limits`; also says when the
    /// next one (not yet due) will be.
    async fn lease(
        &self,
        limits: BatchLimits,
    ) -> Result<(Vec<Delivery>, Option<i64>), BrokerError> {
        let now = Utc::now().timestamp_millis();
        let db = self.db.clone();
        let rows = self
            .db
            .transaction(move |t| -> rusqlite::Result<_> {
                let mut select = t.prepare_cached(
                    "SELECT seq, id, kind, body, enqueued_at, attempts FROM queue
                     WHERE available_at <= ?1 AND leased_until <= ?1 ORDER BY seq LIMIT ?2",
                )?;
                let mut rows: Vec<(i64, String, String, Vec<u8>, i64, i64)> = Vec::new();
                let mut bytes = 0;
                let candidates = select
                    .query_map(params![now, limits.count as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
                for row in candidates {
                    let row: (i64, String, String, Vec<u8>, i64, i64) = row?;
                    bytes += row.3.len();
                    if !rows.is_empty() && bytes > limits.bytes {
                        break;
                    }
                    rows.push(row);
                }
                let lease_end = now + LEASE.as_millis() as i64;
                for row in &rows {
                    t.prepare_cached("UPDATE queue SET attempts = attempts + 1, leased_until = ?2 WHERE seq = ?1")?
                        .execute(params![row.0, lease_end])?;
                }
                let next: Option<i64> = t
                    .prepare_cached("SELECT MIN(MAX(available_at, leased_until)) FROM queue")?
                        .query_row([], |r| r.get(0))
                    .optional()?
                    .flatten();
                Ok((rows, next))
            })
            .await
            .map_err(unavailable)?;
        let (rows, next) = rows;
        let deliveries = rows
            .into_iter()
            .map(|(seq, id, kind, body, enqueued_at, attempts)| Delivery {
                kind: if kind == "send" {
                    Ingest::Send
                } else {
                    Ingest::Webhook
                },
                id,
                body: Bytes::from(body),
                enqueued_at: DateTime::from_timestamp_millis(enqueued_at).unwrap_or_default(),
                attempt: attempts + 1,
                handle: Box::new(EmbeddedSettle {
                    db: db.clone(),
                    seq,
                    arrived: self.arrived.clone(),
                }),
            })
            .collect();
        Ok((deliveries, next))
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn enqueue(&self, kind: Ingest, id: &str, body: Bytes) -> Result<Enqueued, BrokerError> {
        let kind = match kind {
            Ingest::Webhook => "webhook",
            Ingest::Send => "send",
        };
        let (id, now) = (id.to_owned(), Utc::now().timestamp_millis());
        let window_start = now - DUPLICATE_WINDOW.as_millis() as i64;
        let inserted = self
            .db
            .transaction(move |t| -> rusqlite::Result<_> {
                // Forget what left the window: through the index, only the
                // expired rows are visited, however busy the window is.
                t.prepare_cached("DELETE FROM recent_ids WHERE enqueued_at < ?1")?
                    .execute([window_start])?;
                // Seen in the window (processed or not): stored once.
                let first = t
                    .prepare_cached(
                        "INSERT OR IGNORE INTO recent_ids (id, enqueued_at) VALUES (?1, ?2)",
                    )?
                    .execute(params![id, now])?;
                if first == 0 {
                    return Ok(0);
                }
                // Still queued from before the window (retried for long): once too.
                t.prepare_cached(
                    "INSERT OR IGNORE INTO queue (id, kind, body, enqueued_at, available_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                )?
                .execute(params![id, kind, body.as_ref(), now])
            })
            .await
            .map_err(broker_error)?;
        if inserted > 0 {
            self.arrived.notify_one();
        }
        Ok(Enqueued {
            duplicate: inserted == 0,
        })
    }

    async fn next_batch(&self, limits: BatchLimits) -> Result<Vec<Delivery>, BrokerError> {
        loop {
            let (deliveries, next) = self.lease(limits).await?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            // Sleep until something arrives or the next retry is due.
            let wait = next
                .map(|at| Duration::from_millis((at - Utc::now().timestamp_millis()).clamp(1, 1000) as u64))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = self.arrived.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn ready(&self) -> Result<(), NotReady> {
        self.db
            .transaction(|t| t.prepare_cached("SELECT 1")?.query_row([], |_| Ok(())))
            .await
            .map_err(|e| NotReady::Unreachable(Cause::of(e)))?;
        // A disk about to fill is not ready before writes fail; one whose
        // writes failed for lack of room stays not ready until a write
        // succeeds, or there is room again (looked at once a second).
        let free = wa_health::available_bytes(&self.dir).unwrap_or(u64::MAX);
        if free < LOW_SPACE {
            return Err(NotReady::CannotStore(DISK_FULL));
        }
        match self.db.health().due_for_probe() {
            None => Ok(()),
            Some((reason, false)) => Err(NotReady::CannotStore(reason)),
            Some((reason, true)) => {
                // Room again: the next write will tell for sure.
                if free >= 2 * LOW_SPACE {
                    self.db.health().wrote();
                    Ok(())
                } else {
                    Err(NotReady::CannotStore(reason))
                }
            }
        }
    }

    fn redelivered_after(&self) -> Duration {
        LEASE
    }
}

struct EmbeddedSettle {
    db: Database,
    seq: i64,
    arrived: std::sync::Arc<Notify>,
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        let seq = self.seq;
        self.db
            .transaction(move |t| -> rusqlite::Result<_> {
                t.prepare_cached("DELETE FROM queue WHERE seq = ?1")?
                    .execute([seq])
                    .map(drop)
            })
            .await
            .map_err(unavailable)
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        let (seq, until) = (
            self.seq,
            Utc::now().timestamp_millis() + LEASE.as_millis() as i64,
        );
        self.db
            .transaction(move |t| -> rusqlite::Result<_> {
                t.prepare_cached("UPDATE queue SET leased_until = ?2 WHERE seq = ?1")?
                    .execute(params![seq, until])
                    .map(drop)
            })
            .await
            .map_err(unavailable)
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), BrokerError> {
        let (seq, at) = (
            self.seq,
            Utc::now().timestamp_millis() + delay.as_millis() as i64,
        );
        self.db
            .transaction(move |t| -> rusqlite::Result<_> {
                t.prepare_cached(
                    "UPDATE queue SET available_at = ?2, leased_until = 0 WHERE seq = ?1",
                )?
                .execute(params![seq, at])
                .map(drop)
            })
            .await
            .map_err(unavailable)?;
        self.arrived.notify_one();
        Ok(())
    }

    async fn dead_letter(&self, _body: &Bytes, reason: &str) -> Result<(), BrokerError> {
        let (seq, reason, now) = (self.seq, reason.to_owned(), Utc::now().timestamp_millis());
        self.db
            .transaction(move |t| -> rusqlite::Result<_> {
                t.prepare_cached(
                    "INSERT OR REPLACE INTO dead_letters (seq, id, kind, body, reason, dead_at)
                     SELECT seq, id, kind, body, ?2, ?3 FROM queue WHERE seq = ?1",
                )?
                .execute(params![seq, reason, now])?;
                t.prepare_cached("DELETE FROM queue WHERE seq = ?1")?
                    .execute([seq])
                    .map(drop)
            })
            .await
            .map_err(unavailable)
    }
}
