//! The one error type of the storage layer (both stores and the SQLite
//! file they and the embedded queue use). Callers act on its kind, not on
//! its text.

use std::sync::Arc;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database is unreachable, busy or timed out: try again later,
    /// as often as it takes.
    Transient,
    /// The data itself is refused and would be refused again: give up on
    /// it after a few tries (dead letters, a 4xx).
    Rejected,
    /// A guard refused a change because something else changed the same
    /// data since it was read: read again and plan again.
    Conflict,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// The storage has no room left (a full disk): transient, but worth
    /// telling apart, so that readiness and refusals can say so.
    pub out_of_space: bool,
    /// The driver's own error, kept for logs and `source()` chains
    /// (shared: an error may be reported by several waiters).
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// What is stored could not be read back (a malformed document or
    /// row): the database's fault, not the request's; rejected, so that
    /// a payload is not retried forever, but answered `500`.
    pub unreadable: bool,
}

impl Error {
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// No room left to write: transient (retry once space is freed).
    pub fn out_of_space(message: impl Into<String>) -> Self {
        Self {
            out_of_space: true,
            ..Self::transient(message)
        }
    }

    /// Stored data that cannot be read back (see [`Error::unreadable`]).
    pub fn unreadable(message: impl Into<String>) -> Self {
        Self {
            unreadable: true,
            ..Self::rejected(message)
        }
    }

    /// Keeps the driver's error as this one's source.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            out_of_space: false,
            source: None,
            unreadable: false,
        }
    }
}

/// SQLite failures: the data's fault (it would fail again: rejected) or
/// the database's (busy, disk full: transient).
// Here rather than in wa-store-sqlite, behind its feature, because the
// orphan rule allows the `From` (which the adapter's `?` relies on) only
// beside `Error` itself.
#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error::{
            FromSqlConversionFailure, InvalidColumnType, SqliteFailure, ToSqlConversionFailure,
        };
        // A row that cannot be read back as what was stored.
        let unreadable = matches!(&e, FromSqlConversionFailure(..) | InvalidColumnType(..));
        let rejected = match &e {
            ToSqlConversionFailure(..) => true,
            SqliteFailure(failure, _) => failure.code == rusqlite::ErrorCode::ConstraintViolation,
            _ => false,
        };
        let full = matches!(&e, SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::DiskFull);
        let message = format!("SQLite: {e}");
        let error = if full {
            Self::out_of_space(message)
        } else if unreadable {
            Self::unreadable(message)
        } else if rejected {
            Self::rejected(message)
        } else {
            Self::transient(message)
        };
        error.caused_by(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
