use clap::Parser;
use wa_broker_nats::config::NatsConfig;
use wa_graph::GraphConfig;
use wa_service::config::{ApiConfig, LimitsConfig, LogConfig};
use wa_store_mongo::MongoConfig;

use crate::media::MediaSettings;

/// REST API and Socket.IO for WhatsApp Web frontends.
#[derive(Debug, Clone, Parser)]
#[command(name = "api-gateway", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port of the REST API and Socket.IO (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    #[command(flatten)]
    pub api: ApiConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub graph: GraphConfig,
    #[command(flatten)]
    pub media: MediaSettings,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub mongo: MongoConfig,
    #[command(flatten)]
    pub log: LogConfig,
}
