use std::path::PathBuf;

use api_gateway::MediaSettings;
use clap::{Args, Parser, Subcommand};
use wa_broker_nats::config::StreamSettings;
use wa_graph::GraphConfig;
use wa_service::config::{ApiConfig, LimitsConfig, LogConfig, WebhookConfig, WorkerConfig};

/// The WhatsApp Web clone backend in one process: webhook gateway,
/// processor, REST API and Socket.IO on one port, with an embedded store
/// and broker unless MONGODB_URI / NATS_URL name real ones.
#[derive(Debug, Parser)]
#[command(name = "whatsapp-clone", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub log: LogConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the backend (the default).
    Serve(Box<ServeConfig>),
    /// Post webhook files to a running backend, messages before statuses.
    Import(ImportArgs),
}

impl Default for Command {
    fn default() -> Self {
        Command::Serve(Box::new(ServeConfig::parse_from(["serve"])))
    }
}

#[derive(Debug, Clone, Parser)]
pub struct ServeConfig {
    /// Address to listen on (this machine only by default; another
    /// address needs API_TOKENS or ALLOW_ANONYMOUS=true).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port of everything: webhook, REST, Socket.IO, health, metrics (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Where the embedded store and queue keep their files.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Import these webhook files (a folder or files) once serving.
    #[arg(long, value_name = "DIR")]
    pub import: Option<PathBuf>,
    /// Use this NATS server instead of the in-process broker.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Prefix of NATS subjects and streams (with NATS_URL).
    #[arg(long, env = "NATS_NAMESPACE", default_value = "whatsapp")]
    pub nats_namespace: String,
    /// Replicas and limits of the streams (with NATS_URL).
    #[command(flatten)]
    pub streams: StreamSettings,
    /// Use this MongoDB instead of the embedded SQLite store.
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    #[command(flatten)]
    pub webhook: WebhookConfig,
    #[command(flatten)]
    pub api: ApiConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub graph: GraphConfig,
    #[command(flatten)]
    pub media: MediaSettings,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Webhook files, or folders of them (`*.json`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The webhook endpoint to post to.
    #[arg(long, default_value = "http://localhost:3000/webhook")]
    pub url: String,
    /// The Meta app secret the gateway checks: each post is then signed
    /// (X-Hub-Signature-256), as Meta signs its webhooks. Unset or empty:
    /// posts are unsigned.
    #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
}
