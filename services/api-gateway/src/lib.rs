//! api-gateway: the REST API and Socket.IO endpoint frontends use.
//!
//! Reads come straight from MongoDB (conversation summaries, a
//! conversation's messages). Messages sent through the API are handed to
//! the processor over JetStream, so the processor stays the only writer of
//! new messages; marking a conversation read is a guarded status update
//! done here, with the same processing rules (its events relayed to the
//! event log like the processor's). Every replica reads the event log
//! (JetStream) and pushes it to its own Socket.IO clients, who can resume
//! from the last `seq` they saw.

mod config;
mod openapi;
mod realtime;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use shared::broker::nats::NatsBroker;
use shared::broker::{EventBus, Queue};
use shared::config::ApiConfig;
use shared::http::{ops_routes, readiness};
use shared::processing::Processor;
use shared::relay::Relay;
use shared::store::Store;
use shared::store::mongo::MongoStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
pub use openapi::ApiDoc;
pub use realtime::{PendingSends, Realtime};
pub use socketioxide::SocketIo;

/// What every request handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub processor: Processor,
    pub queue: Arc<dyn Queue>,
    /// The event log, and the way events get there from the outbox.
    pub relay: Relay,
    pub realtime: Realtime,
    pub pending_sends: PendingSends,
    pub send_timeout: Duration,
}

impl ApiState {
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        events: Arc<dyn EventBus>,
        send_timeout: Duration,
    ) -> Self {
        Self {
            processor: Processor::new(store.clone()),
            relay: Relay::new(store.clone(), events.clone()),
            realtime: Realtime::new(events),
            store,
            queue,
            pending_sends: PendingSends::default(),
            send_timeout,
        }
    }
}

/// The whole HTTP surface of the API: REST routes plus `others` (health,
/// metrics; the webhook routes in the all-in-one binary), finished with
/// the shared layers, Socket.IO on the same port, and CORS. Also returns
/// the handle to emit to this process's sockets.
pub fn api_router(state: ApiState, others: Router, config: &ApiConfig) -> (Router, SocketIo) {
    let (socket_layer, io) = realtime::socket_io(
        state.realtime.clone(),
        usize::try_from(config.socket_buffer).unwrap_or(usize::MAX),
    );
    let inner = shared::http::service(routes::router(state).merge(others));
    // Socket.IO wraps the whole router as one service: each `layer()` call
    // makes its own engine (sessions), and `Router::layer` would call it
    // once per route, so polling requests would land on different engines.
    let router = Router::new()
        .fallback_service(tower::Layer::layer(&socket_layer, inner))
        .layer(tower::util::MapRequestLayer::new(
            realtime::detach_from_read_buffer::<axum::body::Body>,
        ))
        .layer(cors(&config.cors_origins));
    (router, io)
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    state: ApiState,
    broker: Arc<NatsBroker>,
}

impl Application {
    /// Binds the port and prepares clients; NATS and MongoDB may come up later.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store: Arc<dyn Store> =
            Arc::new(MongoStore::connect(&config.mongo.mongodb_uri, "api-gateway").await?);
        let broker = Arc::new(
            NatsBroker::connect(
                &config.nats.nats_url,
                &config.nats.nats_namespace,
                "api-gateway",
                Duration::from_secs(5),
            )
            .await?,
        );
        let state = ApiState::new(
            store.clone(),
            broker.clone(),
            broker.clone(),
            Duration::from_millis(config.api.send_timeout_ms),
        );
        let queue: Arc<dyn Queue> = broker.clone();
        let ready = readiness(queue, Some(store));
        let (router, io) = api_router(state.clone(), ops_routes(ready), &config.api);
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            router,
            io,
            state,
            broker,
        })
    }

    pub fn port(&self) -> u16 {
        shared::http::local_port(&self.listener)
    }

    /// Serves until `shutdown`; Socket.IO clients are then disconnected with
    /// "transport close", so they reconnect to another replica.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "api-gateway listening");
        serve(self.listener, self.router, self.io, &self.state, shutdown).await?;
        self.broker.client().flush().await.ok();
        Ok(())
    }
}

/// Serves the API (from [`api_router`]) and fans events out to this
/// process's sockets until `shutdown`; then disconnects the sockets with
/// "transport close", so clients reconnect (to another replica).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    state: &ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let fan_out = tokio::spawn(realtime::fan_out(
        state.realtime.clone(),
        io.clone(),
        state.pending_sends.clone(),
        shutdown.clone(),
    ));
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            io.close().await;
        })
        .await?;
    fan_out.await.ok();
    Ok(())
}

fn cors(origins: &str) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any);
    let origins: Vec<&str> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() || origins.contains(&"*") {
        return layer.allow_origin(tower_http::cors::Any);
    }
    let list: Vec<_> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    layer.allow_origin(AllowOrigin::list(list))
}
