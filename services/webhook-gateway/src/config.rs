use clap::Parser;
use wa_broker_nats::config::NatsConfig;
use wa_service::config::{LimitsConfig, LogConfig, WebhookConfig};

/// Receives WhatsApp webhooks and publishes them to NATS JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "webhook-gateway", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3001)]
    pub port: u16,
    /// How long a webhook may wait to be stored before answering 503:
    /// failed publishes (a NATS leader election, a server going away) are
    /// tried again within it, each attempt waiting up to 2 s.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 10_000)]
    pub publish_timeout_ms: u64,
    #[command(flatten)]
    pub webhook: WebhookConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub metrics: wa_service::access::MetricsAccess,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub log: LogConfig,
}
