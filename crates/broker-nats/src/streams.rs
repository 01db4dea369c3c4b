//! Names of subjects and streams, the connection, and the streams and
//! consumer every service expects, created or brought to their settings.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectOptions};

use crate::config::StreamSettings;

use super::*;

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
    pub(crate) fn stream_prefix(&self) -> String {
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
pub(crate) fn server_list(url: &str) -> Vec<&str> {
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
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    mut wanted: stream::Config,
) -> anyhow::Result<()> {
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
pub(crate) fn same_settings(current: &stream::Config, wanted: &stream::Config) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_servers_are_a_comma_separated_list() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,,"),
            ["nats://a:4222", "nats://b:4223"]
        );
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
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
