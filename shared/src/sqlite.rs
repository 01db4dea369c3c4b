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
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` in one transaction on a blocking thread; commits if it
    /// returns `Ok`, rolls back otherwise.
    pub async fn transaction<T, F>(&self, work: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| "the SQLite connection was poisoned by a panic".to_owned())?;
            let transaction = connection.transaction().map_err(|e| e.to_string())?;
            let value = work(&transaction).map_err(|e| e.to_string())?;
            transaction.commit().map_err(|e| e.to_string())?;
            Ok(value)
        })
        .await
        .map_err(|e| format!("SQLite task failed: {e}"))?
    }
}
