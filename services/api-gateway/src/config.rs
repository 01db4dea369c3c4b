use clap::Parser;
use shared::config::{LogConfig, MongoConfig, NatsConfig};

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
    /// Origins allowed by CORS: `*`, or a comma-separated list.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// How long `POST /api/messages` waits for the processor to store the
    /// message before answering 202 instead of 201.
    #[arg(long, env = "SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub mongo: MongoConfig,
    #[command(flatten)]
    pub log: LogConfig,
}
