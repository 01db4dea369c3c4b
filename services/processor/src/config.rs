use clap::Parser;
use shared::config::{LogConfig, MongoConfig, NatsConfig};

/// Consumes webhooks from NATS JetStream, stores them in MongoDB and
/// publishes `newMessage` / `statusUpdate` events.
#[derive(Debug, Clone, Parser)]
#[command(name = "processor", version)]
pub struct Config {
    /// Address of the health and metrics endpoints.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port of the health and metrics endpoints (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3002)]
    pub port: u16,
    /// Most webhook payloads stored in one round of writes.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
    /// Seconds a payload may stay unacknowledged before it is redelivered
    /// (to this or another replica). Applies when the consumer is created.
    #[arg(long, env = "ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Deliveries of a payload the store keeps refusing before it goes to
    /// the dead-letter stream.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: i64,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub mongo: MongoConfig,
    #[command(flatten)]
    pub log: LogConfig,
}
