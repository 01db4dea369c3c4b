//! A SQLite database file used from async code, with group commit.
//!
//! One thread owns the one connection (SQLite serialises writers anyway).
//! Units of work queue up for it; the thread runs whatever has queued as
//! one transaction, each unit inside its own savepoint, and commits once:
//! a hundred concurrent webhooks cost one fsync, not a hundred. A unit's
//! result is handed back only after that commit, so "Ok" still means
//! "durable". A unit that fails (or panics) is rolled back to its savepoint
//! alone; the others commit.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

use wa_health::WriteHealth;
use wa_store::error::{Error, ErrorKind};

/// Most units of work in one transaction.
const MAX_GROUP: usize = 512;

/// Runs one unit in the group's transaction (`None`: the transaction could
/// not begin); returns what to do once the group's commit is known.
type Job = Box<dyn FnOnce(Option<&Group<'_>>) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// The transaction a group of units shares.
struct Group<'c> {
    transaction: Transaction<'c>,
    /// False once a failed unit could not be undone: then nothing commits.
    sound: std::cell::Cell<bool>,
    /// Why the first unit that broke the transaction failed: the group's
    /// answer says that, not merely "abandoned".
    broken_by: std::cell::RefCell<Option<Error>>,
}

#[derive(Clone)]
pub struct Database {
    jobs: mpsc::Sender<Job>,
    health: WriteHealth,
}

/// What a full disk is called in readiness and errors.
pub const DISK_FULL: &str = "the disk is full";

impl Database {
    /// Opens (creating) the file in WAL mode with full fsync on commit, so
    /// a committed transaction survives a crash or power loss; 64 MiB of
    /// page cache (the default is 2 MiB): the indexes of a million
    /// messages stay in memory.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        Self::open_with_cache(path, 64 * 1024 * 1024)
    }

    /// [`Database::open`] with `cache_bytes` of page cache: a queue or a
    /// log, read once in order, needs little (and held large bodies in it).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> rusqlite::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "busy_timeout", 5000)?;
        // Negative: in KiB.
        let cache_kib = i64::try_from(cache_bytes / 1024).unwrap_or(i64::MAX);
        connection.pragma_update(None, "cache_size", -cache_kib.max(1))?;
        // Every statement is prepared once (`prepare_cached`), not parsed per call.
        connection.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = mpsc::channel::<Job>();
        let health = WriteHealth::default();
        let written = health.clone();
        std::thread::Builder::new()
            .name("sqlite".to_owned())
            .spawn(move || run_groups(connection, queue, &written))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self { jobs, health })
    }

    /// Whether writes to this file last succeeded (a full disk is
    /// remembered until a write succeeds again).
    pub fn health(&self) -> &WriteHealth {
        &self.health
    }

    /// Runs `work` atomically (in a savepoint of the current group's
    /// transaction) and returns its value once that transaction is
    /// committed. `Err` from `work` rolls back `work` only.
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        E: Into<Error>,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |t| {
            let value = match t {
                Some(group) => in_savepoint(group, work),
                None => Err(stopped()), // superseded by the begin error
            };
            Box::new(move |commit| {
                let result = match (value, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    // The commit's (or begin's) failure explains more.
                    (_, Err(e)) | (Err(e), Ok(())) => Err(e),
                };
                // The caller may have gone (cancelled): nothing to tell.
                let _ = reply.send(result);
            })
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::transient("the SQLite thread has stopped")
}

/// The connection's thread: one transaction per group of queued units,
/// until every `Database` handle is dropped.
fn run_groups(mut connection: Connection, queue: mpsc::Receiver<Job>, health: &WriteHealth) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let changes_before = connection.total_changes();
        let group =
            match connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
                Ok(transaction) => Group {
                    transaction,
                    sound: std::cell::Cell::new(true),
                    broken_by: std::cell::RefCell::new(None),
                },
                Err(e) => {
                    let error = Error::from(e);
                    if error.out_of_space {
                        health.out_of_space(DISK_FULL);
                    }
                    // Tell every waiting unit; none of them ran.
                    for job in jobs {
                        job(None)(Err(error.clone()));
                    }
                    continue;
                }
            };
        let completions: Vec<Completion> = jobs.into_iter().map(|job| job(Some(&group))).collect();
        let Group {
            transaction,
            sound,
            broken_by,
        } = group;
        let cause = broken_by.into_inner();
        let changed = transaction.total_changes() > changes_before;
        let commit = if sound.get() {
            transaction.commit().map_err(Error::from)
        } else {
            // A failed unit's writes could not be undone: commit none.
            let _ = transaction.rollback();
            Err(match cause {
                Some(cause) => Error {
                    message: format!("the group of writes was abandoned: {}", cause.message),
                    kind: ErrorKind::Transient,
                    ..cause
                },
                None => Error::transient(
                    "a unit of work could not be rolled back; the group was abandoned",
                ),
            })
        };
        // Only a group that wrote says there is room (reads commit on a full disk).
        match &commit {
            Ok(()) if changed => health.wrote(),
            Err(e) if e.out_of_space => health.out_of_space(DISK_FULL),
            _ => {}
        }
        for complete in completions {
            complete(commit.clone());
        }
    }
}

/// Runs `work` inside a savepoint: kept on `Ok`, undone on `Err` or panic.
fn in_savepoint<T, E: Into<Error>>(
    group: &Group<'_>,
    work: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, Error> {
    let t = &group.transaction;
    // After an error SQLite answered by rolling the whole transaction back
    // itself, a unit would run (and commit) outside it: run no more units.
    if !group.sound.get() || t.is_autocommit() {
        group.sound.set(false);
        return Err(Error::transient(
            "an earlier unit of work broke the shared transaction",
        ));
    }
    t.execute_batch("SAVEPOINT unit")?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(t)));
    let result = match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Error::transient("SQLite unit of work panicked")),
    };
    let undone = result.is_ok() || t.execute_batch("ROLLBACK TO unit").is_ok();
    if !undone || t.execute_batch("RELEASE unit").is_err() {
        group.sound.set(false);
        if let Err(e) = &result {
            group
                .broken_by
                .borrow_mut()
                .get_or_insert_with(|| e.clone());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(db: &Database) -> i64 {
        db.transaction(|t| t.query_row::<i64, _, _>("SELECT COUNT(*) FROM items", [], |r| r.get(0)))
            .await
            .unwrap()
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let error = Error::from(full);
        assert!(error.out_of_space);
        assert_eq!(error.kind, ErrorKind::Transient);
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(!Error::from(busy).out_of_space);
    }

    /// Concurrent units share commits, yet each stays atomic: a failing or
    /// panicking unit is undone alone and its caller is told.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_units_commit_together_and_fail_alone() {
        let dir = std::env::temp_dir().join(test_support::unique_name("sqlite-group"));
        let db = Database::open(&dir.join("db.sqlite3")).unwrap();
        db.transaction(|t| t.execute_batch("CREATE TABLE items (n INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        let units = (0..200).map(|n: i64| {
            let db = db.clone();
            tokio::spawn(async move {
                db.transaction(move |t| {
                    t.execute("INSERT INTO items (n) VALUES (?1)", [n])?;
                    match n % 50 {
                        // Fails after writing: the write must be undone.
                        7 => t
                            .execute("INSERT INTO items (n) VALUES (?1)", [n])
                            .map(drop),
                        8 => panic!("unit {n} panics"),
                        _ => Ok(()),
                    }
                })
                .await
            })
        });
        let results = futures::future::join_all(units).await;
        let failed = results.iter().filter(|r| !matches!(r, Ok(Ok(())))).count();
        assert_eq!(failed, 8, "4 constraint failures and 4 panics reported");
        assert_eq!(count(&db).await, 192);
        // Reopened: what was acknowledged is on disk.
        drop(db);
        let db = Database::open(&dir.join("db.sqlite3")).unwrap();
        assert_eq!(count(&db).await, 192);
        std::fs::remove_dir_all(&dir).ok();
    }
}
