//! processor: consumes webhook payloads (and messages sent through the
//! API) from JetStream, applies the processing rules against MongoDB (the
//! events of each batch committed in its outbox), and relays the events to
//! the event log the api-gateways read. Run as many replicas as you like:
//! they share one durable consumer, so each payload is handled by one of
//! them at a time. With `WHATSAPP_ACCESS_TOKEN` set, each also runs a
//! sender ([`wa_engine::sender`]): the messages the API queued go to
//! WhatsApp's Cloud API.

mod config;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::{EventBus, Queue};
use wa_broker_nats::NatsBroker;
use wa_engine::processing::Processor;
use wa_engine::relay::Relay;
use wa_engine::sender::Sender;
use wa_engine::worker::Worker;
use wa_service::http::{ops_routes, readiness};
use wa_store::Store;
use wa_store_mongo::MongoStore;

pub use config::Config;

pub struct Application {
    listener: TcpListener,
    config: Config,
    broker: Arc<NatsBroker>,
    store: Arc<MongoStore>,
}

impl Application {
    /// Binds the health port and prepares the clients. Neither NATS nor
    /// MongoDB needs to be up yet: the worker waits for them.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = Arc::new(MongoStore::connect(&config.mongo.mongodb_uri, "processor").await?);
        let broker = NatsBroker::connect(
            &config.nats.nats_url,
            &config.nats.nats_namespace,
            "processor",
            Duration::from_secs(5),
        )
        .await?
        .with_streams(config.nats.streams.clone())
        .with_ack_wait(Duration::from_secs(config.ack_wait_secs.max(1)));
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Self {
            listener,
            config,
            broker: Arc::new(broker),
            store,
        })
    }

    pub fn port(&self) -> u16 {
        wa_service::http::local_port(&self.listener)
    }

    /// Runs the worker and the health endpoints until `shutdown` is
    /// cancelled; the batch in hand is finished and acknowledged first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (queue, store): (Arc<dyn Queue>, Arc<dyn Store>) =
            (self.broker.clone(), self.store.clone());
        let ready = readiness(queue, Some(store));
        let router = ops_routes(ready).layer(axum::middleware::from_fn_with_state(
            self.config.metrics.tokens()?,
            wa_service::access::guard_metrics,
        ));
        let router = wa_service::http::service(router, &self.config.limits);
        tracing::info!(port = self.port(), "processor health endpoints listening");
        let server = wa_service::server::serve(
            self.listener,
            router,
            self.config.limits.header_read_timeout(),
            shutdown.clone().cancelled_owned(),
        );
        let events: Arc<dyn EventBus> = self.broker.clone();
        let relay = Relay::new(self.store.clone(), events);
        let graph = self.config.graph.client()?;
        wa_graph::announce(graph.as_ref());
        let sender = graph.map(|graph| {
            let sender = Sender::new(
                Processor::new(self.store.clone()),
                relay.clone(),
                graph,
                Duration::from_secs(self.config.graph.graph_timeout_secs.max(1)),
            );
            tokio::spawn(sender.run(shutdown.clone()))
        });
        let worker = Worker {
            processor: Processor::new(self.store.clone()),
            queue: self.broker.clone(),
            relay,
            batch_size: self.config.worker.batch_size,
            batch_bytes: self.config.worker.batch_bytes,
            max_deliveries: self.config.worker.max_deliveries.max(1),
            default_number: self.config.graph.whatsapp_phone_number_id.clone(),
        };
        let (served, ()) = tokio::join!(server, worker.run(shutdown));
        if let Some(sender) = sender {
            sender.await.ok();
        }
        self.broker.client().flush().await.ok();
        Ok(served?)
    }
}
