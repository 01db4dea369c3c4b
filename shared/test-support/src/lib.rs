//! Helpers for integration tests. Tests run against real servers started by
//! `scripts/test.sh`: a nats-server with JetStream (`TEST_NATS_URL`) and a
//! MongoDB-wire server (`TEST_MONGODB_URI`). Each test takes its own NATS
//! namespace and database, so tests run in parallel on the same servers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the servers")
    })
}

pub fn nats_url() -> String {
    required_env("TEST_NATS_URL")
}

/// A fresh name for a test's NATS namespace and MongoDB database.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// URI of a database of its own on the test MongoDB server.
pub fn mongodb_uri(database: &str) -> String {
    format!(
        "{}/{database}",
        required_env("TEST_MONGODB_URI").trim_end_matches('/')
    )
}

pub async fn mongo_database(database: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(mongodb_uri(database))
        .await
        .unwrap();
    client.database(database)
}

pub async fn jetstream_context() -> jetstream::Context {
    jetstream::new(async_nats::connect(nats_url()).await.unwrap())
}

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the processor consumer of `stream` has nothing pending and
/// nothing unacknowledged: every published payload has been processed.
pub async fn wait_until_drained(js: &jetstream::Context, stream: &str, timeout: Duration) {
    wait_until("the processor to drain the stream", timeout, || async {
        let Ok(mut stream) = js.get_stream(stream).await else {
            return false;
        };
        let Ok(info) = stream.info().await else {
            return false;
        };
        let messages = info.state.messages;
        let Ok(mut consumer) = stream
            .get_consumer::<jetstream::consumer::pull::Config>("processor")
            .await
        else {
            return false;
        };
        let Ok(info) = consumer.info().await else {
            return false;
        };
        messages > 0
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence >= messages
    })
    .await;
}

/// The repository's `webhook_files/` folder.
pub fn webhook_files_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../webhook_files")
}

/// Every `.json` webhook file, in name order, except the expectations file.
pub fn all_webhook_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(webhook_files_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("EXPECTED.json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The assignment's 8 original sample files.
pub fn sample_files() -> Vec<(String, Vec<u8>)> {
    all_webhook_files()
        .into_iter()
        .filter(|(name, _)| name.starts_with("conversation_"))
        .collect()
}

/// `webhook_files/EXPECTED.json`: what loading every file must produce.
pub fn expected_messages() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(webhook_files_dir().join("EXPECTED.json")).unwrap();
    let files: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    files
        .iter()
        .flat_map(|f| f["messages"].as_array().cloned().unwrap_or_default())
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nats-server, for tests that stop and restart NATS. Its data
/// survive a restart, like a server with a volume.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique_name("nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        let config = self.dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\" }}\n",
                self.port,
                self.dir.join("store").display()
            ),
        )
        .unwrap();
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "the private nats-server to listen",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Number of documents matching `filter` in `collection`.
pub async fn count(
    db: &mongodb::Database,
    collection: &str,
    filter: mongodb::bson::Document,
) -> u64 {
    db.collection::<mongodb::bson::Document>(collection)
        .count_documents(filter)
        .await
        .unwrap()
}

/// Drops a test database (best effort: tests leave nothing behind).
pub async fn drop_database(db: &mongodb::Database) {
    db.drop().await.ok();
}

/// An integer field, whichever integer type the server returned it as.
pub fn int(document: &mongodb::bson::Document, key: &str) -> i64 {
    match document.get(key) {
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        other => panic!("{key} is not an integer: {other:?}"),
    }
}
