//! processor: consumes webhook payloads from JetStream, applies the
//! processing rules against MongoDB, and publishes events for the
//! api-gateways. Run as many replicas as you like: they share one durable
//! consumer, so each payload is handled by one of them at a time.

mod config;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use shared::broker::{self, Names};
use shared::http::{ReadinessCheck, ops_routes};
use shared::processing::Processor;
use shared::store::Store;
use shared::store::mongo::MongoStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

pub struct Application {
    listener: TcpListener,
    config: Config,
    client: async_nats::Client,
    store: MongoStore,
}

impl Application {
    /// Binds the health port and prepares the clients. Neither NATS nor
    /// MongoDB needs to be up yet: the worker waits for them.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = MongoStore::connect(&config.mongo.mongodb_uri, "processor").await?;
        let client = broker::connect(&config.nats.nats_url, "processor").await?;
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            config,
            client,
            store,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Runs the worker and the health endpoints until `shutdown` is
    /// cancelled; the batch in hand is finished and acknowledged first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = ops_router(self.client.clone(), self.store.clone());
        tracing::info!(port = self.port(), "processor health endpoints listening");
        let server = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let worker = worker::Worker {
            processor: Processor::new(Arc::new(self.store.clone())),
            store: self.store,
            client: self.client.clone(),
            js: broker::jetstream(self.client.clone(), Duration::from_secs(5)),
            names: Names::new(&self.config.nats.nats_namespace),
            batch_size: self.config.batch_size.max(1),
            ack_wait: Duration::from_secs(self.config.ack_wait_secs.max(1)),
            max_deliveries: self.config.max_deliveries.max(1),
        };
        let (served, ()) = tokio::join!(server, worker.run(shutdown));
        self.client.flush().await.ok();
        Ok(served?)
    }
}

fn ops_router(client: async_nats::Client, store: MongoStore) -> Router {
    let ready: ReadinessCheck = Arc::new(move || {
        let (client, store) = (client.clone(), store.clone());
        Box::pin(async move {
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err("NATS is not connected".to_owned());
            }
            store.ping().await.map_err(|e| e.to_string())
        })
    });
    shared::http::with_request_tracing(ops_routes(ready))
}
