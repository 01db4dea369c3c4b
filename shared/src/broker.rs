//! NATS: subject and stream names, connecting, and the JetStream streams.
//!
//! Webhook bodies, and messages sent through the API, travel through the
//! `<NS>_WEBHOOKS` stream (Limits retention, so they stay replayable and
//! other consumers can be added);
//! payloads that can never be processed go to `<NS>_DLQ`; events for the
//! api-gateways are plain core-NATS messages on `<ns>.events`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectOptions};

/// How long raw webhook bodies stay in the stream (Meta retries for 7 days).
const WEBHOOK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Same body published again within this window is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
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

    /// Subject of the processor's events (core NATS, not persisted).
    pub fn events(&self) -> String {
        format!("{}.events", self.namespace)
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

/// Retries `attempt` with capped exponential backoff until it succeeds or
/// `cancel` fires; used at startup while NATS or MongoDB come up.
pub async fn retry_until<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    cancel: &tokio_util::sync::CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => tracing::warn!(error = %e, "{what} failed; retrying in {delay:?}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
