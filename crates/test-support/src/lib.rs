//! Helpers for integration tests. Tests run against real servers started by
//! `scripts/test.sh`: a nats-server with JetStream (`TEST_NATS_URL`) and a
//! MongoDB-wire server (`TEST_MONGODB_URI`). Each test takes its own NATS
//! namespace and database, so tests run in parallel on the same servers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

pub mod cluster;
pub mod graph;
pub mod stack;

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
    Mongo::Default.uri(database)
}

pub async fn mongo_database(database: &str) -> mongodb::Database {
    mongo_database_at(&mongodb_uri(database), database).await
}

/// Which MongoDB-wire server a test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mongo {
    /// `TEST_MONGODB_URI`: standalone (no transactions) with the stand-in.
    Default,
    /// `TEST_MONGODB_RS_URI`: a replica set, where each batch is one
    /// transaction (the production path).
    ReplicaSet,
}

impl Mongo {
    /// The URI of `database` on this server.
    pub fn uri(self, database: &str) -> String {
        let base = match self {
            Mongo::Default => required_env("TEST_MONGODB_URI"),
            Mongo::ReplicaSet => required_env("TEST_MONGODB_RS_URI"),
        };
        format!("{}/{database}", base.trim_end_matches('/'))
    }

    pub async fn database(self, database: &str) -> mongodb::Database {
        mongo_database_at(&self.uri(database), database).await
    }
}

async fn mongo_database_at(uri: &str, database: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    client.database(database)
}

/// A client of the NATS servers in `urls` (comma-separated, as `NATS_URL`).
pub async fn connect_all(urls: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::connect(urls.split(',').collect::<Vec<_>>()).await
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
/// A timeout reports what was seen last.
pub async fn wait_until_drained(js: &jetstream::Context, stream: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = drain_state(js, stream).await;
        if seen.as_ref().is_ok_and(|state| {
            state.published > 0
                && state.pending == 0
                && state.unacknowledged == 0
                && state.delivered >= state.published
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for the processor to drain the stream; last seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stream and its processor consumer, as [`wait_until_drained`] sees them.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct DrainState {
    /// Ever published (a work queue drops what was acknowledged).
    published: u64,
    pending: u64,
    unacknowledged: usize,
    delivered: u64,
    acknowledged: u64,
}

async fn drain_state(js: &jetstream::Context, stream: &str) -> Result<DrainState, String> {
    let mut stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let published = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut consumer = stream
        .get_consumer::<jetstream::consumer::pull::Config>("processor")
        .await
        .map_err(|e| e.to_string())?;
    let info = consumer.info().await.map_err(|e| e.to_string())?;
    Ok(DrainState {
        published,
        pending: info.num_pending,
        unacknowledged: info.num_ack_pending,
        delivered: info.delivered.stream_sequence,
        acknowledged: info.ack_floor.stream_sequence,
    })
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

/// The business number the sample files were sent to.
pub const SAMPLES_PHONE_NUMBER_ID: &str = "629305560276479";

/// [`sample_files`] as if sent to business number `number` instead (a
/// deployment whose default number is the one its webhooks name).
pub fn sample_files_from(number: &str) -> Vec<(String, Vec<u8>)> {
    sample_files()
        .into_iter()
        .map(|(name, body)| {
            let text = String::from_utf8_lossy(&body).replace(SAMPLES_PHONE_NUMBER_ID, number);
            (name, text.into_bytes())
        })
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

/// A child process that is killed (SIGKILL) and reaped when dropped, so a
/// failing test or benchmark leaves nothing running.
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether the process exits within `timeout` (polling; blocking).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL now: no chance to finish anything.
    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

/// Sends a signal (`"-TERM"`, `"-STOP"`, `"-CONT"`, ...) to a process.
pub fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill {which} {pid}");
}

/// One of our binaries as its own process on a free loopback port, with
/// `env`, once it listens; its URL.
pub async fn start_binary(binary: &str, env: &[(&str, String)]) -> (KillOnDrop, String) {
    let port = free_port();
    let child = Command::new(binary)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary is built by cargo test");
    let child = KillOnDrop::new(child);
    wait_listening("the binary", port).await;
    (child, format!("http://127.0.0.1:{port}"))
}

/// Waits until something listens on the loopback `port`.
pub async fn wait_listening(what: &str, port: u16) {
    wait_until(
        &format!("{what} to listen on {port}"),
        Duration::from_secs(20),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
}

/// Starts `nats-server -c config` (`NATS_SERVER_BIN` or the one on PATH).
pub fn spawn_nats_server(config: &Path, stderr: Stdio) -> Child {
    let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
    Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("nats-server must be installed (scripts/test.sh installs it)")
}

/// SIGTERM, then how long the process took to exit (`None`: still
/// running after 15 s).
pub async fn time_to_exit_after_sigterm(mut child: KillOnDrop) -> Option<Duration> {
    let asked = std::time::Instant::now();
    signal("-TERM", child.id());
    let exited = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(15)))
        .await
        .ok()?;
    exited.then(|| asked.elapsed())
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// A private nats-server, for tests that stop and restart NATS. Its data
/// survive a restart, like a server with a volume.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Whether the config sets `max_payload: 8MB` (else NATS's 1 MB default).
    large_payloads: bool,
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// A private nats-server with NATS's default `max_payload` (1 MB), as
    /// an operator who changed nothing would run it.
    pub async fn start_with_default_max_payload() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(large_payloads: bool) -> Self {
        let dir = std::env::temp_dir().join(unique_name("nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
            large_payloads,
        };
        server.restart().await;
        server
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
                "listen: 127.0.0.1:{}\n{}jetstream {{ store_dir: \"{}\" }}\n",
                self.port,
                if self.large_payloads {
                    "max_payload: 8MB\n"
                } else {
                    ""
                },
                self.dir.join("store").display()
            ),
        )
        .unwrap();
        self.child = Some(spawn_nats_server(&config, Stdio::null()));
        wait_listening("the private nats-server", self.port).await;
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

/// A real `socket.io-client` v4 (Node.js) connected to `url`, driven over
/// its stdin/stdout (see `socketio-client/client.js`).
pub struct SocketClient {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    next_id: u64,
    /// Transport after an upgrade seen while waiting for something else.
    upgraded_to: Option<String>,
}

/// The `seq` of each received event, checked to increase strictly.
pub fn increasing_seqs(events: &[(String, serde_json::Value)]) -> Vec<u64> {
    let seqs: Vec<u64> = events
        .iter()
        .map(|(name, data)| {
            data["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} without a seq: {data}"))
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq must increase: {seqs:?}"
    );
    seqs
}

impl SocketClient {
    /// Connects with these transports (`"polling,websocket"` is the
    /// browser default; `"websocket"` skips long-polling) and waits for the
    /// connection.
    pub async fn connect(url: &str, transports: &str) -> Self {
        Self::connect_with(url, transports, serde_json::json!({})).await
    }

    /// Connects with options (see `client.js`): `{"auth": {...}}` sent with
    /// every connection, `{"resume": true}` to keep `auth.lastSeq` at the
    /// last event's `seq`.
    pub async fn connect_with(url: &str, transports: &str, options: serde_json::Value) -> Self {
        let mut client = Self::start(url, transports, options);
        client.next_of("connect", Duration::from_secs(20)).await;
        client
    }

    /// Starts the client without waiting for its connection (which may be
    /// refused: see `next_of("connect_error")`).
    pub fn start(url: &str, transports: &str, options: serde_json::Value) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio-client");
        assert!(
            dir.join("node_modules/socket.io-client").exists(),
            "socket.io-client is not installed: scripts/test.sh runs npm ci in {}",
            dir.display()
        );
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("client.js"))
            .arg(url)
            .arg(transports)
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (scripts/test.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(value) = serde_json::from_str(&line)
                    && tx.send(value).is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            next_id: 0,
            upgraded_to: None,
        }
    }

    /// The next line of the given type, skipping others.
    pub async fn next_of(&mut self, kind: &str, timeout: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no {kind} from the Socket.IO client within {timeout:?}")
                })
                .expect("the Socket.IO client exited");
            if line["type"] == kind {
                return line;
            }
            if line["type"] == "upgrade" {
                self.upgraded_to = line["transport"].as_str().map(str::to_owned);
            }
        }
    }

    /// The next `newMessage` / `statusUpdate`: `(event name, data)`.
    pub async fn next_event(&mut self, timeout: Duration) -> (String, serde_json::Value) {
        let line = self.next_of("event", timeout).await;
        (
            line["event"].as_str().unwrap().to_owned(),
            line["data"].clone(),
        )
    }

    /// Whether a `newMessage` whose body starts with `prefix` arrives within
    /// `timeout` (other events are skipped).
    pub async fn saw_message_within(&mut self, prefix: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(line) = tokio::time::timeout_at(deadline, self.lines.recv()).await else {
                return false;
            };
            let line = line.expect("the Socket.IO client exited");
            if line["type"] == "event"
                && line["event"] == "newMessage"
                && line["data"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(prefix))
            {
                return true;
            }
        }
    }

    /// Events until a `newMessage` whose body is `marker` (not included):
    /// send a marker message last to know everything before it arrived.
    pub async fn events_until_marker(&mut self, marker: &str) -> Vec<(String, serde_json::Value)> {
        let mut events = Vec::new();
        loop {
            let (name, data) = self.next_event(Duration::from_secs(60)).await;
            if name == "newMessage" && data["body"] == marker {
                return events;
            }
            events.push((name, data));
        }
    }

    /// Emits and waits for the server's acknowledgement.
    pub async fn emit_with_ack(
        &mut self,
        event: &str,
        args: serde_json::Value,
    ) -> serde_json::Value {
        self.command(serde_json::json!({"emit": event, "args": [args]}))
            .await
    }

    /// Disconnects (the client does not reconnect by itself after this).
    /// socket.io-client is disconnected once it acknowledges.
    pub async fn disconnect(&mut self) {
        self.command(serde_json::json!({"disconnect": true})).await;
    }

    /// Connects again after [`SocketClient::disconnect`] and waits for it.
    pub async fn reconnect(&mut self) {
        self.command(serde_json::json!({"connect": true})).await;
        self.next_of("connect", Duration::from_secs(20)).await;
    }

    /// Sends a command to the client and waits for its acknowledgement.
    async fn command(&mut self, mut command: serde_json::Value) -> serde_json::Value {
        use tokio::io::AsyncWriteExt;
        self.next_id += 1;
        command["id"] = self.next_id.into();
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let ack = self.next_of("ack", Duration::from_secs(15)).await;
        assert_eq!(ack["id"], self.next_id);
        ack["data"].clone()
    }

    /// Waits for the transport to be upgraded from polling to websocket.
    pub async fn upgraded(&mut self) -> String {
        if let Some(transport) = self.upgraded_to.take() {
            return transport;
        }
        self.next_of("upgrade", Duration::from_secs(20)).await["transport"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for SocketClient {
    fn drop(&mut self) {
        self.stdin.take();
        self.child.start_kill().ok();
    }
}

/// `X-Hub-Signature-256` for `body` under the app secret `secret`, as Meta
/// computes it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A JSON leaf for property tests: null, a boolean, a number (any `i64`,
/// `u64` or finite `f64`) or a string from `strings`.
pub fn json_leaf(
    strings: proptest::strategy::BoxedStrategy<String>,
) -> proptest::strategy::BoxedStrategy<serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        strings.prop_map(Value::String),
    ]
    .boxed()
}
