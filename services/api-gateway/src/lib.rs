//! api-gateway: the REST API and Socket.IO endpoint frontends use.
//!
//! Reads come straight from MongoDB (conversation summaries, a
//! conversation's messages). A message sent through the API is stored
//! here, with its send queued for the processor's sender in the same
//! commit, and marking a conversation read is a guarded status update done
//! here too: both with the same processing rules as the processor (their
//! events relayed to the event log like the processor's). Every replica reads the event log
//! (JetStream) and pushes it to its own Socket.IO clients, who can resume
//! from the last `seq` they saw.

mod config;
mod inbox;
mod media;
mod media_cache;
mod openapi;
mod realtime;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use wa_broker::{EventBus, Queue};
use wa_broker_nats::NatsBroker;
use wa_engine::processing::Processor;
use wa_engine::relay::Relay;
use wa_graph::Graph;
use wa_service::access::Tokens;
use wa_service::config::{ApiConfig, LimitsConfig};
use wa_service::http::{ops_routes, readiness};
use wa_store::Store;
use wa_store_mongo::MongoStore;

pub use config::Config;
pub use media::{MediaConfig, MediaSettings};
pub use openapi::ApiDoc;
pub use realtime::Realtime;
pub use socketioxide::SocketIo;

/// What every request handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub processor: Processor,
    /// The event log, and the way events get there from the outbox.
    pub relay: Relay,
    pub realtime: Realtime,
    /// WhatsApp's Cloud API; `None`: messages are stored locally only.
    pub graph: Option<Graph>,
    pub media: MediaConfig,
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, events: Arc<dyn EventBus>, graph: Option<Graph>) -> Self {
        let processor = Processor::new(store.clone());
        Self {
            relay: Relay::new(store.clone(), events.clone()),
            // Sockets tell an event's number by the home number.
            realtime: Realtime::new(events).with_numbers(processor.numbers().clone()),
            processor,
            store,
            graph,
            media: MediaConfig::default(),
        }
    }

    /// The media cache and limits (`GET /api/media/{id}`, `POST /api/media`).
    pub fn with_media(mut self, media: MediaConfig) -> Self {
        self.media = media;
        self
    }
}

/// Who may use the API and how much (from [`ApiConfig`] and [`LimitsConfig`]).
#[derive(Debug, Clone)]
pub struct Access {
    pub tokens: Tokens,
    pub limits: LimitsConfig,
}

impl Access {
    /// The tokens and limits of `config`, after refusing to serve anyone
    /// on a public `host` by accident.
    pub fn new(config: &ApiConfig, limits: &LimitsConfig, host: &str) -> anyhow::Result<Self> {
        Ok(Self {
            tokens: config.tokens(host)?,
            limits: limits.clone(),
        })
    }
}

/// The API ready to serve: its router, the handle to emit to this
/// process's sockets, and what the serving needs.
pub struct Api {
    pub router: Router,
    pub io: SocketIo,
    state: ApiState,
    header_read_timeout: Duration,
}

/// The whole HTTP surface of the API: REST routes, the web inbox, plus `others` (health,
/// metrics; the webhook routes in the all-in-one binary), finished with
/// the shared layers, Socket.IO on the same port, and CORS.
pub fn api_router(
    state: ApiState,
    others: Router,
    config: &ApiConfig,
    access: &Access,
) -> anyhow::Result<Api> {
    let (socket_layer, io) = realtime::socket_io(
        state.realtime.clone(),
        realtime::SocketRules {
            buffer: usize::try_from(config.socket_buffer).unwrap_or(usize::MAX),
            tokens: access.tokens.clone(),
            origins: origins(&config.cors_origins),
            max_subscriptions: config.max_subscriptions.max(1),
        },
    );
    // Rate limits on the REST API only: health checks and Meta's webhook
    // deliveries are not a client's traffic.
    let rest =
        wa_service::access::rate_limited(routes::router(state.clone()), config.rate_limit())?;
    let guarded = rest
        .merge(others)
        // The web inbox at `/`: public static files; the API keeps its tokens.
        .merge(inbox::routes())
        .layer(axum::middleware::from_fn_with_state(
            wa_service::access::TokenGuard {
                tokens: access.tokens.clone(),
                failures: wa_service::access::PerIp::new(config.rate_limit()),
            },
            wa_service::access::require_token,
        ));
    let inner = wa_service::http::service(guarded, &access.limits);
    // Socket.IO wraps the whole router as one service: each `layer()` call
    // makes its own engine (sessions), and `Router::layer` would call it
    // once per route, so polling requests would land on different engines.
    let mut router = Router::new()
        .fallback_service(tower::Layer::layer(&socket_layer, inner))
        .layer(tower::util::MapRequestLayer::new(
            realtime::detach_from_read_buffer::<axum::body::Body>,
        ));
    if let Some(handshakes) = wa_service::access::PerIp::new(config.rate_limit()) {
        router = router.layer(axum::middleware::from_fn_with_state(
            handshakes,
            wa_service::access::limit_handshakes,
        ));
    }
    Ok(Api {
        router: router.layer(cors(&config.cors_origins)),
        io,
        state,
        header_read_timeout: access.limits.header_read_timeout(),
    })
}

pub struct Application {
    listener: TcpListener,
    api: Api,
    broker: Arc<NatsBroker>,
}

impl Application {
    /// Binds the port and prepares clients; NATS and MongoDB may come up later.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let access = Access::new(&config.api, &config.limits, &config.host)?;
        let store: Arc<dyn Store> =
            Arc::new(MongoStore::connect(&config.mongo.mongodb_uri, "api-gateway").await?);
        let broker = Arc::new(
            NatsBroker::connect(
                &config.nats.nats_url,
                &config.nats.nats_namespace,
                "api-gateway",
                Duration::from_secs(5),
            )
            .await?
            .with_streams(config.nats.streams.clone()),
        );
        let graph = config.graph.client()?;
        wa_graph::announce(graph.as_ref());
        let state = ApiState::new(store.clone(), broker.clone(), graph).with_media(
            MediaConfig::open(&config.media, &media::default_cache_dir())?,
        );
        let queue: Arc<dyn Queue> = broker.clone();
        let ready = state.realtime.readiness(readiness(queue, Some(store)));
        let api = api_router(state, ops_routes(ready), &config.api, &access)?;
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            api,
            broker,
        })
    }

    pub fn port(&self) -> u16 {
        wa_service::http::local_port(&self.listener)
    }

    /// Serves until `shutdown`; Socket.IO clients are then disconnected with
    /// "transport close", so they reconnect to another replica.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "api-gateway listening");
        self.api.serve(self.listener, shutdown).await?;
        self.broker.client().flush().await.ok();
        Ok(())
    }
}

impl Api {
    /// Serves on `listener` and fans events out to this process's sockets
    /// until `shutdown`; then disconnects the sockets with "transport
    /// close", so clients reconnect (to another replica).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            router,
            io,
            state,
            header_read_timeout,
        } = self;
        let fan_out = tokio::spawn(realtime::fan_out(
            state.realtime.clone(),
            io.clone(),
            shutdown.clone(),
        ));
        wa_service::server::serve(listener, router, header_read_timeout, async move {
            shutdown.cancelled().await;
            io.close().await;
        })
        .await?;
        fan_out.await.ok();
        Ok(())
    }
}

/// `CORS_ORIGINS` as a list; `None`: any origin.
fn origins(setting: &str) -> Option<Vec<String>> {
    let origins: Vec<String> = setting
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() || origins.iter().any(|o| o == "*") {
        None
    } else {
        Some(origins)
    }
}

fn cors(setting: &str) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods(tower_http::cors::Any)
        // Named, not `*`: a wildcard never covers `Authorization`.
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        // Where the next page of GET /api/events starts (a scoped token's
        // pages may skip other numbers' events).
        .expose_headers([axum::http::HeaderName::from_static("next-after")]);
    match origins(setting) {
        None => layer.allow_origin(tower_http::cors::Any),
        Some(origins) => {
            let list: Vec<_> = origins.iter().filter_map(|o| o.parse().ok()).collect();
            layer.allow_origin(AllowOrigin::list(list))
        }
    }
}
