//! api-gateway: the REST API and Socket.IO endpoint frontends use.
//!
//! Reads come straight from MongoDB (conversation summaries, a
//! conversation's messages). Messages sent through the API are handed to
//! the processor over JetStream, so the processor stays the only writer of
//! messages. Every replica subscribes to the processor's events on core
//! NATS and pushes them to its own Socket.IO clients.

mod config;
mod openapi;
mod realtime;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use shared::broker::{self, Names};
use shared::processing::Processor;
use shared::store::Store;
use shared::store::mongo::MongoStore;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
pub use openapi::ApiDoc;
pub use realtime::PendingSends;

/// What every request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub processor: Processor,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub names: Names,
    pub pending_sends: PendingSends,
    pub send_timeout: Duration,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    state: AppState,
}

impl Application {
    /// Binds the port and prepares clients; NATS and MongoDB may come up later.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let mongo = MongoStore::connect(&config.mongo.mongodb_uri, "api-gateway").await?;
        let store: Arc<dyn Store> = Arc::new(mongo);
        let client = broker::connect(&config.nats.nats_url, "api-gateway").await?;
        let state = AppState {
            processor: Processor::new(store.clone()),
            store,
            js: broker::jetstream(client.clone(), Duration::from_secs(5)),
            client,
            names: Names::new(&config.nats.nats_namespace),
            pending_sends: PendingSends::default(),
            send_timeout: Duration::from_millis(config.send_timeout_ms),
        };
        let (socket_layer, io) = realtime::socket_io();
        let router = routes::router(state.clone())
            .layer(socket_layer)
            .layer(cors(&config.cors_origins));
        let router = shared::http::with_request_tracing(router);
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            router,
            io,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown`; Socket.IO clients are then disconnected with
    /// "transport close", so they reconnect to another replica.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let fan_out = tokio::spawn(realtime::fan_out(
            self.state.client.clone(),
            self.state.names.events(),
            self.io.clone(),
            self.state.pending_sends.clone(),
            shutdown.clone(),
        ));
        tracing::info!(port = self.port(), "api-gateway listening");
        let io = self.io.clone();
        let stop = shutdown.clone();
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                stop.cancelled().await;
                io.close().await;
            })
            .await?;
        fan_out.await.ok();
        Ok(())
    }
}

fn cors(origins: &str) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any);
    if origins.trim() == "*" {
        return layer.allow_origin(tower_http::cors::Any);
    }
    let list: Vec<_> = origins
        .split(',')
        .filter_map(|o| o.trim().parse().ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(list))
}
