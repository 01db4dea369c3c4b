//! Many real Socket.IO clients: `bench/socketio/clients.js` under Node.js,
//! driven over stdin/stdout.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// What the clients saw since the last reset.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub deliveries: u64,
    pub messages: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Until the last client of a message had it (fan-out completion).
    pub complete_p99_ms: f64,
    pub connected: u64,
    pub rss_mb: f64,
}

pub struct Clients {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pub connected: u64,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio/clients.js")
}

impl Clients {
    /// Opens `clients` connections to `url`; with `conversations` > 0, client
    /// i narrows its stream to `conv_<base + i % conversations>`.
    pub async fn connect(
        url: &str,
        clients: usize,
        conversations: usize,
        base: u64,
    ) -> anyhow::Result<Self> {
        let script = script();
        if !script.with_file_name("node_modules").exists() {
            bail!("run `npm ci` in bench/socketio first (scripts/bench.sh does)");
        }
        let options = json!({"url": url, "clients": clients, "conversations": conversations, "base": base.to_string()});
        // Ten thousand sockets need as many file descriptors as allowed.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec node \"$0\" \"$1\"")
            .arg(&script)
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node (install Node.js)")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut this = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            connected: 0,
        };
        let ready = this.next("ready", Duration::from_secs(300)).await?;
        this.connected = ready["connected"].as_u64().unwrap_or(0);
        if this.connected < clients as u64 {
            bail!(
                "only {} of {clients} Socket.IO clients connected: {ready}",
                this.connected
            );
        }
        Ok(this)
    }

    async fn next(&mut self, kind: &str, timeout: Duration) -> anyhow::Result<Value> {
        tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.next_line().await? {
                let value: Value = serde_json::from_str(&line)?;
                match value["type"].as_str() {
                    Some(k) if k == kind => return Ok(value),
                    Some("error") => bail!("Socket.IO clients failed: {value}"),
                    _ => {}
                }
            }
            bail!("the Socket.IO clients exited")
        })
        .await
        .with_context(|| format!("no {kind:?} from the Socket.IO clients within {timeout:?}"))?
    }

    /// Forgets everything recorded so far (after a warm-up).
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"reset\n").await?;
        Ok(())
    }

    pub async fn report(&mut self) -> anyhow::Result<Report> {
        self.stdin.write_all(b"report\n").await?;
        let r = self.next("report", Duration::from_secs(60)).await?;
        let ms = |key: &str| r[key].as_f64().unwrap_or(0.0) / 1000.0;
        Ok(Report {
            deliveries: r["deliveries"].as_u64().unwrap_or(0),
            messages: r["messages"].as_u64().unwrap_or(0),
            p50_ms: ms("p50_us"),
            p99_ms: ms("p99_us"),
            complete_p99_ms: ms("complete_p99_us"),
            connected: r["connected"].as_u64().unwrap_or(0),
            rss_mb: r["rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        })
    }

    /// Reports until `enough` holds or `timeout` passes; returns the last.
    pub async fn report_when(
        &mut self,
        timeout: Duration,
        enough: impl Fn(&Report) -> bool,
    ) -> anyhow::Result<Report> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let report = self.report().await?;
            if enough(&report) || tokio::time::Instant::now() >= deadline {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// CPU time the Node.js process has used, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.child
            .id()
            .and_then(crate::services::cpu_seconds)
            .unwrap_or(0.0)
    }

    pub async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Wall-clock Unix microseconds: the clients compare against their own
/// wall clock (same machine).
pub fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}
