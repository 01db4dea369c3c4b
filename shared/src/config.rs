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

/// The webhook endpoint's settings (webhook-gateway, whatsapp-clone).
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Token Meta echoes in `GET /webhook` verification requests.
    #[arg(long, env = "WEBHOOK_VERIFY_TOKEN")]
    pub verify_token: Option<String>,
    /// App secret for `X-Hub-Signature-256`; unset (or empty) disables the check.
    #[arg(long, env = "WHATSAPP_APP_SECRET")]
    pub app_secret: Option<String>,
    /// Largest accepted body in bytes (Meta sends up to 3 MB).
    #[arg(long, env = "WEBHOOK_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    pub body_limit: usize,
}

/// The REST API's settings (api-gateway, whatsapp-clone).
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Origins allowed by CORS: `*`, or a comma-separated list.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// How long `POST /api/messages` waits for the processor to store the
    /// message before answering 202 instead of 201.
    #[arg(long, env = "SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    /// Events queued per Socket.IO connection; a client slower than that
    /// is caught up from the event log instead, so it misses nothing.
    #[arg(long, env = "SOCKET_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub socket_buffer: u32,
}

/// The processing loop's settings (processor, whatsapp-clone).
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Most payloads stored in one round of writes.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 1024)]
    pub batch_size: usize,
    /// Most bytes of payloads held and stored in one round of writes.
    #[arg(long, env = "BATCH_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub batch_bytes: usize,
    /// Deliveries of a payload the store keeps refusing before it goes to
    /// the dead letters (store outages are retried forever instead).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: i64,
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
