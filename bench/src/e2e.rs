//! End to end: webhook POST → `newMessage` at a Socket.IO client, at fixed
//! offered rates, with 1,000 connected clients; for the stack (three
//! service processes, NATS, MongoDB) and for the all-in-one binary.
//!
//! Client i narrows its stream to conversation i (`subscribe`), and the
//! messages go round-robin over those 1,000 conversations: each message is
//! delivered once, to the agent who has that conversation open. (Every
//! client getting every message would be 2 million deliveries a second at
//! 2k/s; the fan-out scenario measures broadcast on its own.)
//!
//! Each row also gives the CPU time each process spent per delivered
//! message, from `/proc/<pid>/stat`, over the run and until its last
//! message arrived: for the stack, the webhook-gateway, processor and
//! nats-server (the stack's own cost, without the database) and the
//! api-gateway that delivers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ingest::envelope;
use crate::services::{
    Service, cpu_seconds, has_mongo, mongo_label, mongo_uri, no_mongo, stack_env,
};
use crate::socketio::{Clients, now_micros};
use crate::{Options, Row};

const CLIENTS: usize = 1_000;
const FIRST_CUSTOMER: u64 = 447_800_000_000;

/// A 1-message webhook whose text carries its send time.
pub fn webhook(customer: u64, id: &str) -> Vec<u8> {
    let now = now_micros();
    let message = json!({"from": customer.to_string(), "id": id, "timestamp": (now / 1_000_000).to_string(),
                         "type": "text", "text": {"body": format!("sent:{now}")}});
    envelope(&customer.to_string(), vec![message])
}

/// Posts `rate` webhooks a second for `duration`, open loop (a slow server
/// does not slow the sender). Returns (accepted, refused).
async fn offer(url: &str, rate: u64, duration: Duration, run: &str) -> (u64, u64) {
    let client = reqwest::Client::new();
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut sent = 0_u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut requests = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let customer = FIRST_CUSTOMER + sent % CLIENTS as u64;
            let body = webhook(customer, &format!("wamid.e2e.{run}.{sent}"));
            let request = client
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            let (accepted, refused) = (accepted.clone(), refused.clone());
            requests.spawn(async move {
                let ok = request.send().await.is_ok_and(|r| r.status() == 200);
                let counter = if ok { accepted } else { refused };
                counter.fetch_add(1, Ordering::Relaxed);
            });
            sent += 1;
        }
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

struct Setup {
    label: String,
    webhook_url: String,
    socket_url: String,
    services: Vec<Service>,
    /// The stack's own nats-server (its CPU is the stack's).
    nats: Option<test_support::NatsServer>,
    _dir: Option<std::path::PathBuf>,
}

async fn stack() -> anyhow::Result<Option<Setup>> {
    if !has_mongo() {
        return Ok(None);
    }
    let nats = test_support::NatsServer::start().await;
    let database = test_support::unique_name("bench_e2e");
    let env = stack_env(&nats, &database, mongo_uri(&database));
    let processor = Service::start("processor", &env).await?;
    let api = Service::start("api-gateway", &env).await?;
    let gateway = Service::start("webhook-gateway", &env).await?;
    Ok(Some(Setup {
        label: format!("stack ({})", mongo_label()),
        webhook_url: format!("{}/webhook", gateway.url()),
        socket_url: api.url(),
        services: vec![gateway, processor, api],
        nats: Some(nats),
        _dir: None,
    }))
}

async fn all_in_one() -> anyhow::Result<Setup> {
    let dir = std::env::temp_dir().join(test_support::unique_name("bench-e2e"));
    let app = Service::start("whatsapp-clone", &[("DATA_DIR", dir.display().to_string())]).await?;
    Ok(Setup {
        label: "all-in-one".to_owned(),
        webhook_url: format!("{}/webhook", app.url()),
        socket_url: app.url(),
        services: vec![app],
        nats: None,
        _dir: Some(dir),
    })
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut setups = vec![all_in_one().await?];
    match stack().await? {
        Some(setup) => setups.push(setup),
        None => rows.push(Row {
            scenario: "end to end, stack".to_owned(),
            result: "not run".to_owned(),
            detail: no_mongo(),
        }),
    }
    let duration = Duration::from_secs(if options.quick { 3 } else { 10 });
    // How long a run's messages may take to arrive before the setup counts
    // as fallen behind (and higher rates are skipped).
    let drain = Duration::from_secs(if options.quick { 10 } else { 20 });
    for setup in setups.iter().rev() {
        let mut clients =
            Clients::connect(&setup.socket_url, CLIENTS, CLIENTS, FIRST_CUSTOMER).await?;
        // Warm-up: connections and caches hot, first conversations exist.
        let (warm, _) = offer(&setup.webhook_url, 200, Duration::from_secs(1), "warm").await;
        let warmed = clients.report_when(drain, |r| r.messages >= warm).await?;
        let mut behind = warmed.messages < warm;
        // 20/s first: the pipeline's latency when nothing queues; 500/s
        // the stack's target rate.
        for rate in [20, 500, 1_000, 2_000, 5_000] {
            if behind {
                rows.push(Row {
                    scenario: format!("end to end, {}, {rate} messages/s offered", setup.label),
                    result: "not run".to_owned(),
                    detail: "fell behind at a lower rate".to_owned(),
                });
                continue;
            }
            clients.reset().await?;
            let cpu_before = cpu(setup);
            let started = Instant::now();
            let run = format!("{}-{rate}", setup.label);
            let (accepted, refused) = offer(&setup.webhook_url, rate, duration, &run).await;
            let report = clients
                .report_when(drain, |r| r.messages >= accepted)
                .await?;
            // CPU from the first POST until the last delivery (or the end
            // of the wait for it).
            let elapsed = started.elapsed().as_secs_f64();
            let cpu_after = cpu(setup);
            behind = report.messages < accepted;
            let delivered = report.messages.max(1) as f64;
            let spent: Vec<(&str, f64)> = cpu_before
                .iter()
                .zip(&cpu_after)
                .map(|((name, before), (_, after))| (*name, after - before))
                .collect();
            let mut usage: Vec<String> = setup
                .services
                .iter()
                .zip(&spent)
                .map(|(s, (_, seconds))| {
                    format!(
                        "{} {:.0}% CPU, {:.0} MB",
                        s.name,
                        100.0 * seconds / elapsed,
                        s.rss_mb().unwrap_or(0.0)
                    )
                })
                .collect();
            let per_message = |names: &[&str]| -> f64 {
                spent
                    .iter()
                    .filter(|(name, _)| names.contains(name))
                    .map(|(_, seconds)| seconds)
                    .sum::<f64>()
                    * 1e6
                    / delivered
            };
            if setup.nats.is_some() {
                let own = ["webhook-gateway", "processor", "nats-server"];
                usage.push(format!(
                    "CPU per delivered message over {elapsed:.1} s: **{:.0} µs for webhook-gateway + processor + nats-server** ({:.0} + {:.0} + {:.0} µs; database not counted), api-gateway {:.0} µs",
                    per_message(&own),
                    per_message(&own[..1]),
                    per_message(&own[1..2]),
                    per_message(&own[2..]),
                    per_message(&["api-gateway"]),
                ));
            } else {
                usage.push(format!(
                    "CPU per delivered message over {elapsed:.1} s: {:.0} µs",
                    per_message(&["whatsapp-clone"])
                ));
            }
            rows.push(Row {
                scenario: format!(
                    "end to end, {}, {rate} messages/s offered, {CLIENTS} clients",
                    setup.label
                ),
                result: format!("p50 {:.1} ms, p99 {:.1} ms", report.p50_ms, report.p99_ms),
                detail: format!(
                    "{} of {accepted} accepted delivered ({refused} refused) in {:.0} s; {}",
                    report.messages,
                    duration.as_secs_f64(),
                    usage.join("; ")
                ),
            });
        }
        clients.close().await;
    }
    Ok(rows)
}

/// CPU seconds so far of each process of `setup`: its services, in order,
/// then its nats-server.
fn cpu(setup: &Setup) -> Vec<(&'static str, f64)> {
    let mut cpu: Vec<(&'static str, f64)> = setup
        .services
        .iter()
        .map(|s| (s.name, s.cpu_seconds().unwrap_or(0.0)))
        .collect();
    if let Some(pid) = setup.nats.as_ref().and_then(test_support::NatsServer::pid) {
        cpu.push(("nats-server", cpu_seconds(pid).unwrap_or(0.0)));
    }
    cpu
}
