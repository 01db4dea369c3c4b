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

pub mod config;

use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::object_store::{self, GetErrorKind};
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{Client, ConnectOptions, HeaderMap};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::AsyncReadExt;

use crate::config::StreamSettings;
use wa_broker::{
    BatchLimits, BrokerError, Delivery, Enqueued, EventBus, Ingest, NotReady, Queue, ReadError,
    Settle, payload_id,
};
use wa_core::domain::{Event, Sequenced};
use wa_health::WriteHealth;

/// Why JetStream refuses writes, in words (readiness, logs).
pub const JETSTREAM_FULL: &str = "JetStream is out of storage";
/// A stream at its own `max_bytes` / `max_msgs` (discard new).
pub const STREAM_FULL: &str = "a JetStream stream is at its size limit";

/// JetStream error codes that mean "no room": insufficient resources,
/// storage resources exceeded, account resources exceeded, memory
/// resources exceeded. Retrying them within a request is pointless.
const NO_ROOM_CODES: [u64; 4] = [10023, 10047, 10002, 10028];

/// Whether an error (or one of its sources) is JetStream saying it has no
/// room, and which kind. The text is read too: the object store passes
/// publish errors on as text.
fn no_room(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<jetstream::Error>()
            && NO_ROOM_CODES.contains(&js.error_code().0)
        {
            return Some(JETSTREAM_FULL);
        }
        text.push_str(&e.to_string());
        text.push('\n');
        next = e.source();
    }
    no_room_in_text(&text)
}

/// [`no_room`] for errors that only survive as text.
fn no_room_in_text(text: &str) -> Option<&'static str> {
    // Error 10077 (store failed) with the limit it hit.
    if text.contains("maximum bytes exceeded") || text.contains("maximum messages exceeded") {
        return Some(STREAM_FULL);
    }
    let coded = NO_ROOM_CODES
        .iter()
        .any(|code| text.contains(&format!("error code {code})")));
    (coded || text.contains("insufficient resources") || text.contains("insufficient storage"))
        .then_some(JETSTREAM_FULL)
}

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

/// Every NATS name, derived from one namespace so that several deployments
/// (or tests) can share a server.
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// Subject webhook bodies are published on.
    pub fn webhooks(&self) -> String {
        format!("{}.ingest.webhook", self.namespace)
    }

    /// Subject of messages sent through the REST API, for the processor to store.
    pub fn sends(&self) -> String {
        format!("{}.ingest.send", self.namespace)
    }

    /// Everything the processor consumes: webhooks and sends.
    pub fn ingest(&self) -> String {
        format!("{}.ingest.>", self.namespace)
    }

    pub fn dead_letters(&self) -> String {
        format!("{}.dlq.webhooks", self.namespace)
    }

    /// Subject of the event log.
    pub fn events(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Rung (core NATS, empty) after each append, so that readers of
    /// the log need not poll; outside the stream's subject.
    pub fn events_ring(&self) -> String {
        format!("{}.events_ring", self.namespace)
    }

    /// Subject of the readiness probe's writes (a stream of one message).
    pub fn probe(&self) -> String {
        format!("{}.probe", self.namespace)
    }

    pub fn probe_stream(&self) -> String {
        format!("{}_PROBE", self.stream_prefix())
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix())
    }

    pub fn webhook_stream(&self) -> String {
        format!("{}_WEBHOOKS", self.stream_prefix())
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DLQ", self.stream_prefix())
    }

    /// Object store bucket of queued bodies too large for one message.
    pub fn bodies_bucket(&self) -> String {
        format!("{}_BODIES", self.stream_prefix())
    }

    /// Object store bucket of dead-lettered bodies too large for one
    /// message (kept as long as the dead letters).
    pub fn dead_letter_bodies_bucket(&self) -> String {
        format!("{}_DLQ_BODIES", self.stream_prefix())
    }

    /// Stream names may not contain `.`, `*`, `>` or spaces.
    fn stream_prefix(&self) -> String {
        self.namespace
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// Connects without waiting for the server: the client keeps retrying in
/// the background, so a service starts (and reports not-ready) while NATS
/// is down, and recovers on its own when it comes back.
///
/// `url` may list several servers of a cluster, comma-separated: the
/// client connects to one and moves to another when it goes away (it also
/// learns the cluster's other servers from the one it reaches).
pub async fn connect(url: &str, name: &str) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(3))
        .event_callback(|event| async move { tracing::info!(%event, "nats") })
        .connect(server_list(url))
        .await
}

/// `nats://a:4222, nats://b:4222` as its servers.
fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// A JetStream context whose requests (and publish acks) give up after
/// `timeout`, so callers can answer "try again later" quickly.
pub fn jetstream(client: Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// Creates the streams, or updates them to these settings; idempotent.
///
/// The webhook stream is a work queue (what the processors acknowledged
/// is dropped; the one durable consumer all processors share is allowed
/// on it, no other). One created with Limits retention by an older
/// version is kept so, with a warning: NATS refuses to change a stream's
/// retention, and deleting it here could drop webhooks a gateway is
/// publishing at that moment. To move it: stop the gateways, let the
/// processors drain it, delete it (`nats stream rm <NS>_WEBHOOKS`), start
/// them again.
///
/// When full, the webhook and dead-letter streams refuse new messages
/// (a webhook is then answered 503 and Meta retries it; a payload that
/// cannot be dead-lettered stays in the webhook stream and is retried):
/// nothing unprocessed is ever dropped to make room. The event stream
/// drops its oldest events instead (a client resuming from before them
/// is told to resync).
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    settings: &StreamSettings,
) -> anyhow::Result<stream::Stream> {
    let replicas = settings.replicas();
    ensure_stream(
        js,
        stream::Config {
            name: names.dead_letter_stream(),
            subjects: vec![names.dead_letters()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: DEAD_LETTER_RETENTION,
            max_messages: DEAD_LETTER_MESSAGES,
            max_bytes: settings.dead_letter_stream_max_bytes,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: names.events_stream(),
            subjects: vec![names.events()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: settings.event_max_age(),
            max_bytes: settings.event_stream_max_bytes,
            discard: stream::DiscardPolicy::Old,
            // An event relayed again (after a crash) is kept once.
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: names.webhook_stream(),
            subjects: vec![names.ingest()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: settings.webhook_max_age(),
            max_bytes: settings.webhook_stream_max_bytes,
            discard: stream::DiscardPolicy::New,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(js.get_stream(names.webhook_stream()).await?)
}

/// Creates one stream, or updates it when its configuration differs.
///
/// An update is only sent on a real difference: every service replica runs
/// this at startup, and nats-server 2.9 has crashed (a nil dereference in
/// `updateWithAdvisory`) under a stream update racing other requests on it.
async fn ensure_stream(js: &jetstream::Context, mut wanted: stream::Config) -> anyhow::Result<()> {
    if let Ok(mut existing) = js.get_stream(&wanted.name).await {
        let current = existing.info().await?.config.clone();
        if current.retention != wanted.retention {
            // NATS refuses the change: keep it, and say how to move.
            tracing::warn!(
                stream = %wanted.name,
                current = ?current.retention,
                wanted = ?wanted.retention,
                "the stream keeps its retention (NATS cannot change it): processed webhooks \
                 stay until they age out; to free their space as they are processed, stop the \
                 gateways, let the processors drain the stream, delete it and start again"
            );
            wanted.retention = current.retention;
        }
        if !same_settings(&current, &wanted) {
            tracing::info!(stream = %wanted.name, "updating the stream's configuration");
            if let Err(e) = js.update_stream(wanted.clone()).await {
                // Said loudly rather than ignored: e.g. replicas on a
                // single server, or more than the cluster has.
                anyhow::bail!(
                    "stream {} has {} replica(s), max_bytes {}, max_age {:?}; \
                     these settings want {}, {}, {:?}, and NATS refused the change: {e}",
                    wanted.name,
                    current.num_replicas,
                    current.max_bytes,
                    current.max_age,
                    wanted.num_replicas,
                    wanted.max_bytes,
                    wanted.max_age
                );
            }
        }
        return Ok(());
    }
    match js.create_stream(wanted.clone()).await {
        Ok(_) => Ok(()),
        // Another replica created it in between: it has these settings.
        Err(e) if js.get_stream(&wanted.name).await.is_ok() => {
            tracing::debug!(error = %e, stream = %wanted.name, "stream created concurrently");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a stream already has the settings this code sets (the server
/// answers "unlimited" as -1 where the request said 0).
fn same_settings(current: &stream::Config, wanted: &stream::Config) -> bool {
    let limit = |n: i64| if n <= 0 { -1 } else { n };
    current.subjects == wanted.subjects
        && current.retention == wanted.retention
        && current.storage == wanted.storage
        && current.max_age == wanted.max_age
        && current.duplicate_window == wanted.duplicate_window
        && limit(current.max_messages) == limit(wanted.max_messages)
        && limit(current.max_bytes) == limit(wanted.max_bytes)
        && current.discard == wanted.discard
        && current.num_replicas.max(1) == wanted.num_replicas.max(1)
}

/// The durable pull consumer shared by every processor replica: each
/// message goes to one replica, and is redelivered if not acked in time.
pub async fn processor_consumer(
    stream: &stream::Stream,
    names: &Names,
    ack_wait: Duration,
    replicas: usize,
) -> anyhow::Result<consumer::PullConsumer> {
    Ok(stream
        .get_or_create_consumer(
            PROCESSOR_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(PROCESSOR_CONSUMER.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                // Unlimited: the processor decides when to dead-letter.
                max_deliver: -1,
                max_ack_pending: 20_000,
                // Singular filter: nats-server 2.9 ignores `filter_subjects`.
                filter_subject: names.ingest(),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?)
}

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
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        let mut cached = self.consumer.lock().await;
        if let Some(consumer) = cached.as_ref() {
            return Ok(consumer.clone());
        }
        let stream = ensure_streams(&self.js, &self.names, &self.events.streams)
            .await
            .map_err(|e| unavailable(&e))?;
        let replicas = self.events.streams.replicas();
        let consumer = processor_consumer(&stream, &self.names, self.ack_wait, replicas)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(cached.insert(consumer).clone())
    }
}

/// How long one wait for the first message of a batch lasts on the server;
/// a request lost with a restarted server is given up 5 s after that.
const PULL_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for the rest of a batch (answered at once, normally).
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// Waits for one message, then takes whatever else is there, within
/// `limits`, without waiting.
async fn take(
    consumer: &consumer::PullConsumer,
    limits: BatchLimits,
) -> Result<Vec<jetstream::Message>, BrokerError> {
    let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
    let first = loop {
        let mut one = consumer
            .batch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(|e| unavailable(&e))?;
        match one.next().await {
            Some(message) => break message.map_err(|e| unavailable(&e))?,
            // Nothing came: ask again.
            None => continue,
        }
    };
    let mut bytes = body_size(&first);
    let mut batch = vec![first];
    if limits.count > 1 && bytes < limits.bytes {
        let fetched = consumer
            .fetch()
            .max_messages(limits.count - 1)
            .max_bytes(limits.bytes - bytes)
            .messages()
            .await;
        let mut rest = match fetched {
            Ok(rest) => rest,
            // The one in hand is worked on; the rest waits for the next batch.
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch more for this batch");
                return Ok(batch);
            }
        };
        // A fetch has no deadline of its own: a request that the consumer's
        // leader took with it when it died would be waited for forever.
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            let message = match tokio::time::timeout_at(deadline, rest.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(None) => break,
                // What was on its way comes back after the ack wait.
                Err(_) => {
                    tracing::warn!("a fetch went unanswered; taking what came");
                    break;
                }
                // What came is taken; the rest stays for the next batch.
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "pull error");
                    break;
                }
            };
            // A reference counts as the body it stands for: past the
            // limit, a message goes back at once for the next batch.
            if bytes >= limits.bytes {
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(error = %e, "nak failed; redelivered after the ack wait");
                }
                continue;
            }
            bytes += body_size(&message);
            batch.push(message);
        }
    }
    Ok(batch)
}

impl NatsBroker {
    /// One attempt at [`Queue::enqueue`].
    async fn enqueue_once(
        &self,
        kind: Ingest,
        id: &str,
        body: &Bytes,
    ) -> Result<Enqueued, BrokerError> {
        let subject = match kind {
            Ingest::Webhook => self.names.webhooks(),
            Ingest::Send => self.names.sends(),
        };
        let result = match self.send(subject.clone(), id, body).await {
            // NATS lost its streams (e.g. restarted without storage): recreate them once.
            Err(SendError::Publish(e)) if e.kind() == PublishErrorKind::StreamNotFound => {
                if let Err(e) = self.ensure_streams().await {
                    let detail = format!("{e:#}");
                    return Err(match no_room_in_text(&detail) {
                        Some(reason) => BrokerError::Full { reason, detail },
                        None => BrokerError::Unavailable(detail),
                    });
                }
                self.send(subject, id, body).await
            }
            other => other,
        };
        match result {
            Ok(ack) => Ok(Enqueued {
                duplicate: ack.duplicate,
            }),
            // Only if even a reference does not fit: a server with a tiny limit.
            Err(SendError::Publish(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(BrokerError::TooLarge(e.to_string()))
            }
            Err(e) => Err(match e.no_room() {
                Some(reason) => BrokerError::Full {
                    reason,
                    detail: e.to_string(),
                },
                None => BrokerError::Unavailable(e.to_string()),
            }),
        }
    }
}

#[async_trait]
impl Queue for NatsBroker {
    async fn enqueue(&self, kind: Ingest, id: &str, body: Bytes) -> Result<Enqueued, BrokerError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            // Only an outage (an election, a timeout) is waited out: a
            // JetStream without room says so at once, and is answered so.
            match self.enqueue_once(kind, id, &body).await {
                Err(BrokerError::Unavailable(e))
                    if started.elapsed() + pause < self.publish_deadline =>
                {
                    tracing::debug!(error = %e, "publish failed; trying again");
                    metrics::counter!("publish_retries_total").increment(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(BrokerError::Full { reason, detail }) => {
                    self.health.out_of_space(reason);
                    return Err(BrokerError::Full { reason, detail });
                }
                Ok(enqueued) => {
                    self.health.wrote();
                    return Ok(enqueued);
                }
                other => return other,
            }
        }
    }

    async fn next_batch(&self, limits: BatchLimits) -> Result<Vec<Delivery>, BrokerError> {
        loop {
            let messages = self.pull(limits).await?;
            // Referenced bodies are fetched side by side.
            let deliveries: Vec<Delivery> =
                futures::future::join_all(messages.into_iter().map(|m| self.delivery(m)))
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            // All of them handed back for later: wait for others.
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
        }
    }

    /// Connected, and JetStream answers: a server that froze keeps the
    /// connection open while every publish times out.
    async fn ready(&self) -> Result<(), NotReady> {
        let unreachable = |why: String| Err(NotReady::Unreachable(why));
        match self.client.connection_state() {
            async_nats::connection::State::Connected => {}
            other => return unreachable(format!("NATS is {other}")),
        }
        // The account info request, answered by any JetStream server (its
        // content is not read: the client's parser fails on a cluster's).
        let asked = self.client.request("$JS.API.INFO", Bytes::new());
        match tokio::time::timeout(READY_TIMEOUT, asked).await {
            Ok(Ok(answer)) if !answer.payload.is_empty() => {}
            Ok(Ok(_)) => return unreachable("JetStream gave an empty answer".to_owned()),
            Ok(Err(e)) => return unreachable(format!("JetStream does not answer: {e}")),
            Err(_) => {
                return unreachable(format!("JetStream did not answer within {READY_TIMEOUT:?}"));
            }
        }
        // Reachable; but a write that failed for lack of room stands until
        // a later one (or a probe, at most once a second) succeeds.
        match self.health.due_for_probe() {
            None => Ok(()),
            Some((reason, false)) => Err(NotReady::CannotStore(reason)),
            Some((reason, true)) => match self.probe(reason).await {
                Ok(()) => {
                    self.health.wrote();
                    Ok(())
                }
                Err(reason) => Err(NotReady::CannotStore(reason)),
            },
        }
    }

    fn redelivered_after(&self) -> Duration {
        self.ack_wait
    }
}

impl NatsBroker {
    /// Whether JetStream has room again, after writes failed for `reason`:
    /// a stream at its limit has room once it holds less; a server out of
    /// storage takes a small write into the probe stream once it has
    /// room. `Err`: still no room (or no answer).
    async fn probe(&self, reason: &'static str) -> Result<(), &'static str> {
        if reason == STREAM_FULL {
            let mut stream = self
                .js
                .get_stream(self.names.webhook_stream())
                .await
                .map_err(|_| reason)?;
            let info = stream.info().await.map_err(|_| reason)?;
            let (limits, state) = (&info.config, &info.state);
            let bytes_full = limits.max_bytes > 0
                && state.bytes >= u64::try_from(limits.max_bytes).unwrap_or(u64::MAX);
            let count_full = limits.max_messages > 0
                && state.messages >= u64::try_from(limits.max_messages).unwrap_or(u64::MAX);
            return if bytes_full || count_full {
                Err(reason)
            } else {
                Ok(())
            };
        }
        let stream = stream::Config {
            name: self.names.probe_stream(),
            subjects: vec![self.names.probe()],
            storage: stream::StorageType::File,
            // One tiny message, whatever the probes: it occupies nothing.
            max_messages: 1,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(3600),
            num_replicas: self.events.streams.replicas(),
            ..Default::default()
        };
        let attempt = async {
            if self.js.get_stream(&stream.name).await.is_err() {
                self.js.create_stream(stream).await.map_err(|e| {
                    let detail = format!("{e:#}");
                    no_room_in_text(&detail).unwrap_or(reason)
                })?;
            }
            publish(&self.js, self.names.probe(), HeaderMap::new(), Bytes::new())
                .await
                .map(drop)
                .map_err(|e| no_room(&e).unwrap_or(reason))
        };
        match tokio::time::timeout(READY_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(reason),
        }
    }
}

/// An object store bucket for bodies, created on first use.
struct Bucket {
    name: String,
    max_age: Duration,
    replicas: usize,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
    #[error("cannot store the body in the object store: {0}")]
    Bucket(String),
}

impl SendError {
    /// Whether JetStream refused it for lack of room, and which kind.
    fn no_room(&self) -> Option<&'static str> {
        match self {
            Self::Publish(e) => no_room(e),
            Self::Bucket(text) => no_room_in_text(text),
        }
    }
}

type PublishAck = jetstream::publish::PublishAck;

/// Publishes `body` as one message when it fits the server's `max_payload`;
/// otherwise stores it in `bucket` and publishes a reference to it with the
/// same headers, so the message id still de-duplicates it.
async fn publish_body(
    js: &jetstream::Context,
    subject: String,
    mut headers: HeaderMap,
    body: &Bytes,
    bucket: &Bucket,
) -> Result<PublishAck, SendError> {
    // The limit the client checks: the server's, from its INFO (NATS's
    // 1 MB default until the first connection tells).
    let max_payload = js.client().max_payload();
    if body.len().saturating_add(HEADER_ROOM) <= max_payload {
        match publish(js, subject.clone(), headers.clone(), body.clone()).await {
            // The server takes less than it said (e.g. a reconnection to
            // another one): by reference then.
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {}
            other => return other.map_err(SendError::Publish),
        }
    }
    let name = stash(js, bucket, body).await.map_err(SendError::Bucket)?;
    headers.insert(BODY_REF, name);
    headers.insert(BODY_BUCKET, bucket.name.as_str());
    headers.insert(BODY_SIZE, body.len().to_string());
    Ok(publish(js, subject, headers, Bytes::new()).await?)
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAck, jetstream::context::PublishError> {
    let message = PublishMessage::build().headers(headers).payload(payload);
    js.send_publish(subject, message).await?.await
}

/// Puts `body` into `bucket` under its SHA-256 (hex) and returns that name.
async fn stash(js: &jetstream::Context, bucket: &Bucket, body: &Bytes) -> Result<String, String> {
    let name = payload_id(body);
    let store = match js.get_object_store(&bucket.name).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.name.clone(),
                description: Some("bodies larger than the server's max_payload".to_owned()),
                max_age: bucket.max_age,
                storage: stream::StorageType::File,
                num_replicas: bucket.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?,
    };
    // The name is the content's hash: a copy written within the duplicate
    // window is the same body, kept (a retry by Meta then uploads nothing,
    // and no chunks a processor may be reading are replaced). An older copy
    // is written again, so it lives as long as the newest reference to it.
    if let Ok(info) = store.info(&name).await {
        let age = info
            .modified
            .map(|m| Utc::now().timestamp().saturating_sub(m.unix_timestamp()));
        let recent =
            age.is_some_and(|age| u64::try_from(age).unwrap_or(0) < DUPLICATE_WINDOW.as_secs());
        if !info.deleted && info.size == body.len() && recent {
            return Ok(name);
        }
    }
    store
        .put(name.as_str(), &mut body.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    Ok(name)
}

/// Why a referenced body could not be fetched.
enum Fetch {
    /// The server says it is not there (expired, deleted).
    Gone(String),
    /// NATS trouble: try again later.
    Failed(String),
}

/// The body stored as `name` in `bucket`, checked against its name.
async fn fetch_body(js: &jetstream::Context, bucket: &str, name: &str) -> Result<Bytes, Fetch> {
    let store = js.get_object_store(bucket).await.map_err(|e| {
        let missing = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<GetStreamError>())
            .is_some_and(|e| {
                matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            });
        if missing {
            Fetch::Gone(format!("no bucket {bucket}"))
        } else {
            Fetch::Failed(e.to_string())
        }
    })?;
    let mut object = store.get(name).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound => Fetch::Gone(e.to_string()),
        _ => Fetch::Failed(e.to_string()),
    })?;
    // Sized from the object's info, bounded in case that is wrong.
    let mut body = Vec::with_capacity(object.info().size.min(64 << 20));
    object
        .read_to_end(&mut body)
        .await
        .map_err(|e| Fetch::Failed(e.to_string()))?;
    // Content-addressed: anything else is a copy being rewritten; read again later.
    if payload_id(&body) != name {
        return Err(Fetch::Failed(format!("{name} read back different bytes")));
    }
    Ok(body.into())
}

/// A referenced body could not be fetched: the message is delivered again
/// later (NATS trouble is waited out, never dead-lettered); a body the
/// server keeps saying is gone is dead-lettered after a while.
async fn body_unavailable(
    settle: &NatsSettle,
    bucket: &str,
    name: &str,
    attempt: i64,
    error: Fetch,
) {
    let (gone, error) = match error {
        Fetch::Gone(e) => (true, e),
        Fetch::Failed(e) => (false, e),
    };
    if gone && attempt >= MISSING_BODY_DELIVERIES {
        let reason = format!("body {name} is no longer in bucket {bucket}: {error}");
        tracing::error!(%reason, sequence = settle.sequence, "payload dead-lettered");
        if settle.dead_letter(&Bytes::new(), &reason).await.is_ok() {
            return;
        }
    }
    let delay = Duration::from_secs(1 << attempt.clamp(1, 6).saturating_sub(1))
        .min(Duration::from_secs(30));
    tracing::warn!(%error, name, attempt, ?delay, "cannot fetch a payload's body; retrying later");
    if let Err(e) = settle.retry_after(delay).await {
        // Then it comes back after the ack wait.
        tracing::warn!(error = %e, "retry not scheduled");
    }
}

/// The size of the body a message carries or refers to.
fn body_size(message: &jetstream::Message) -> usize {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(BODY_SIZE))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(message.payload.len())
}

/// Reads the event log (the `<NS>_EVENTS` stream) by sequence number:
/// each read is a short-lived consumer from a given `seq`, so a reader
/// never depends on a long-lived consumer surviving a NATS restart.
#[derive(Clone)]
struct EventLog {
    js: jetstream::Context,
    names: Names,
    streams: StreamSettings,
}

impl EventLog {
    /// The stream, created if NATS lost it.
    async fn stream(&self) -> Result<stream::Stream, BrokerError> {
        match self.js.get_stream(self.names.events_stream()).await {
            Ok(stream) => Ok(stream),
            Err(_) => {
                ensure_streams(&self.js, &self.names, &self.streams)
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                self.js
                    .get_stream(self.names.events_stream())
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))
            }
        }
    }

    /// The stream, the oldest kept and the last `seq`.
    async fn bounds(&self) -> Result<(stream::Stream, u64, u64), BrokerError> {
        // Looking the stream up fetched its state: one request, not two.
        let stream = self.stream().await?;
        let state = stream.cached_info().state.clone();
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        Ok((stream, first, state.last_sequence))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError> {
        let (stream, first, last) = self.bounds().await?;
        if after.saturating_add(1) < first {
            return Err(ReadError::Gone { after, first });
        }
        if after > last {
            return Err(ReadError::Ahead { after, last });
        }
        let mut events = Vec::new();
        let mut cursor = after;
        // Events that are not understood are skipped: read on past them.
        while events.is_empty() && cursor < last && limit > 0 {
            let (page, read_to) = match self.page(&stream, cursor, last, limit).await {
                Ok(page) => page,
                // What was read in order stands.
                Err(_) if !events.is_empty() => break,
                Err(e) => return Err(e.into()),
            };
            events.extend(page);
            if read_to == cursor {
                break;
            }
            cursor = read_to;
        }
        Ok(events)
    }

    /// One consumer's worth: events after `after`, and the last `seq` read.
    async fn page(
        &self,
        stream: &stream::Stream,
        after: u64,
        last: u64,
        limit: usize,
    ) -> Result<(Vec<Sequenced>, u64), BrokerError> {
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.names.events(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let name = consumer.cached_info().name.clone();
        let wanted = usize::try_from(last - after)
            .unwrap_or(usize::MAX)
            .min(limit);
        let mut events = Vec::with_capacity(wanted);
        let mut read_to = after;
        let read = tokio::time::timeout(READ_TIMEOUT, async {
            let mut messages = consumer
                .fetch()
                .max_messages(wanted)
                .messages()
                .await
                .map_err(|e| unavailable(&e))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| unavailable(&e))?;
                let seq = message.info().map_err(|e| unavailable(&e))?.stream_sequence;
                if seq <= read_to {
                    continue; // never backwards
                }
                // A fresh consumer skips only sequence numbers the stream
                // no longer holds (deleted by hand, or aged out since the
                // bounds were read).
                read_to = seq;
                events.extend(decode(seq, &message.payload));
            }
            Ok::<(), BrokerError>(())
        })
        .await;
        // Not needed any more (it would expire anyway).
        let owned = stream.clone();
        tokio::spawn(async move { owned.delete_consumer(&name).await.ok() });
        match read {
            Ok(Ok(())) if read_to == after => self.nothing_read(stream, after, last).await,
            Ok(Ok(())) => Ok((events, read_to)),
            Ok(Err(_)) | Err(_) if read_to > after => Ok((events, read_to)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BrokerError::Unavailable(
                "the event log did not answer in time".into(),
            )),
        }
    }

    /// A consumer that delivered nothing although the stream's last event
    /// (`last`) is after `after`: either no event in between is kept any
    /// more (deleted by hand), or the consumer sits on a replica still
    /// catching up (a restarted node), and saying "nothing in between"
    /// would make readers skip events. The stream's leader has the next
    /// event kept: it is the answer.
    async fn nothing_read(
        &self,
        stream: &stream::Stream,
        after: u64,
        last: u64,
    ) -> Result<(Vec<Sequenced>, u64), BrokerError> {
        let next = stream
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(self.names.events())
            .send()
            .await;
        match next {
            Ok(message) => Ok((
                decode(message.sequence, &message.payload)
                    .into_iter()
                    .collect(),
                message.sequence,
            )),
            // None kept up to the last (which the stream still counts).
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                Ok((Vec::new(), last))
            }
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }
    }

    /// Events after `head` as they are appended: reads on, and waits for
    /// a ring (every append rings `<ns>.events.ring`) when caught up. Ends
    /// when the log can't be read; the reader reads what it missed and
    /// follows again.
    async fn follow(
        &self,
        client: &Client,
        head: u64,
    ) -> Result<BoxStream<'static, Sequenced>, BrokerError> {
        let doorbell = client
            .subscribe(self.names.events_ring())
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let state = (
            self.clone(),
            doorbell,
            head,
            std::collections::VecDeque::new(),
        );
        Ok(futures::stream::unfold(
            state,
            |(log, mut doorbell, mut cursor, mut ready)| async move {
                loop {
                    if let Some(event) = ready.pop_front() {
                        return Some((event, (log, doorbell, cursor, ready)));
                    }
                    // Rings so far are answered by the read that follows.
                    while let Some(Some(_)) = doorbell.next().now_or_never() {}
                    match log.read(cursor, FOLLOW_PAGE).await {
                        Ok(events) if !events.is_empty() => {
                            cursor = events.last().map_or(cursor, |e: &Sequenced| e.seq);
                            ready.extend(events);
                        }
                        Ok(_) => {
                            // Caught up: until something is appended (or a
                            // while, in case a ring was lost).
                            if let Ok(None) =
                                tokio::time::timeout(FOLLOW_IDLE, doorbell.next()).await
                            {
                                return None;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "event log interrupted");
                            return None;
                        }
                    }
                }
            },
        )
        .boxed())
    }
}

/// An event of the log; one that is not understood is skipped (logged).
fn decode(seq: u64, payload: &[u8]) -> Option<Sequenced> {
    match serde_json::from_slice(payload) {
        Ok(event) => Some(Sequenced { seq, event }),
        Err(e) => {
            tracing::error!(error = %e, seq, "an event that is not understood is skipped");
            None
        }
    }
}

/// Events read per round while following the log.
const FOLLOW_PAGE: usize = 1_000;
/// Longest wait for an append's ring before reading again anyway.
const FOLLOW_IDLE: Duration = Duration::from_secs(1);
/// Room kept in a message for its headers.
const HEADROOM: usize = 4 * 1024;
/// A too-large event's body is cut to this many characters.
const SLIM_BODY_CHARS: usize = 4 * 1024;

/// An event as a message body: within `max_payload`, a message too large
/// (a huge text, a large WhatsApp object) is announced without its
/// WhatsApp objects and with its body cut; REST has it whole.
fn event_body(event: &Event, max_payload: usize) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(event)?;
    let limit = max_payload.saturating_sub(HEADROOM);
    match event {
        Event::NewMessage(message) if body.len() > limit => {
            let mut slim = message.as_ref().clone();
            slim.content = None;
            slim.context = None;
            slim.referral = None;
            slim.errors = None;
            if slim.body.chars().count() > SLIM_BODY_CHARS {
                slim.body = slim.body.chars().take(SLIM_BODY_CHARS).collect::<String>() + "…";
            }
            tracing::warn!(
                message_id = %message.message_id,
                bytes = body.len(),
                "event too large for a NATS message: announced without its WhatsApp objects"
            );
            serde_json::to_vec(&Event::NewMessage(Box::new(slim)))
        }
        _ => Ok(body),
    }
}

#[async_trait]
impl EventBus for NatsBroker {
    async fn append(&self, events: &[Event]) -> Result<(), BrokerError> {
        let max_payload = self.client.server_info().max_payload;
        // Sent in order on one connection, acknowledged a window at a time:
        // async-nats holds at most 5,000 unacknowledged publishes and waits
        // for a free one, so sending a whole large batch before awaiting
        // any acknowledgement never finished.
        for window in events.chunks(APPEND_WINDOW) {
            if let Err(e) = self.append_window(window, max_payload).await {
                if let BrokerError::Full { reason, .. } = &e {
                    self.health.out_of_space(reason);
                }
                return Err(e);
            }
        }
        if !events.is_empty() {
            self.health.wrote();
        }
        if !events.is_empty() {
            // Followers wake up (a lost ring only delays them a little).
            self.client
                .publish(self.names.events_ring(), Bytes::new())
                .await
                .ok();
        }
        Ok(())
    }

    async fn live(&self) -> Result<(u64, BoxStream<'static, Sequenced>), BrokerError> {
        let (_, _, head) = self.events.bounds().await?;
        Ok((head, self.events.follow(&self.client, head).await?))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError> {
        self.events.read(after, limit).await
    }
}

/// Events published before their acknowledgements are awaited.
const APPEND_WINDOW: usize = 1_000;

impl NatsBroker {
    async fn append_window(&self, events: &[Event], max_payload: usize) -> Result<(), BrokerError> {
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let body = event_body(event, max_payload).map_err(|e| unavailable(&e))?;
            let message = PublishMessage::build()
                .payload(body.into())
                .message_id(event.id());
            let ack = match self
                .js
                .send_publish(self.names.events(), message.clone())
                .await
            {
                Ok(ack) => ack,
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    self.events.stream().await?;
                    self.js
                        .send_publish(self.names.events(), message)
                        .await
                        .map_err(|e| unavailable(&e))?
                }
                Err(e) => return Err(unavailable(&e)),
            };
            acks.push(ack);
        }
        let acks = acks.into_iter().map(std::future::IntoFuture::into_future);
        for ack in futures::future::join_all(acks).await {
            ack.map_err(|e| match no_room(&e) {
                Some(reason) => BrokerError::Full {
                    reason,
                    detail: e.to_string(),
                },
                None => unavailable(&e),
            })?;
        }
        Ok(())
    }
}

impl NatsSettle {
    /// Deletes the object a processed message referred to, freeing its
    /// space now rather than when the bucket's `max_age` expires it. A
    /// failure only leaves it to expire.
    /// The object this message refers to, and its bucket.
    fn body_ref(&self) -> Option<(&str, &str)> {
        let headers = self.message.headers.as_ref()?;
        Some((
            headers.get(BODY_REF)?.as_str(),
            headers.get(BODY_BUCKET)?.as_str(),
        ))
    }

    async fn forget_body(&self) {
        let Some((name, bucket)) = self.body_ref() else {
            return;
        };
        let deleted = async {
            let store = self.js.get_object_store(bucket).await?;
            store.delete(name).await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(e) = deleted.await {
            tracing::debug!(error = %e, object = name, "a processed body is left to expire");
        }
    }
}

/// Settles a JetStream message.
struct NatsSettle {
    message: jetstream::Message,
    js: jetstream::Context,
    dead_letters: String,
    /// Where a dead letter's body goes when it is too large for a message.
    dead_bodies: Bucket,
    sequence: u64,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        let unavailable = |e: async_nats::Error| BrokerError::Unavailable(e.to_string());
        if self.body_ref().is_none() {
            return self.message.ack().await.map_err(unavailable);
        }
        // A reference is acknowledged with the server's reply (double
        // ack): only then is it certain the stream dropped it, and its
        // body may go too.
        self.message.double_ack().await.map_err(unavailable)?;
        self.forget_body().await;
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), BrokerError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn dead_letter(&self, body: &Bytes, reason: &str) -> Result<(), BrokerError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Dlq-Reason",
            reason
                .replace(['\r', '\n'], " ")
                .chars()
                .take(1000)
                .collect::<String>(),
        );
        headers.insert("Dlq-Stream-Sequence", self.sequence.to_string());
        headers.insert("Nats-Msg-Id", format!("dlq-{}", self.sequence));
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        // The full body, as for any payload; one too large for a message
        // is copied to a bucket kept as long as the dead letters (the
        // queue's bucket expires sooner) and the dead letter refers to it.
        publish_body(
            &self.js,
            self.dead_letters.clone(),
            headers,
            body,
            &self.dead_bodies,
        )
        .await
        .map_err(|e| unavailable(&e))?;
        // Term: never redelivered (the stream keeps it, Limits retention).
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| unavailable(&e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn several_servers_are_a_comma_separated_list() {
        assert_eq!(
            super::server_list("nats://a:4222, nats://b:4223,,"),
            ["nats://a:4222", "nats://b:4223"]
        );
        assert_eq!(super::server_list("nats://a:4222"), ["nats://a:4222"]);
    }

    use super::*;

    #[test]
    fn no_room_is_told_apart_from_an_outage() {
        // As async-nats words a JetStream error, also inside the object
        // store's text.
        let full = "failed chunk publish: insufficient resources (code 503, error code 10023)";
        assert_eq!(no_room_in_text(full), Some(JETSTREAM_FULL));
        assert_eq!(
            no_room_in_text("maximum bytes exceeded (code 503, error code 10077)"),
            Some(STREAM_FULL)
        );
        assert_eq!(
            no_room_in_text("timed out: didn't receive ack in time"),
            None
        );
        assert_eq!(
            no_room_in_text("no responders (code 503, error code 10100)"),
            None
        );
    }

    #[test]
    fn a_stream_as_the_server_describes_it_has_the_settings_asked_for() {
        let wanted = stream::Config {
            name: "S".to_owned(),
            subjects: vec!["s".to_owned()],
            max_age: Duration::from_secs(60),
            ..Default::default()
        };
        // The server answers unlimited as -1.
        let described = stream::Config {
            max_messages: -1,
            max_bytes: -1,
            ..wanted.clone()
        };
        assert!(same_settings(&described, &wanted));
        let older = stream::Config {
            max_age: Duration::from_secs(30),
            ..described.clone()
        };
        assert!(!same_settings(&older, &wanted));
        let limited = stream::Config {
            max_messages: 10,
            ..described
        };
        assert!(!same_settings(&limited, &wanted));
    }
}
