//! A SQLite database file used from async code: one connection, behind a
//! mutex, on tokio's blocking threads. SQLite serialises writers anyway;
//! one connection also makes every closure an atomic unit of work.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

#[derive(Clone)]
pub struct Database {
    connection: Arc<Mutex<Connection>>,
}

impl Database {
    /// Opens (creating) the file in WAL mode with full fsync on commit, so
    /// a committed transaction survives a crash or power loss.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "busy_timeout", 5000)?;
        // 64 MiB of page cache (the default is 2 MiB): the indexes of a
        // million messages stay in memory.
        connection.pragma_update(None, "cache_size", -65536)?;
        // Every statement is prepared once (`prepare_cached`), not parsed per call.
        connection.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` in one (immediate, so writers queue up front) transaction
    /// on a blocking thread; commits if it returns `Ok`, rolls back otherwise.
    pub async fn transaction<T, F>(&self, work: F) -> Result<T, SqliteError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            // A panic in an earlier closure rolled its transaction back: the
            // connection itself is fine to use.
            let mut connection = connection
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = work(&transaction)?;
            transaction.commit()?;
            Ok(value)
        })
        .await
        .map_err(|e| SqliteError {
            message: format!("SQLite task failed: {e}"),
            permanent: false,
        })?
    }
}

/// A SQLite failure: `permanent` when the data itself is at fault (it would
/// fail again), not the database being busy or the disk full.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SqliteError {
    pub message: String,
    pub permanent: bool,
}

impl From<rusqlite::Error> for SqliteError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error::{
            FromSqlConversionFailure, InvalidColumnType, SqliteFailure, ToSqlConversionFailure,
        };
        let permanent = match &e {
            FromSqlConversionFailure(..) | ToSqlConversionFailure(..) | InvalidColumnType(..) => {
                true
            }
            SqliteFailure(failure, _) => failure.code == rusqlite::ErrorCode::ConstraintViolation,
            _ => false,
        };
        Self {
            message: e.to_string(),
            permanent,
        }
    }
}
