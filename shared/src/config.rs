//! Configuration pieces shared by the binaries. Each binary's own `Config`
//! flattens the ones it needs; values come from flags, then the
//! environment (a `.env` file is read first), then these defaults.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS server with JetStream enabled.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject and stream name, so deployments can share a server.
    #[arg(long, env = "NATS_NAMESPACE", default_value = "whatsapp")]
    pub nats_namespace: String,
}

#[derive(Debug, Clone, Args)]
pub struct MongoConfig {
    /// MongoDB connection string; its path names the database.
    #[arg(
        long,
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/whatsapp_clone"
    )]
    pub mongodb_uri: String,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log collectors. Levels come from `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// Reads `.env` if present, so every binary honours it the same way.
pub fn load_dotenv() {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("warning: .env could not be read: {e}");
    }
}

/// Sets up logging once per process (tests start several services).
pub fn init_tracing(config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _already_set = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
