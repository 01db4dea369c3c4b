//! webhook-gateway: receives WhatsApp webhooks, checks them, and hands them
//! to the queue (NATS JetStream). It answers 200 only once the queue has
//! acknowledged the body, so an accepted webhook is durable.

mod budget;
mod config;
mod routes;
mod signature;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::{Queue, retry_until};
use wa_broker_nats::NatsBroker;
use wa_service::config::WebhookConfig;
use wa_service::http::{ops_routes, readiness};

pub use budget::BodyBudget;
pub use config::Config;
pub use routes::webhook_routes;

/// What the webhook routes need.
#[derive(Clone)]
pub struct WebhookState {
    pub queue: Arc<dyn Queue>,
    pub verify_token: Option<Arc<str>>,
    pub app_secret: Option<Arc<[u8]>>,
    pub body_limit: usize,
    /// Bytes of bodies in memory at once.
    pub budget: BodyBudget,
}

impl WebhookState {
    /// Warns about what is switched off.
    /// Empty strings count as unset (an empty secret would refuse every webhook).
    pub fn new(queue: Arc<dyn Queue>, config: &WebhookConfig) -> Self {
        let verify_token = config.verify_token.clone().filter(|t| !t.is_empty());
        let app_secret = config.secret().map(str::to_owned);
        if verify_token.is_none() {
            tracing::warn!(
                "WEBHOOK_VERIFY_TOKEN is not set: webhook verification requests will be refused"
            );
        }
        Self {
            queue,
            verify_token: verify_token.map(Into::into),
            app_secret: app_secret.map(|s| s.into_bytes().into()),
            body_limit: config.body_limit,
            budget: BodyBudget::new(
                wa_service::config::LimitsConfig::default().body_budget_bytes,
                config.body_limit,
            ),
        }
    }

    /// Holds at most `bytes` of webhook bodies at once (`BODY_BUDGET_BYTES`).
    pub fn with_body_budget(mut self, bytes: usize) -> Self {
        self.budget = BodyBudget::new(bytes, self.body_limit);
        self
    }
}

/// A gateway bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    broker: Arc<NatsBroker>,
    header_read_timeout: Duration,
}

impl Application {
    /// Binds the port (0 picks a free one) and connects to NATS. NATS need
    /// not be up yet: the gateway then answers 503 until it is.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.webhook.check_exposure(&config.host)?;
        let deadline = Duration::from_millis(config.publish_timeout_ms);
        // An ack takes milliseconds (p99 under 0.5 s at R3 under load): a
        // short attempt leaves room for several within the deadline while
        // a new leader is elected.
        let attempt = (deadline / 4).clamp(Duration::from_millis(500), Duration::from_secs(2));
        let broker = Arc::new(
            NatsBroker::connect(
                &config.nats.nats_url,
                &config.nats.nats_namespace,
                "webhook-gateway",
                attempt,
            )
            .await?
            .with_streams(config.nats.streams.clone())
            .with_publish_retry(deadline),
        );
        let queue: Arc<dyn Queue> = broker.clone();
        let ready = readiness(queue, None);
        let webhooks = WebhookState::new(broker.clone(), &config.webhook)
            .with_body_budget(config.limits.body_budget_bytes);
        let router = webhook_routes(webhooks).merge(ops_routes(ready)).layer(
            axum::middleware::from_fn_with_state(
                config.metrics.tokens()?,
                wa_service::access::guard_metrics,
            ),
        );
        let router = wa_service::http::service(router, &config.limits);
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            router,
            broker,
            header_read_timeout: config.limits.header_read_timeout(),
        })
    }

    pub fn port(&self) -> u16 {
        wa_service::http::local_port(&self.listener)
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests
    /// finish (their publishes complete or fail) before returning.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Create the streams as soon as NATS answers (publishing also
        // recreates them if NATS lost them).
        let (broker, cancel) = (self.broker.clone(), shutdown.clone());
        tokio::spawn(async move {
            retry_until("creating JetStream streams", &cancel, || {
                broker.ensure_streams()
            })
            .await;
        });
        tracing::info!(port = self.port(), "webhook-gateway listening");
        wa_service::server::serve(
            self.listener,
            self.router,
            self.header_read_timeout,
            shutdown.cancelled_owned(),
        )
        .await?;
        self.broker.client().flush().await.ok();
        Ok(())
    }
}
