use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use whatsapp_clone::{Application, ServeConfig};

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(test_support::unique_name("clone"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Embedded defaults, whatever the environment says.
pub fn embedded_config(data_dir: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig::parse_from(["serve", "--host=127.0.0.1", "--port=0"]);
    config.data_dir = data_dir.to_owned();
    config.nats_url = None;
    config.mongodb_uri = None;
    config
}

pub struct InProcess {
    pub url: String,
    shutdown: CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn(config: ServeConfig) -> InProcess {
    let app = Application::build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    InProcess { url, shutdown }
}

/// The real binary, in `dir`, with no environment but PATH and PORT.
pub struct Server {
    pub url: String,
    child: test_support::KillOnDrop,
}

impl Server {
    pub async fn start(dir: &std::path::Path, port: u16) -> Self {
        Self::start_with(dir, port, &[("RUST_LOG", "warn")], None).await
    }

    /// [`Server::start`] with `env` too, and its output (stdout and
    /// stderr) in `log`.
    pub async fn start_with(
        dir: &std::path::Path,
        port: u16,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let (stdout, stderr) = match log {
            Some(log) => {
                let file = std::fs::File::create(log).unwrap();
                (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_whatsapp-clone"))
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let child = test_support::KillOnDrop::new(child);
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/healthz");
        test_support::wait_until("the binary to serve", Duration::from_secs(30), || async {
            reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        Self { url, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no graceful anything.
    pub fn kill(self) {
        self.child.kill();
    }

    /// SIGTERM: how long it took to exit (`None`: not within 15 s).
    pub async fn terminate(self) -> Option<Duration> {
        test_support::time_to_exit_after_sigterm(self.child).await
    }
}

pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

pub async fn total_messages(url: &str) -> i64 {
    get_json(&format!("{url}/api/stats")).await["totalMessages"]
        .as_i64()
        .unwrap_or(-1)
}

/// A webhook envelope around one `messages` change value.
pub fn webhook(value: serde_json::Value) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": value}]}]})
    .to_string()
}

/// Now, as WhatsApp writes times (Unix seconds, a string).
pub fn now_secs() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}
