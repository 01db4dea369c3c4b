use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use serde_json::Value;
use test_support::stack::StackConfig;
use tokio_util::sync::CancellationToken;
use wa_broker_nats::Names;

/// webhook-gateway, processor and `replicas` api-gateways, in this
/// process, on a fresh namespace and database.
pub struct Stack {
    pub webhook: String,
    pub api: Vec<String>,
    pub names: Names,
    pub js: jetstream::Context,
    pub db: mongodb::Database,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The arguments that make a service talk to `graph` (a fake Graph API).
pub fn graph_args(graph: &test_support::graph::FakeGraph) -> Vec<String> {
    graph
        .env()
        .into_iter()
        .map(|(name, value)| format!("--{}={value}", name.to_lowercase().replace('_', "-")))
        .chain(["--graph-timeout-secs=1".to_owned()])
        .collect()
}

/// The stack `config` describes, in this process: a webhook-gateway, a
/// processor and its api-gateways, ready (and its marker conversation
/// opened).
pub async fn spawn_stack(config: StackConfig) -> Stack {
    let namespace = config.namespace.clone();
    let shutdown = CancellationToken::new();

    let mut gateway_args = config.args("webhook-gateway", false);
    gateway_args.extend(config.nats.gateway_args.iter().cloned());
    let gateway =
        webhook_gateway::Application::build(webhook_gateway::Config::parse_from(gateway_args))
            .await
            .unwrap();
    let webhook = format!("http://127.0.0.1:{}", gateway.port());
    tokio::spawn(gateway.run_until_stopped(shutdown.clone()));

    for _ in 0..config.processors {
        let mut args = config.args("processor", true);
        args.extend(config.processor_args.iter().cloned());
        let processor = processor::Application::build(processor::Config::parse_from(args))
            .await
            .unwrap();
        tokio::spawn(processor.run_until_stopped(shutdown.clone()));
    }

    let mut api = Vec::new();
    for _ in 0..config.api_replicas {
        api.push(spawn_api(&config, &shutdown).await);
    }

    let js = jetstream::new(test_support::connect_all(&config.nats.url).await.unwrap());
    let names = Names::new(&namespace);
    test_support::wait_until("the streams to exist", Duration::from_secs(20), || async {
        js.get_stream(names.webhook_stream()).await.is_ok()
    })
    .await;
    // Ready, as a load balancer sees it: an api-gateway follows the event
    // log (a socket connected before would be told to resync).
    let http = reqwest::Client::new();
    for service in api.iter().chain([&webhook]) {
        test_support::wait_until(
            "the services to be ready",
            Duration::from_secs(30),
            || async {
                http.get(format!("{service}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
    }
    let stack = Stack {
        webhook,
        api,
        names,
        js,
        db: config.mongo.database(&namespace).await,
        http,
        shutdown,
    };
    // A conversation of the business's own: free-form messages into a
    // conversation need one to exist (its first message is a template).
    let (status, opened) = stack
        .post(
            0,
            "/api/messages",
            serde_json::json!({"conversationId": MARKER,
                "template": {"name": "marker", "language": {"code": "en"}}}),
        )
        .await;
    // 200: a retried attempt found it stored by the first (see `post`).
    assert!(status == 201 || status == 200, "{status}: {opened}");
    stack
}

/// An api-gateway of the stack `config` describes, in this process until
/// `shutdown`; its URL.
pub async fn spawn_api(config: &StackConfig, shutdown: &CancellationToken) -> String {
    let mut args = config.args("api-gateway", true);
    args.extend(config.api_args.iter().cloned());
    let app = api_gateway::Application::build(api_gateway::Config::parse_from(args))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    url
}

impl Stack {
    pub async fn post_webhook(&self, body: &[u8]) {
        let response = self
            .http
            .post(format!("{}/webhook", self.webhook))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    pub async fn load_samples(&self) {
        self.load(test_support::sample_files()).await;
    }

    /// The samples as if sent to business number `number`.
    pub async fn load_samples_from(&self, number: &str) {
        self.load(test_support::sample_files_from(number)).await;
    }

    async fn load(&self, files: Vec<(String, Vec<u8>)>) {
        for (_, body) in files {
            self.post_webhook(&body).await;
        }
        self.drained().await;
    }

    pub async fn drained(&self) {
        test_support::wait_until_drained(
            &self.js,
            &self.names.webhook_stream(),
            Duration::from_secs(60),
        )
        .await;
    }

    pub async fn get(&self, replica: usize, path: &str) -> (u16, Value) {
        let (status, text) = self.get_text(replica, path).await;
        (status, serde_json::from_str(&text).unwrap())
    }

    pub async fn get_text(&self, replica: usize, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.api[replica]))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// `POST /api/messages` on `replica`, stored (201); the message.
    pub async fn send(&self, replica: usize, conversation: &str, text: &str) -> Value {
        let (status, sent) = self
            .post(
                replica,
                "/api/messages",
                serde_json::json!({"conversationId": conversation, "message": text}),
            )
            .await;
        assert_eq!(status, 201, "{sent}");
        sent
    }

    /// A 503 ("not stored, retry": the replica-set stand-in refuses a
    /// write while another transaction holds its lock) is retried, as a
    /// client would.
    pub async fn post(&self, replica: usize, path: &str, body: Value) -> (u16, Value) {
        // Retried as a careful client does: with one Idempotency-Key for
        // every attempt, as a 503 from the replica-set stand-in may come
        // after the message was stored (sending it twice otherwise).
        let key = format!("test-{}", uuid::Uuid::now_v7());
        for attempt in 0..100 {
            let response = self
                .http
                .post(format!("{}{path}", self.api[replica]))
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if status != 503 {
                // A repeat's 200 after a 503: the first attempt created it
                // (its key is this request's alone), as the caller asked.
                let status = if attempt > 0 && status == 200 {
                    201
                } else {
                    status
                };
                return (status, response.json().await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("POST {path}: 503 a hundred times")
    }
}

pub const RAVI: &str = "conv_919937320320";
/// A conversation every stack has (for markers), apart from the samples'.
pub const MARKER: &str = "conv_15550000001";
pub const NEHA: &str = "conv_929967673820";
