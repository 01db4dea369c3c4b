//! The one error type of the storage layer (both stores and the SQLite
//! file they and the embedded queue use). Callers act on its kind, not on
//! its text.

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

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            out_of_space: false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
