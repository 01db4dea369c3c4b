//! The service binaries (release builds next to the bench's own) run as
//! child processes, so their CPU and memory are their own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub struct Service {
    pub name: &'static str,
    pub port: u16,
    child: test_support::KillOnDrop,
}

/// The binaries are the release builds next to this one.
pub fn binary(name: &str) -> PathBuf {
    own_dir().join(name)
}

/// The directory of this binary (where the release builds are).
pub fn own_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

impl Service {
    /// Starts `name` on a free port with `env`, without waiting for it.
    pub fn spawn(name: &'static str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = binary(name);
        if !path.exists() {
            bail!("{name} is not built: cargo build --release --workspace --bins");
        }
        Self::spawn_path(name, &path, env)
    }

    /// Starts the `name` binary of `dir` (e.g. another revision's build)
    /// and waits until `/readyz` answers 200.
    pub async fn start_from(
        dir: &Path,
        name: &'static str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let path = dir.join(name);
        if !path.exists() {
            bail!("{} not found", path.display());
        }
        Self::spawn_path(name, &path, env)?
            .wait_for("/readyz")
            .await
    }

    fn spawn_path(name: &'static str, path: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = test_support::free_port();
        // BENCH_LOG_DIR=<dir> keeps each service's log (at info) there.
        let (log_level, log) = match std::env::var_os("BENCH_LOG_DIR") {
            Some(dir) => {
                let file =
                    std::fs::File::create(Path::new(&dir).join(format!("{name}-{port}.log")))
                        .context("cannot create the service's log in BENCH_LOG_DIR")?;
                let out = file.try_clone()?;
                ("info", (Stdio::from(out), Stdio::from(file)))
            }
            None => ("error", (Stdio::null(), Stdio::null())),
        };
        // Many sockets need many file descriptors.
        let child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\"")
            .arg(path)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", log_level)
            // The load comes from one address: the per-IP limit would
            // measure itself. Limits cost nothing measurable when off.
            .env("RATE_LIMIT_PER_IP", "0")
            // Bench loads keep up to thousands of requests in flight.
            .env("MAX_REQUESTS_IN_FLIGHT", "100000")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.0)
            .stderr(log.1)
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        Ok(Self {
            name,
            port,
            child: test_support::KillOnDrop::new(child),
        })
    }

    /// Starts `name` and waits until `/readyz` answers 200.
    pub async fn start(name: &'static str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::spawn(name, env)?.wait_for("/readyz").await
    }

    /// Starts `name` and waits until `/healthz` answers (dependencies may
    /// be missing).
    pub async fn start_live(name: &'static str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::spawn(name, env)?.wait_for("/healthz").await
    }

    async fn wait_for(self, path: &str) -> anyhow::Result<Self> {
        let service = self;
        let url = format!("{}{path}", service.url());
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(service);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} did not answer {path} within 60 s", service.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL now, as a crash would: nothing gets finished.
    pub fn kill(self) {
        self.child.kill();
    }

    /// Resident memory, MB.
    pub fn rss_mb(&self) -> Option<f64> {
        rss_kib(self.child.id()).map(|kib| kib as f64 / 1024.0)
    }

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }
}

/// The environment the stack's services share: NATS, a namespace of their
/// own, and MongoDB.
pub fn stack_env(
    nats: &test_support::NatsServer,
    namespace: &str,
    mongodb_uri: String,
) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats.url()),
        ("NATS_NAMESPACE", namespace.to_owned()),
        ("MONGODB_URI", mongodb_uri),
    ]
}

/// The MongoDB-wire server the MongoDB scenarios use (`--mongo`).
static MONGO: std::sync::OnceLock<MongoMode> = std::sync::OnceLock::new();

/// Which MongoDB-wire server: a replica set (the production path: each
/// batch one transaction) or a standalone server (the fallback without
/// transactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MongoMode {
    /// `TEST_MONGODB_RS_URI`, as compose and k8s run MongoDB.
    ReplicaSet,
    /// `TEST_MONGODB_URI`.
    Standalone,
}

impl MongoMode {
    pub fn env(self) -> &'static str {
        match self {
            MongoMode::ReplicaSet => "TEST_MONGODB_RS_URI",
            MongoMode::Standalone => "TEST_MONGODB_URI",
        }
    }

    /// Whether the server is given (scripts/bench.sh gives both).
    pub fn available(self) -> bool {
        std::env::var(self.env()).is_ok()
    }

    /// The URI of `database` on this server.
    pub fn uri(self, database: &str) -> String {
        let base = std::env::var(self.env()).unwrap_or_default();
        format!("{}/{database}", base.trim_end_matches('/'))
    }

    /// `mongod`, or the SQLite-backed stand-in the test setup falls back
    /// to, and whether it is a replica set.
    pub fn label(self) -> String {
        let stand_in = Command::new("sh")
            .args(["-c", "command -v mongod"])
            .output()
            .map_or(true, |o| !o.status.success());
        let server = if stand_in { "nx-27017" } else { "mongod" };
        let kind = match self {
            MongoMode::ReplicaSet => "replica set",
            MongoMode::Standalone => "standalone",
        };
        if stand_in {
            format!("MongoDB wire ({server}, {kind})")
        } else {
            format!("MongoDB ({server}, {kind})")
        }
    }
}

/// Chooses the server of [`mongo`] (once, at start).
pub fn set_mongo(mode: MongoMode) {
    MONGO.set(mode).ok();
}

/// The MongoDB-wire server chosen with `--mongo` (default: the replica set).
pub fn mongo() -> MongoMode {
    MONGO.get().copied().unwrap_or(MongoMode::ReplicaSet)
}

/// Whether the chosen MongoDB server is given.
pub fn has_mongo() -> bool {
    mongo().available()
}

/// The URI of `database` on the chosen MongoDB server.
pub fn mongo_uri(database: &str) -> String {
    mongo().uri(database)
}

/// Why a MongoDB scenario did not run.
pub fn no_mongo() -> String {
    format!(
        "needs a MongoDB server: set {} (scripts/bench.sh does)",
        mongo().env()
    )
}

/// A client of `database` on the chosen MongoDB server.
pub async fn mongo_database(database: &str) -> anyhow::Result<mongodb::Database> {
    let client = mongodb::Client::with_uri_str(mongo_uri(database)).await?;
    Ok(client.database(database))
}

/// The chosen MongoDB server, named for the table.
pub fn mongo_label() -> String {
    mongo().label()
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
