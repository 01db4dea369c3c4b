use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use wa_broker_nats::Names;
use wa_broker_nats::config::NatsConfig;
use wa_service::config::{LogConfig, LogFormat, WebhookConfig};
use webhook_gateway::{Application, Config};

pub const VERIFY_TOKEN: &str = "let-me-in";
pub const APP_SECRET: &str = "test-app-secret";

pub struct TestApp {
    pub address: String,
    pub namespace: String,
    pub names: Names,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn config(nats_url: &str, namespace: &str, app_secret: Option<&str>) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        webhook: WebhookConfig {
            verify_token: Some(VERIFY_TOKEN.into()),
            app_secret: app_secret.map(Into::into),
            body_limit: 4 * 1024 * 1024,
            allow_unsigned_webhooks: false,
        },
        limits: Default::default(),
        metrics: Default::default(),
        publish_timeout_ms: 2000,
        nats: NatsConfig {
            nats_url: nats_url.into(),
            nats_namespace: namespace.into(),
            streams: Default::default(),
        },
        log: LogConfig {
            log_format: LogFormat::Pretty,
        },
    }
}

/// A gateway on a free port, with its own namespace on the test NATS server.
pub async fn spawn_app(app_secret: Option<&str>) -> TestApp {
    spawn_app_on(&test_support::nats_url(), app_secret).await
}

pub async fn spawn_app_on(nats_url: &str, app_secret: Option<&str>) -> TestApp {
    let namespace = test_support::unique_name("gw");
    spawn_app_with(config(nats_url, &namespace, app_secret)).await
}

/// A gateway with this configuration (its namespace, its NATS server).
pub async fn spawn_app_with(config: Config) -> TestApp {
    let (nats_url, namespace) = (
        config.nats.nats_url.clone(),
        config.nats.nats_namespace.clone(),
    );
    let nats_url = nats_url.as_str();
    let app = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let js = jetstream::new(async_nats::connect(nats_url).await.unwrap());
    TestApp {
        address,
        names: Names::new(&namespace),
        namespace,
        js,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl TestApp {
    pub async fn post_webhook(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("{}/webhook", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Payloads stored in the webhook stream so far.
    pub async fn stored_payloads(&self) -> u64 {
        match self.js.get_stream(self.names.webhook_stream()).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// Asserts a JSON error body `{"error": "..."}` and returns the message.
pub async fn error_message(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("error bodies are JSON");
    body["error"]
        .as_str()
        .expect("error bodies have an `error` string")
        .to_owned()
}
