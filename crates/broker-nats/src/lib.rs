//! The broker on NATS: JetStream for the queue, core NATS for events.
//!
//! Webhook bodies, and messages sent through the API, travel through the
//! `<NS>_WEBHOOKS` stream, a work queue: a payload the processors
//! acknowledged is dropped, so storage frees itself as webhooks are
//! processed (their raw bodies are kept in the store); what is not yet
//! processed stays up to `WEBHOOK_STREAM_MAX_AGE_SECS`. A stream created
//! by an older version keeps its Limits retention (NATS cannot change a
//! stream's retention): see [`ensure_streams`];
//! payloads that can never be processed go to `<NS>_DLQ`; the event log is
//! the `<NS>_EVENTS` stream (subject `<ns>.events`): its sequence numbers
//! are the events' `seq`, the same for every api-gateway reading it.
//!
//! A body larger than the server's `max_payload` (1 MB on a default
//! server, while WhatsApp posts up to 3 MB) goes into the object store
//! bucket `<NS>_BODIES` under its SHA-256, and the stream gets a small
//! reference message instead (headers [`BODY_REF`], [`BODY_BUCKET`],
//! [`BODY_SIZE`], same subject and `Nats-Msg-Id`); deliveries carry the
//! fetched body, so callers never see the difference. An object is
//! deleted when the message referring to it is acknowledged (else it
//! expires with the bucket's `max_age`, the stream's): a later message
//! with the same body (its name is the body's hash) is the same webhook
//! posted again, already processed, so nothing is lost if it finds the
//! object gone.
//!
//! Modules, one idea each: [`streams`] (names, the connection, the
//! streams and consumer), `queue` (enqueue, pull, settle), `bodies` (large
//! bodies in the object store), `events` (the event log) and `room`
//! (JetStream out of room, told apart from an outage).

mod bodies;
pub mod config;
mod events;
mod queue;
mod room;
pub mod streams;

use bodies::*;
use events::*;
use queue::*;
use room::*;
pub use room::{JETSTREAM_FULL, STREAM_FULL};
pub use streams::{Names, connect, ensure_streams, jetstream, processor_consumer};

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::StreamSettings;
use wa_broker::{BatchLimits, BrokerError, Delivery, Ingest, payload_id};
use wa_health::WriteHealth;

/// How long a readiness check waits for JetStream.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Same body (or event) published again within this window is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Dead letters are kept this long, for people to look at.
const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// And up to this many (the oldest go first). A count, not bytes:
/// JetStream reserves a stream's byte limit from the server's storage.
const DEAD_LETTER_MESSAGES: i64 = 100_000;
/// Events a reader of the log waits for before it ends a read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the durable consumer all processor replicas share.
pub const PROCESSOR_CONSUMER: &str = "processor";
/// Header of a message whose body is in an object store: the object's name
/// (the body's SHA-256, hex).
pub const BODY_REF: &str = "Body-Ref";
/// Header of such a message: the bucket holding the body.
pub const BODY_BUCKET: &str = "Body-Bucket";
/// Header of such a message: the body's size in bytes, so batches are
/// bounded by real sizes before the bodies are fetched.
pub const BODY_SIZE: &str = "Body-Size";
/// Room left for headers when deciding whether a body fits in one message
/// (the server counts headers and payload together).
const HEADER_ROOM: usize = 8 * 1024;
/// Longest wait for a referenced body; then the delivery is retried later.
const BODY_FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Deliveries of a reference whose body is gone (the server says so: not a
/// NATS outage) before it is dead-lettered instead of retried for days.
const MISSING_BODY_DELIVERIES: i64 = 10;

/// Both broker traits on one NATS connection.
pub struct NatsBroker {
    client: Client,
    js: jetstream::Context,
    names: Names,
    ack_wait: Duration,
    /// The processor's pull subscription, made on first use.
    consumer: tokio::sync::Mutex<Option<consumer::PullConsumer>>,
    /// The event log; its stream settings are every stream's.
    events: EventLog,
    /// How long a publish is tried again after a failure (a leader
    /// election, a server going away), each attempt bounded by the
    /// JetStream timeout. Zero: one attempt.
    publish_deadline: Duration,
    /// Whether JetStream last took what was written to it.
    health: WriteHealth,
}

impl NatsBroker {
    /// Connects in the background (see [`connect`]); `timeout` bounds every
    /// JetStream request and publish acknowledgement.
    pub async fn connect(
        url: &str,
        namespace: &str,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Self, async_nats::ConnectError> {
        let client = connect(url, client_name).await?;
        let js = jetstream(client.clone(), timeout);
        let names = Names::new(namespace);
        Ok(Self {
            events: EventLog {
                js: js.clone(),
                names: names.clone(),
                streams: StreamSettings::default(),
            },
            js,
            client,
            names,
            ack_wait: Duration::from_secs(30),
            consumer: tokio::sync::Mutex::new(None),
            publish_deadline: Duration::ZERO,
            health: WriteHealth::default(),
        })
    }

    /// Tries a failed publish again until `deadline` has passed since the
    /// first attempt: during a leader election (a few seconds on a cluster)
    /// a publish times out or finds no responder, and a retry reaches the
    /// new leader. A retry is safe: the message id de-duplicates it.
    pub fn with_publish_retry(mut self, deadline: Duration) -> Self {
        self.publish_deadline = deadline;
        self
    }

    /// The streams' replicas and limits (default: one copy, the defaults
    /// of [`StreamSettings`]).
    pub fn with_streams(mut self, streams: StreamSettings) -> Self {
        self.events.streams = streams;
        self
    }

    /// How long a delivered payload may stay unacknowledged before it is
    /// redelivered; applies when the durable consumer is created.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the streams now (they are also created on first use).
    pub async fn ensure_streams(&self) -> anyhow::Result<()> {
        ensure_streams(&self.js, &self.names, &self.events.streams)
            .await
            .map(drop)
    }

    /// Publishes a queued payload, by reference when it is too large.
    async fn send(&self, subject: String, id: &str, body: &Bytes) -> Result<PublishAck, SendError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        let bucket = Bucket {
            name: self.names.bodies_bucket(),
            max_age: self.events.streams.webhook_max_age(),
            replicas: self.events.streams.replicas(),
        };
        publish_body(&self.js, subject, headers, body, &bucket).await
    }

    /// Turns a message into a delivery; a referenced body is fetched first.
    /// `None`: the body could not be had now; the message was handed back
    /// to be delivered again later (or dead-lettered if its body is gone).
    async fn delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        let kind = if message.subject.as_str() == self.names.sends() {
            Ingest::Send
        } else {
            Ingest::Webhook
        };
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (msg_id, body_ref) = (header("Nats-Msg-Id"), header(BODY_REF));
        let info = message.info().ok();
        let enqueued_at = info
            .as_ref()
            .and_then(|i| i64::try_from(i.published.unix_timestamp_nanos()).ok())
            .map_or_else(Utc::now, DateTime::from_timestamp_nanos);
        let attempt = info.as_ref().map_or(1, |i| i.delivered);
        let sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        let settle = NatsSettle {
            message,
            js: self.js.clone(),
            dead_letters: self.names.dead_letters(),
            dead_bodies: Bucket {
                name: self.names.dead_letter_bodies_bucket(),
                max_age: DEAD_LETTER_RETENTION,
                replicas: self.events.streams.replicas(),
            },
            sequence,
        };
        let body = match body_ref {
            None => settle.message.payload.clone(),
            Some(name) => {
                let bucket = self.names.bodies_bucket();
                let fetched =
                    tokio::time::timeout(BODY_FETCH_TIMEOUT, fetch_body(&self.js, &bucket, &name))
                        .await
                        .unwrap_or_else(|_| Err(Fetch::Failed("timed out".to_owned())));
                match fetched {
                    Ok(body) => body,
                    Err(error) => {
                        body_unavailable(&settle, &bucket, &name, attempt, error).await;
                        return None;
                    }
                }
            }
        };
        Some(Delivery {
            kind,
            id: msg_id.unwrap_or_else(|| payload_id(&body)),
            body,
            enqueued_at,
            attempt,
            handle: Box::new(settle),
        })
    }

    /// Messages that have arrived, within `limits` (waits for the first).
    ///
    /// Only what is asked for is delivered: no messages wait in a client
    /// buffer while a batch is stored (their ack deadline would run out and
    /// they would be delivered again, doubling the work on a slow store).
    async fn pull(&self, limits: BatchLimits) -> Result<Vec<jetstream::Message>, BrokerError> {
        let consumer = self.consumer().await?;
        let result = take(&consumer, limits).await;
        if result.is_err() {
            // The consumer may be gone (a NATS restarted without storage).
            *self.consumer.lock().await = None;
        }
        result
    }

    /// The processors' consumer, created with its stream on first use.
    async fn consumer(&self) -> Result<consumer::PullConsumer, BrokerError> {
        let mut cached = self.consumer.lock().await;
        if let Some(consumer) = cached.as_ref() {
            return Ok(consumer.clone());
        }
        let stream = ensure_streams(&self.js, &self.names, &self.events.streams)
            .await
            .map_err(BrokerError::unavailable)?;
        let replicas = self.events.streams.replicas();
        let consumer = processor_consumer(&stream, &self.names, self.ack_wait, replicas)
            .await
            .map_err(BrokerError::unavailable)?;
        Ok(cached.insert(consumer).clone())
    }
}
