use clap::Parser;
use wa_broker_nats::config::NatsConfig;
use wa_graph::GraphConfig;
use wa_service::access::MetricsAccess;
use wa_service::config::{LimitsConfig, LogConfig, WorkerConfig};
use wa_store_mongo::MongoConfig;

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
    /// Seconds a payload may go unacknowledged, its processor silent (a
    /// working processor extends it), before it is redelivered to this or
    /// another replica. Applies when the consumer is created.
    #[arg(long, env = "ACK_WAIT_SECS", default_value_t = 10)]
    pub ack_wait_secs: u64,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub metrics: MetricsAccess,
    #[command(flatten)]
    pub graph: GraphConfig,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub mongo: MongoConfig,
    #[command(flatten)]
    pub log: LogConfig,
}
