use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use processor::{Application, Config};
use test_support::Mongo;
use test_support::stack::StackConfig;
use tokio_util::sync::CancellationToken;
use wa_broker_nats::Names;
use wa_broker_nats::config::NatsConfig;
use wa_service::config::{LogConfig, LogFormat, WebhookConfig, WorkerConfig};
use wa_store_mongo::MongoConfig;

/// A gateway and a processor sharing a fresh namespace and database.
pub struct Pipeline {
    pub gateway: String,
    pub processor: String,
    pub namespace: String,
    pub database: String,
    /// Where the database is: the replica set unless a test says otherwise.
    pub mongo: Mongo,
    pub names: Names,
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub db: mongodb::Database,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn processor_config(namespace: &str, mongo: Mongo, database: &str) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        worker: WorkerConfig {
            batch_size: 64,
            batch_bytes: 16 * 1024 * 1024,
            max_deliveries: 3,
        },
        ack_wait_secs: 3,
        limits: Default::default(),
        metrics: Default::default(),
        graph: Default::default(),
        nats: NatsConfig {
            nats_url: test_support::nats_url(),
            nats_namespace: namespace.into(),
            streams: Default::default(),
        },
        mongo: MongoConfig {
            mongodb_uri: mongo.uri(database),
        },
        log: LogConfig {
            log_format: LogFormat::Pretty,
        },
    }
}

/// The stack `config` describes, in this process: a gateway and
/// `config.processors` processors (0: the test starts its own) on its
/// namespace and database. (No api-gateway: these are the processor's
/// tests.)
pub async fn spawn_stack(config: StackConfig) -> Pipeline {
    // Logs show with RUST_LOG=info (off unless asked for).
    if std::env::var_os("RUST_LOG").is_some() {
        wa_service::config::init_tracing(&LogConfig {
            log_format: LogFormat::Pretty,
        });
    }
    let mongo = config.mongo;
    let namespace = config.namespace.clone();
    let database = namespace.clone();
    let shutdown = CancellationToken::new();
    let gateway_config = webhook_gateway::Config {
        host: "127.0.0.1".into(),
        port: 0,
        webhook: WebhookConfig {
            verify_token: None,
            app_secret: None,
            body_limit: 4 * 1024 * 1024,
            allow_unsigned_webhooks: false,
        },
        limits: Default::default(),
        metrics: Default::default(),
        publish_timeout_ms: 5000,
        nats: NatsConfig {
            nats_url: config.nats.url.clone(),
            nats_namespace: namespace.clone(),
            streams: Default::default(),
        },
        log: LogConfig {
            log_format: LogFormat::Pretty,
        },
    };
    let gateway = webhook_gateway::Application::build(gateway_config)
        .await
        .unwrap();
    let gateway_address = format!("http://127.0.0.1:{}", gateway.port());
    tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
    let nats = async_nats::connect(config.nats.url.as_str()).await.unwrap();
    let js = jetstream::new(nats.clone());
    let names = Names::new(&namespace);
    test_support::wait_until(
        "the gateway to create its streams",
        Duration::from_secs(20),
        || async { js.get_stream(names.webhook_stream()).await.is_ok() },
    )
    .await;
    let mut processor = String::new();
    for _ in 0..config.processors {
        let app = Application::build(processor_config(&namespace, mongo, &database))
            .await
            .unwrap();
        processor = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
    }
    Pipeline {
        gateway: gateway_address,
        processor,
        names,
        js,
        nats,
        db: mongo.database(&database).await,
        mongo,
        namespace,
        database,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl Pipeline {
    /// Posts a webhook body to the gateway and expects a 200.
    pub async fn post(&self, body: &[u8]) {
        let mut attempts = 0;
        loop {
            let response = self
                .http
                .post(format!("{}/webhook", self.gateway))
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            // 503 only until the gateway has created its streams at startup.
            if response.status() == 503 && attempts < 100 {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            return;
        }
    }

    /// Publishes straight to the stream without a de-duplication id, as a
    /// redelivery by NATS or a retry by Meta after the window would.
    pub async fn publish_raw(&self, body: &[u8]) {
        self.js
            .publish(self.names.webhooks(), body.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn drained(&self) {
        test_support::wait_until_drained(
            &self.js,
            &self.names.webhook_stream(),
            Duration::from_secs(120),
        )
        .await;
    }

    pub async fn messages(&self, filter: Document) -> Vec<Document> {
        self.db
            .collection::<Document>("processed_messages")
            .find(filter)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    pub async fn message(&self, id: &str) -> Document {
        let found = self.messages(doc! {"_id": id}).await;
        found
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("message {id} is not stored"))
    }

    pub async fn conversation(&self, id: &str) -> Document {
        self.db
            .collection::<Document>("conversations")
            .find_one(doc! {"_id": id})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("conversation {id} has no summary"))
    }
}
