//! The broker between the services, behind two small traits:
//!
//! - [`Queue`]: durable hand-off of payloads to the processor (webhook
//!   bodies, and messages sent through the API), delivered at least once;
//! - [`EventBus`]: the deployment's event log: every event once, numbered
//!   (`seq`), replayable, read live by every api-gateway.
//!
//! `wa-broker-nats` implements both on NATS JetStream for the
//! microservices; `wa-broker-embedded` implements them on SQLite files
//! for the all-in-one binary.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use wa_core::domain::{Event, Sequenced};

pub mod retry;
// Where services have always found it.
pub use retry::retry_until;

/// What a queued payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// A webhook body exactly as WhatsApp posted it.
    Webhook,
    /// A message the business sent through the REST API (a `Message` as JSON).
    Send,
}

/// Why a broker operation failed. Each variant carries its [`Cause`]: the
/// driver's text (for the log) and the driver's error, which is this
/// error's `source()`.
#[derive(Debug)]
pub enum BrokerError {
    /// The broker can't take or give payloads now; try again later.
    Unavailable(Cause),
    /// The payload is larger than the broker accepts.
    TooLarge(Cause),
    /// The broker has no room (a full disk, JetStream out of storage or at
    /// a stream's limit): retrying at once is pointless; `reason` says so
    /// in words, `detail` is the driver's (for the log).
    Full { reason: &'static str, detail: Cause },
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(cause) => write!(f, "broker unavailable: {cause}"),
            Self::TooLarge(cause) => write!(f, "payload too large for the broker: {cause}"),
            Self::Full { reason, detail } => write!(f, "{reason}: {detail}"),
        }
    }
}

impl BrokerError {
    /// Unavailable because of a driver's error, kept as the source.
    pub fn unavailable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(Cause::of(error))
    }
}

// By hand rather than with thiserror: the source is the driver's error
// itself, not the `Cause` around it (which would repeat its text).
impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable(cause) | Self::TooLarge(cause) | Self::Full { detail: cause, .. } => {
                cause.error()
            }
        }
    }
}

/// Why a broker is not ready.
#[derive(Debug)]
pub enum NotReady {
    /// It does not answer; the driver's, for the log only.
    Unreachable(Cause),
    /// It answers but cannot store; in words, safe to show.
    CannotStore(&'static str),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(cause) => write!(f, "unreachable: {cause}"),
            Self::CannotStore(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for NotReady {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreachable(cause) => cause.error(),
            Self::CannotStore(_) => None,
        }
    }
}

/// What a [`BrokerError`] or [`NotReady`] comes from: text for the log
/// (a driver's can name hosts or users: never shown to clients) and,
/// when there is one, the driver's error, kept as the `source()`.
#[derive(Debug)]
pub struct Cause {
    text: String,
    error: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// A driver's error, in its own words.
    pub fn of(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let error = error.into();
        Self {
            text: error.to_string(),
            error: Some(error),
        }
    }

    /// A driver's error, told in `text` (e.g. with what was being done).
    pub fn new(
        text: impl Into<String>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            text: text.into(),
            error: Some(error.into()),
        }
    }

    /// The text, for the log.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The driver's error, if there is one.
    pub fn error(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Text only: no driver error behind it.
impl From<String> for Cause {
    fn from(text: String) -> Self {
        Self { text, error: None }
    }
}

impl From<&str> for Cause {
    fn from(text: &str) -> Self {
        text.to_owned().into()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Outcome of [`Queue::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The same id was queued recently: stored once.
    pub duplicate: bool,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Returns once the payload is durable. A payload whose `id` was
    /// enqueued less than 10 minutes before (counted from its first
    /// enqueue, processed meanwhile or not) is stored once: `duplicate`.
    /// Any body size is taken (NATS: past `max_payload` by reference).
    async fn enqueue(&self, kind: Ingest, id: &str, body: Bytes) -> Result<Enqueued, BrokerError>;

    /// Waits for payloads and returns some, within `limits` (a payload
    /// larger than `limits.bytes` comes alone). A payload not acknowledged
    /// (or retried, or dead-lettered) is delivered again later, also after
    /// a crash.
    async fn next_batch(&self, limits: BatchLimits) -> Result<Vec<Delivery>, BrokerError>;

    /// `Err` says why payloads can't flow now: unreachable, or unable to
    /// store (the last write failed for lack of room and a probe says
    /// there still is none).
    async fn ready(&self) -> Result<(), NotReady>;

    /// How long a delivered payload may go unsettled before it is handed
    /// out again (a consumer still working on it says so sooner).
    fn redelivered_after(&self) -> Duration;
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends events to the log, in order, each once: an event whose id
    /// ([`Event::id`]) the log already holds is not appended again.
    async fn append(&self, events: &[Event]) -> Result<(), BrokerError>;

    /// The last `seq` so far, and every event after it as it is appended.
    /// The stream ends if it cannot keep up (read what it missed with
    /// [`EventBus::read`], then ask again).
    async fn live(&self) -> Result<(u64, BoxStream<'static, Sequenced>), BrokerError>;

    /// Up to `limit` events after `after`, oldest first (none: nothing
    /// newer yet). `after` must be a `seq` the log gave (or 0).
    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Events after the one asked for are no longer kept.
    #[error("events after {after} are no longer kept (the oldest kept is {first})")]
    Gone { after: u64, first: u64 },
    /// The log never gave `after`: it was reset (its storage lost), or the
    /// number is made up.
    #[error("there is no event {after}: the log's last is {last}")]
    Ahead { after: u64, last: u64 },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// How long the event log keeps events at least.
pub const EVENT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How much one batch may hold: payloads, and bytes of their bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub count: usize,
    pub bytes: usize,
}

/// One delivery of a queued payload.
pub struct Delivery {
    pub kind: Ingest,
    /// De-duplication id (the webhook body's SHA-256, or the message id).
    pub id: String,
    pub body: Bytes,
    pub enqueued_at: DateTime<Utc>,
    /// 1 on the first delivery.
    pub attempt: i64,
    /// How this delivery is settled (each queue implements [`Settle`]).
    pub handle: Box<dyn Settle>,
}

/// How a delivery is settled; each queue implements it.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(&self) -> Result<(), BrokerError>;
    async fn in_progress(&self) -> Result<(), BrokerError>;
    async fn retry_after(&self, delay: Duration) -> Result<(), BrokerError>;
    async fn dead_letter(&self, body: &Bytes, reason: &str) -> Result<(), BrokerError>;
}

impl Delivery {
    /// Done: never delivered again.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.handle.ack().await
    }

    /// Still being worked on: not to be handed out again yet.
    pub async fn in_progress(&self) -> Result<(), BrokerError> {
        self.handle.in_progress().await
    }

    /// Deliver again after `delay`.
    pub async fn retry_after(&self, delay: Duration) -> Result<(), BrokerError> {
        self.handle.retry_after(delay).await
    }

    /// Moves the payload aside with the reason, for people to look at.
    pub async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        self.handle.dead_letter(&self.body, reason).await
    }
}

/// The id a payload is de-duplicated by: the SHA-256 of its bytes, hex.
pub fn payload_id(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(body))
}
