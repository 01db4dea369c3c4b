//! webhook-gateway: receives WhatsApp webhooks, checks them, and publishes
//! them to NATS JetStream. It answers 200 only once JetStream has
//! acknowledged the body, so an accepted webhook is durable.

mod config;
mod routes;
mod signature;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use shared::broker::{self, Names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// What every request handler needs.
#[derive(Clone)]
pub(crate) struct AppState {
    pub js: async_nats::jetstream::Context,
    pub client: async_nats::Client,
    pub names: Names,
    pub verify_token: Option<Arc<str>>,
    pub app_secret: Option<Arc<[u8]>>,
}

/// A gateway bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Binds the port (0 picks a free one) and connects to NATS. NATS need
    /// not be up yet: the gateway then answers 503 until it is.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.app_secret.is_none() {
            tracing::warn!("WHATSAPP_APP_SECRET is not set: webhook signatures are NOT checked");
        }
        if config.verify_token.is_none() {
            tracing::warn!(
                "WEBHOOK_VERIFY_TOKEN is not set: webhook verification requests will be refused"
            );
        }
        let client = broker::connect(&config.nats.nats_url, "webhook-gateway").await?;
        let state = AppState {
            js: broker::jetstream(
                client.clone(),
                Duration::from_millis(config.publish_timeout_ms),
            ),
            client,
            names: Names::new(&config.nats.nats_namespace),
            verify_token: config.verify_token.map(Into::into),
            app_secret: config.app_secret.map(|s| s.into_bytes().into()),
        };
        let router = routes::router(state.clone()).layer(DefaultBodyLimit::max(config.body_limit));
        let router = shared::http::with_request_tracing(router);
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests
    /// finish (their publishes complete or fail) before returning.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Create the streams as soon as NATS answers; publishing also
        // recreates them if NATS lost them.
        let (js, names, cancel) = (
            self.state.js.clone(),
            self.state.names.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            broker::retry_until("creating JetStream streams", &cancel, || {
                broker::ensure_streams(&js, &names)
            })
            .await;
        });
        tracing::info!(port = self.port(), "webhook-gateway listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        self.state.client.flush().await.ok();
        Ok(())
    }
}
