//! The broker on NATS: JetStream for the queue, core NATS for events.
//!
//! Webhook bodies, and messages sent through the API, travel through the
//! `<NS>_WEBHOOKS` stream (Limits retention, so they stay replayable and
//! other consumers can be added);
//! payloads that can never be processed go to `<NS>_DLQ`; the event log is
//! the `<NS>_EVENTS` stream (subject `<ns>.events`): its sequence numbers
//! are the events' `seq`, the same for every api-gateway reading it.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{
    BatchLimits, BrokerError, Delivery, Enqueued, EventBus, Ingest, Queue, ReadError, Settle,
    payload_id,
};
use crate::domain::{Event, Sequenced};

/// How long raw webhook bodies stay in the stream (Meta retries for 7 days).
const WEBHOOK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
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

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix())
    }

    pub fn webhook_stream(&self) -> String {
        format!("{}_WEBHOOKS", self.stream_prefix())
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DLQ", self.stream_prefix())
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
pub async fn connect(url: &str, name: &str) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(3))
        .event_callback(|event| async move { tracing::info!(%event, "nats") })
        .connect(url)
        .await
}

/// A JetStream context whose requests (and publish acks) give up after
/// `timeout`, so callers can answer "try again later" quickly.
pub fn jetstream(client: Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// Creates the streams, or updates them to this configuration; idempotent.
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
) -> anyhow::Result<stream::Stream> {
    js.create_or_update_stream(stream::Config {
        name: names.dead_letter_stream(),
        subjects: vec![names.dead_letters()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: DEAD_LETTER_RETENTION,
        max_messages: DEAD_LETTER_MESSAGES,
        ..Default::default()
    })
    .await?;
    js.create_or_update_stream(stream::Config {
        name: names.events_stream(),
        subjects: vec![names.events()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: super::EVENT_RETENTION,
        // An event relayed again (after a crash) is kept once.
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await?;
    js.create_or_update_stream(stream::Config {
        name: names.webhook_stream(),
        subjects: vec![names.ingest()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: WEBHOOK_RETENTION,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await?;
    Ok(js.get_stream(names.webhook_stream()).await?)
}

/// The durable pull consumer shared by every processor replica: each
/// message goes to one replica, and is redelivered if not acked in time.
pub async fn processor_consumer(
    stream: &stream::Stream,
    names: &Names,
    ack_wait: Duration,
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
    pulling: tokio::sync::Mutex<Option<consumer::pull::Stream>>,
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
        Ok(Self {
            js: jetstream(client.clone(), timeout),
            client,
            names: Names::new(namespace),
            ack_wait: Duration::from_secs(30),
            pulling: tokio::sync::Mutex::new(None),
        })
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
        ensure_streams(&self.js, &self.names).await.map(drop)
    }

    async fn publish(
        &self,
        subject: String,
        id: &str,
        body: Bytes,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let message = PublishMessage::build().payload(body).message_id(id);
        self.js.send_publish(subject, message).await?.await
    }

    fn delivery(&self, message: jetstream::Message) -> Delivery {
        let kind = if message.subject.as_str() == self.names.sends() {
            Ingest::Send
        } else {
            Ingest::Webhook
        };
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| payload_id(&message.payload));
        let info = message.info().ok();
        let enqueued_at = info
            .as_ref()
            .and_then(|i| i64::try_from(i.published.unix_timestamp_nanos()).ok())
            .map_or_else(Utc::now, DateTime::from_timestamp_nanos);
        let attempt = info.as_ref().map_or(1, |i| i.delivered);
        let sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
        Delivery {
            kind,
            id,
            body: message.payload.clone(),
            enqueued_at,
            attempt,
            handle: Box::new(NatsSettle {
                message,
                js: self.js.clone(),
                dead_letters: self.names.dead_letters(),
                sequence,
            }),
        }
    }
}

#[async_trait]
impl Queue for NatsBroker {
    async fn enqueue(&self, kind: Ingest, id: &str, body: Bytes) -> Result<Enqueued, BrokerError> {
        let subject = match kind {
            Ingest::Webhook => self.names.webhooks(),
            Ingest::Send => self.names.sends(),
        };
        let result = match self.publish(subject.clone(), id, body.clone()).await {
            // NATS lost its streams (e.g. restarted without storage): recreate them once.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.ensure_streams()
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                self.publish(subject, id, body).await
            }
            other => other,
        };
        match result {
            Ok(ack) => Ok(Enqueued {
                duplicate: ack.duplicate,
            }),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(BrokerError::TooLarge(e.to_string()))
            }
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }
    }

    async fn next_batch(&self, limits: BatchLimits) -> Result<Vec<Delivery>, BrokerError> {
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        let mut pulling = self.pulling.lock().await;
        let messages = match pulling.as_mut() {
            Some(messages) => messages,
            None => {
                let stream = ensure_streams(&self.js, &self.names)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let consumer = processor_consumer(&stream, &self.names, self.ack_wait)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(limits.count)
                    // Bounds what is fetched ahead, not only the count.
                    .max_bytes_per_batch(limits.bytes)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(|e| unavailable(&e))?;
                pulling.insert(messages)
            }
        };
        let Some(first) = messages.next().await else {
            *pulling = None;
            return Err(BrokerError::Unavailable(
                "the pull subscription ended".to_owned(),
            ));
        };
        // Then whatever else has arrived, up to the limits, in one go.
        // Unconstrained: tokio's per-task budget would otherwise make the
        // channel look empty after ~128 messages.
        let mut batch = vec![first];
        let mut bytes = 0;
        tokio::task::unconstrained(async {
            while batch.len() < limits.count && bytes < limits.bytes {
                match messages.next().now_or_never() {
                    Some(Some(message)) => {
                        bytes += message.as_ref().map_or(0, |m| m.payload.len());
                        batch.push(message);
                    }
                    _ => break,
                }
            }
        })
        .await;
        Ok(batch
            .into_iter()
            .filter_map(|m| m.map_err(|e| tracing::warn!(error = %e, "pull error")).ok())
            .map(|m| self.delivery(m))
            .collect())
    }

    async fn ready(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(format!("NATS is {other}")),
        }
    }

    fn redelivered_after(&self) -> Duration {
        self.ack_wait
    }
}

impl NatsBroker {
    /// The event log's stream, created if NATS lost it.
    async fn events_stream(&self) -> Result<stream::Stream, BrokerError> {
        match self.js.get_stream(self.names.events_stream()).await {
            Ok(stream) => Ok(stream),
            Err(_) => {
                ensure_streams(&self.js, &self.names)
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                self.js
                    .get_stream(self.names.events_stream())
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))
            }
        }
    }

    /// The log's events from `first` on, as they come.
    async fn events_from(
        &self,
        stream: &stream::Stream,
        first: u64,
    ) -> Result<BoxStream<'static, Sequenced>, BrokerError> {
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        let messages = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.names.events(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?
            .messages()
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(messages
            .filter_map(|message| async move {
                let message = message
                    .map_err(|e| tracing::warn!(error = %e, "event log read error"))
                    .ok()?;
                let seq = message.info().ok()?.stream_sequence;
                let event = serde_json::from_slice(&message.payload)
                    .map_err(|e| tracing::warn!(error = %e, seq, "ignoring an event that is not understood"))
                    .ok()?;
                Some(Sequenced { seq, event })
            })
            .boxed())
    }
}

#[async_trait]
impl EventBus for NatsBroker {
    async fn append(&self, events: &[Event]) -> Result<(), BrokerError> {
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        // Sent in order on one connection, acknowledged together.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_vec(event).map_err(|e| unavailable(&e))?;
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
                    self.events_stream().await?;
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
            ack.map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    async fn live(&self) -> Result<(u64, BoxStream<'static, Sequenced>), BrokerError> {
        let mut stream = self.events_stream().await?;
        let head = stream
            .info()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?
            .state
            .last_sequence;
        Ok((head, self.events_from(&stream, head + 1).await?))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError> {
        let mut stream = self.events_stream().await?;
        let state = stream
            .info()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?
            .state
            .clone();
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        if after + 1 < first {
            return Err(ReadError::Gone { after, first });
        }
        if after >= state.last_sequence || limit == 0 {
            return Ok(Vec::new());
        }
        let last = state.last_sequence;
        let wanted = usize::try_from(last - after)
            .unwrap_or(usize::MAX)
            .min(limit);
        let events = self.events_from(&stream, after + 1).await?;
        let read: Vec<Sequenced> = tokio::time::timeout(
            READ_TIMEOUT,
            events
                .take_while(move |e| futures::future::ready(e.seq <= last))
                .take(wanted)
                .collect(),
        )
        .await
        .map_err(|_| BrokerError::Unavailable("the event log did not answer in time".into()))?;
        Ok(read)
    }
}

/// Settles a JetStream message.
struct NatsSettle {
    message: jetstream::Message,
    js: jetstream::Context,
    dead_letters: String,
    sequence: u64,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.message
            .ack()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
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
        self.js
            .publish_with_headers(self.dead_letters.clone(), headers, body.clone())
            .await
            .map_err(|e| unavailable(&e))?
            .await
            .map_err(|e| unavailable(&e))?;
        // Term: never redelivered (the stream keeps it, Limits retention).
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| unavailable(&e))
    }
}
