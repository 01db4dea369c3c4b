//! The NATS connection and the JetStream streams' settings, as flags and
//! environment variables (each binary's `Config` flattens them).

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS server with JetStream enabled.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// Prefix of every subject and stream name, so deployments can share a server.
    #[arg(long, env = "NATS_NAMESPACE", default_value = "whatsapp")]
    pub nats_namespace: String,
    #[command(flatten)]
    pub streams: StreamSettings,
}

/// How the JetStream streams the services create are kept: copies on a
/// cluster, and how much each holds. Every service that creates streams
/// must be given the same settings.
#[derive(Debug, Clone, Args)]
pub struct StreamSettings {
    /// Copies of every stream, consumer and body bucket on a NATS cluster
    /// (1, 3 or 5, at most the cluster's size). Existing streams are moved
    /// to it where NATS allows; where it does not, the service says so at
    /// startup.
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// Webhooks are kept this long, processed or not.
    #[arg(long, env = "WEBHOOK_STREAM_MAX_AGE_SECS", default_value_t = WEBHOOK_MAX_AGE_SECS)]
    pub webhook_stream_max_age_secs: u64,
    /// Bytes the webhook stream holds at most (-1: as much as NATS's
    /// storage has; NATS reserves a limit's bytes up front); when full, new
    /// webhooks are refused (503: Meta retries them) until old ones age out.
    #[arg(long, env = "WEBHOOK_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub webhook_stream_max_bytes: i64,
    /// Events are kept this long for clients that resume.
    #[arg(long, env = "EVENT_STREAM_MAX_AGE_SECS", default_value_t = EVENT_MAX_AGE_SECS)]
    pub event_stream_max_age_secs: u64,
    /// Bytes of events kept at most (-1: no limit but their age); when
    /// full, the oldest are dropped (a client resuming from before them is
    /// told to resync).
    #[arg(long, env = "EVENT_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub event_stream_max_bytes: i64,
    /// Bytes of dead letters kept at most (-1: no limit but 30 days and
    /// 100,000 of them); when full, payloads are not dead-lettered but
    /// retried until there is room.
    #[arg(long, env = "DEAD_LETTER_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub dead_letter_stream_max_bytes: i64,
}

/// The flags' defaults.
impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            stream_replicas: 1,
            webhook_stream_max_age_secs: WEBHOOK_MAX_AGE_SECS,
            webhook_stream_max_bytes: -1,
            event_stream_max_age_secs: EVENT_MAX_AGE_SECS,
            event_stream_max_bytes: -1,
            dead_letter_stream_max_bytes: -1,
        }
    }
}

/// Meta retries a webhook for up to 7 days.
const WEBHOOK_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
const EVENT_MAX_AGE_SECS: u64 = wa_broker::EVENT_RETENTION.as_secs();

impl StreamSettings {
    /// How long webhooks (and their bodies) are kept: 10 minutes at least.
    pub fn webhook_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.webhook_stream_max_age_secs.max(600))
    }

    /// How long events are kept: a minute at least.
    pub fn event_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.event_stream_max_age_secs.max(60))
    }

    pub fn replicas(&self) -> usize {
        usize::from(self.stream_replicas.max(1))
    }
}
