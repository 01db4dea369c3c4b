//! Footprint: resident memory of each binary, idle.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Options, Row};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The binaries are the release builds next to this one.
fn binary(name: &str) -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| name.into())
}

pub async fn run(_options: &Options) -> anyhow::Result<Vec<Row>> {
    let nats = test_support::NatsServer::start().await;
    let dir = std::env::temp_dir().join(test_support::unique_name("bench-footprint"));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    for name in [
        "webhook-gateway",
        "processor",
        "api-gateway",
        "whatsapp-clone",
    ] {
        let path = binary(name);
        if !path.exists() {
            rows.push(Row {
                scenario: format!("idle RSS, {name}"),
                result: "not built".to_owned(),
                detail: "cargo build --release --workspace --bins".to_owned(),
            });
            continue;
        }
        let mut child = Command::new(path)
            .current_dir(&dir)
            .env("PORT", test_support::free_port().to_string())
            .env("HOST", "127.0.0.1")
            .env("NATS_URL", nats.url())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Settle: connections made, first allocations done.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(child.id());
        child.kill().ok();
        child.wait().ok();
        rows.push(Row {
            scenario: format!("idle RSS, {name}"),
            result: rss.map_or("unknown".to_owned(), |kib| {
                format!("{:.1} MB", kib as f64 / 1024.0)
            }),
            detail: "3 s after start, connected to NATS (MongoDB not required to idle)".to_owned(),
        });
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(rows)
}
