//! whatsapp-clone: webhook-gateway, processor and api-gateway in one
//! process on one port, for a newcomer who has nothing but Rust.
//!
//! Without `MONGODB_URI` the store is SQLite and without `NATS_URL` the
//! broker is in-process (a SQLite queue and a SQLite event log), all under
//! `--data-dir`. The routes, processing rules and events are the services'
//! own code; only the store and broker behind their traits differ.

mod config;
pub mod import;

use std::sync::Arc;
use std::time::Duration;

use api_gateway::{Access, Api, ApiState, MediaConfig, api_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::{EventBus, Queue};
use wa_broker_embedded::{EmbeddedEvents, EmbeddedQueue};
use wa_broker_nats::NatsBroker;
use wa_engine::processing::Processor;
use wa_engine::sender::Sender;
use wa_engine::worker::Worker;
use wa_service::http::{ops_routes, readiness};
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;
use webhook_gateway::{WebhookState, webhook_routes};

pub use config::{Cli, Command, ImportArgs, ServeConfig};

pub struct Application {
    listener: TcpListener,
    api: Api,
    worker: Worker,
    /// Sends the queued messages through WhatsApp, if configured.
    sender: Option<Sender>,
    import: Option<std::path::PathBuf>,
    /// Signs `--import`'s posts to this process's own gateway.
    app_secret: Option<String>,
}

impl Application {
    pub async fn build(mut config: ServeConfig) -> anyhow::Result<Self> {
        // `MONGODB_URI=` (empty) means "not set": embedded.
        config.mongodb_uri = config.mongodb_uri.filter(|u| !u.trim().is_empty());
        config.nats_url = config.nats_url.filter(|u| !u.trim().is_empty());
        let access = Access::new(&config.api, &config.limits, &config.host)?;
        config.webhook.check_exposure(&config.host)?;
        let store: Arc<dyn Store> = match &config.mongodb_uri {
            Some(uri) => Arc::new(MongoStore::connect(uri, "whatsapp-clone").await?),
            None => Arc::new(SqliteStore::open(&config.data_dir.join("store.sqlite3"))?),
        };
        let (queue, events): (Arc<dyn Queue>, Arc<dyn EventBus>) = match &config.nats_url {
            Some(url) => {
                let broker = Arc::new(
                    NatsBroker::connect(
                        url,
                        &config.nats_namespace,
                        "whatsapp-clone",
                        Duration::from_secs(5),
                    )
                    .await?
                    .with_streams(config.streams.clone()),
                );
                (broker.clone(), broker)
            }
            None => (
                Arc::new(EmbeddedQueue::open(&config.data_dir.join("queue.sqlite3")).await?),
                Arc::new(EmbeddedEvents::open(&config.data_dir.join("events.sqlite3")).await?),
            ),
        };
        // Tables first: the API serves as soon as `run_until_stopped` starts.
        if config.mongodb_uri.is_none() {
            store.prepare().await?;
        }
        tracing::info!(
            store = if config.mongodb_uri.is_some() { "MongoDB" } else { "SQLite" },
            broker = if config.nats_url.is_some() { "NATS" } else { "in-process" },
            data_dir = %config.data_dir.display(),
            "whatsapp-clone starting"
        );
        let webhook = WebhookState::new(queue.clone(), &config.webhook)
            .with_body_budget(config.limits.body_budget_bytes);
        let graph = config.graph.client()?;
        wa_graph::announce(graph.as_ref());
        let media = MediaConfig::open(&config.media, &config.data_dir.join("media"))?;
        let state = ApiState::new(store.clone(), events.clone(), graph.clone()).with_media(media);
        let (ready_queue, ready_store) = (queue.clone(), store.clone());
        let ready = state
            .realtime
            .readiness(readiness(ready_queue, Some(ready_store)));
        let others = webhook_routes(webhook).merge(ops_routes(ready));
        let relay = state.relay.clone();
        let api = api_router(state, others, &config.api, &access)?;
        let sender = graph.map(|graph| {
            Sender::new(
                Processor::new(store.clone()),
                relay.clone(),
                graph,
                Duration::from_secs(config.graph.graph_timeout_secs.max(1)),
            )
        });
        let worker = Worker {
            processor: Processor::new(store),
            queue,
            relay,
            batch_size: config.worker.batch_size,
            batch_bytes: config.worker.batch_bytes,
            max_deliveries: config.worker.max_deliveries.max(1),
            default_number: config.graph.whatsapp_phone_number_id.clone(),
        };
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            api,
            worker,
            sender,
            import: config.import,
            app_secret: config.webhook.secret().map(str::to_owned),
        })
    }

    pub fn port(&self) -> u16 {
        wa_service::http::local_port(&self.listener)
    }

    /// Serves and processes until `shutdown`; the batch in hand is finished.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let port = self.port();
        tracing::info!(
            port,
            "whatsapp-clone listening: webhook, REST and Socket.IO on this port"
        );
        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        let sender = self.sender.map(|s| tokio::spawn(s.run(shutdown.clone())));
        if let Some(dir) = self.import {
            let app_secret = self.app_secret;
            tokio::spawn(async move {
                let url = format!("http://127.0.0.1:{port}/webhook");
                match import::run_signed(&[dir], &url, app_secret.as_deref(), false).await {
                    Ok(report) => tracing::info!("{report}"),
                    Err(e) => tracing::error!(error = %e, "import failed"),
                }
            });
        }
        self.api.serve(self.listener, shutdown).await?;
        worker.await.ok();
        if let Some(sender) = sender {
            sender.await.ok();
        }
        Ok(())
    }
}
