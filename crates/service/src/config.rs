//! Configuration pieces shared by the binaries. Each binary's own `Config`
//! flattens the ones it needs; values come from flags, then the
//! environment (a `.env` file is read first), then these defaults.

use clap::{Args, ValueEnum};

/// The webhook endpoint's settings (webhook-gateway, whatsapp-clone).
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Token Meta echoes in `GET /webhook` verification requests.
    #[arg(long, env = "WEBHOOK_VERIFY_TOKEN", hide_env_values = true)]
    pub verify_token: Option<String>,
    /// App secret for `X-Hub-Signature-256`; unset (or empty) disables the check.
    #[arg(long, env = "WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,
    /// Accept unsigned webhooks (no WHATSAPP_APP_SECRET) on a non-loopback address.
    #[arg(long, env = "ALLOW_UNSIGNED_WEBHOOKS")]
    pub allow_unsigned_webhooks: bool,
    /// Largest accepted body in bytes (Meta sends up to 3 MB).
    #[arg(long, env = "WEBHOOK_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    pub body_limit: usize,
}

impl WebhookConfig {
    /// The configured app secret, if any (empty counts as unset).
    pub fn secret(&self) -> Option<&str> {
        self.app_secret.as_deref().filter(|s| !s.is_empty())
    }

    /// Refuses to take unsigned webhooks on a public address by accident.
    pub fn check_exposure(&self, host: &str) -> anyhow::Result<()> {
        crate::access::check_exposure(
            host,
            self.secret().is_some(),
            self.allow_unsigned_webhooks,
            "the webhook (unsigned: no WHATSAPP_APP_SECRET)",
            "ALLOW_UNSIGNED_WEBHOOKS",
        )
        .map_err(anyhow::Error::msg)
    }
}

/// The REST API's settings (api-gateway, whatsapp-clone).
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Origins allowed by CORS: `*`, or a comma-separated list.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Events queued per Socket.IO connection; a client slower than that
    /// is caught up from the event log instead, so it misses nothing.
    #[arg(long, env = "SOCKET_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub socket_buffer: u32,
    /// Bearer tokens for the REST API, Socket.IO and /metrics, comma-separated
    /// (each at least 16 characters; `openssl rand -hex 32` makes one).
    #[arg(long, env = "API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// A file of bearer tokens, one per line (added to API_TOKENS).
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<std::path::PathBuf>,
    /// Serve the API without tokens on a non-loopback address.
    #[arg(long, env = "ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// REST requests per second per client IP (twice as many at once); 0: no limit.
    #[arg(long, env = "RATE_LIMIT_PER_IP", default_value_t = 50)]
    pub rate_limit_per_ip: u32,
    /// Limit by the last X-Forwarded-For address (behind a proxy that sets it).
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Conversations one Socket.IO connection may subscribe to.
    #[arg(long, env = "MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    pub max_subscriptions: usize,
}

impl ApiConfig {
    /// The bearer tokens, after refusing to serve anyone on a public
    /// address by accident.
    pub fn tokens(&self, host: &str) -> anyhow::Result<crate::access::Tokens> {
        let tokens = crate::access::Tokens::load(
            self.api_tokens.as_deref(),
            self.api_tokens_file.as_deref(),
        )?;
        crate::access::check_exposure(
            host,
            !tokens.is_open(),
            self.allow_anonymous,
            "the API (no API_TOKENS)",
            "ALLOW_ANONYMOUS",
        )
        .map_err(anyhow::Error::msg)?;
        Ok(tokens)
    }

    pub fn rate_limit(&self) -> crate::access::RateLimit {
        crate::access::RateLimit {
            per_second: self.rate_limit_per_ip,
            burst: self.rate_limit_per_ip.saturating_mul(2),
            trust_forwarded: self.trust_forwarded_for,
        }
    }
}

/// Bounds on the HTTP work of every service.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Requests worked on at once; past that, 503 at once.
    #[arg(long, env = "MAX_REQUESTS_IN_FLIGHT", default_value_t = 1024)]
    pub max_requests_in_flight: usize,
    /// Longest a request may take, body included (408 past it).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Longest a client may take to send a request's headers, and longest
    /// an idle keep-alive connection stays open.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Bytes of webhook bodies held at once (being received, checked and
    /// stored); past it a webhook gets 503 with Retry-After (Meta retries)
    /// instead of the process running out of memory. A body without a
    /// Content-Length counts as WEBHOOK_BODY_LIMIT. The default suits a
    /// 512 MB container (see BENCHMARKS.md for memory per body byte).
    #[arg(long, env = "BODY_BUDGET_BYTES", default_value_t = DEFAULT_BODY_BUDGET)]
    pub body_budget_bytes: usize,
    /// Connections open at once (WebSockets included); at the cap the
    /// oldest idle one is closed for a new one, and WebSockets may not
    /// take the last eighth (health checks and webhooks keep room). 0: the
    /// file descriptor limit less 64.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Connections open at once from one client IP; past it new ones are
    /// closed at once. 0: no limit of its own (behind a proxy every client
    /// has the proxy's address).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
}

/// 48 MiB of bodies: sixteen of Meta's largest (3 MB) at once.
const DEFAULT_BODY_BUDGET: usize = 48 * 1024 * 1024;

/// The flags' defaults (for configurations built in code, e.g. tests).
impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_requests_in_flight: 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            body_budget_bytes: DEFAULT_BODY_BUDGET,
            max_connections: 0,
            max_connections_per_ip: 0,
        }
    }
}

impl LimitsConfig {
    pub fn header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_read_timeout_secs.max(1))
    }
}

/// The processing loop's settings (processor, whatsapp-clone).
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Most payloads stored in one round of writes.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 1024)]
    pub batch_size: usize,
    /// Most bytes of payloads held and stored in one round of writes (a
    /// larger payload goes alone). Memory of a batch is a multiple of it
    /// (about 20 times for webhooks of many messages: BENCHMARKS.md).
    #[arg(long, env = "BATCH_BYTES", default_value_t = 4 * 1024 * 1024)]
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

/// Crates that log secrets at debug (socketioxide and engineioxide the
/// Socket.IO handshake with its token, async-nats the connect line with
/// the password) stay at `info` unless `RUST_LOG` names them itself.
fn quiet_secrets(directives: &str) -> String {
    let mut directives = directives.trim().to_owned();
    for target in ["socketioxide", "engineioxide", "async_nats"] {
        if !directives.contains(target) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(target);
            directives.push_str("=info");
        }
    }
    directives
}

/// Sets up logging once per process (tests start several services).
pub fn init_tracing(config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter =
        EnvFilter::try_new(quiet_secrets(&wanted)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _already_set = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // Every binary starts here: before it opens sockets, as soon as it can
    // say so in the log.
    crate::server::raise_fd_limit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Limits {
        #[command(flatten)]
        limits: LimitsConfig,
    }

    #[test]
    fn the_default_limits_are_the_flags_defaults() {
        let parsed = Limits::parse_from(["test"]).limits;
        let default = LimitsConfig::default();
        assert_eq!(
            parsed.max_requests_in_flight,
            default.max_requests_in_flight
        );
        assert_eq!(parsed.request_timeout_secs, default.request_timeout_secs);
        assert_eq!(
            parsed.header_read_timeout_secs,
            default.header_read_timeout_secs
        );
        assert_eq!(parsed.body_budget_bytes, default.body_budget_bytes);
        assert_eq!(parsed.max_connections, default.max_connections);
        assert_eq!(
            parsed.max_connections_per_ip,
            default.max_connections_per_ip
        );
    }

    #[test]
    fn crates_that_log_secrets_at_debug_stay_at_info_unless_named() {
        let quiet = quiet_secrets("debug");
        assert_eq!(
            quiet,
            "debug,socketioxide=info,engineioxide=info,async_nats=info"
        );
        assert_eq!(
            quiet_secrets("info,async_nats=trace"),
            "info,async_nats=trace,socketioxide=info,engineioxide=info"
        );
    }
}
