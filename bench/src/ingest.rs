//! Gateway ingest: webhooks/s accepted with a durable JetStream ack, next to
//! the bare JetStream publish-with-ack rate of a plain client, same server,
//! same concurrency. The gateway runs as its own process; the load comes
//! from `wrk` (C, cheap on CPU) when installed, else from a Rust client.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use async_nats::jetstream::message::PublishMessage;
use serde_json::{Value, json};

use crate::load::closed_loop;
use crate::services::{Service, cpu_seconds, rss_kib};
use crate::{Options, Row};

/// A webhook with `messages` text messages, unique per (worker, n).
pub fn webhook(worker: usize, n: u64, messages: usize) -> Vec<u8> {
    let items: Vec<_> = (0..messages)
        .map(|i| {
            json!({"from": format!("4477{:08}", (worker * 1000 + i) % 100_000), "id": format!("wamid.bench.{worker}.{n}.{i}"),
                   "timestamp": "1754500000", "type": "text", "text": {"body": "benchmark message"}})
        })
        .collect();
    envelope("447700000000", items)
}

/// Meta's envelope around `messages`, from the business's test number.
pub fn envelope(contact: &str, messages: Vec<Value>) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1"},
        "contacts": [{"wa_id": contact, "profile": {"name": "Bench"}}],
        "messages": messages
    }}]}]})
    .to_string()
    .into_bytes()
}

/// One load run's outcome.
pub struct Load {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests answered with an error status, or not answered.
    pub failed: u64,
    /// Requests answered, whatever the status.
    pub requests: u64,
    pub tool: &'static str,
}

impl Load {
    /// The outcome of a closed loop of reqwest requests.
    pub fn reqwest(measured: &crate::load::Measured) -> Self {
        let ms = |q: f64| measured.latency.value_at_quantile(q) as f64 / 1000.0;
        Load {
            rate: measured.rate(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            failed: measured.failed,
            requests: measured.completed + measured.failed,
            tool: "reqwest",
        }
    }
}

pub fn has_wrk() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// `wrk` with `bench/wrk/webhook.lua`.
fn wrk(url: &str, options: &Options, messages: usize, run: &str) -> anyhow::Result<Load> {
    let messages = messages.to_string();
    run_wrk(
        url,
        "webhook.lua",
        &format!(
            "-t2 -c{} -d{}s",
            options.connections,
            options.duration().as_secs()
        ),
        &[("MESSAGES", messages.as_str()), ("RUN", run)],
    )
}

/// `wrk <shape> --latency -s bench/wrk/<script> <url>` with `env`; parses
/// its summary. `shape` is the threads/connections/duration flags.
pub fn run_wrk(url: &str, script: &str, shape: &str, env: &[(&str, &str)]) -> anyhow::Result<Load> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("wrk")
        .join(script);
    let output = Command::new("wrk")
        .args(shape.split_whitespace())
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .envs(env.iter().copied())
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}");
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let millis = |value: Option<String>| -> f64 {
        let value = value.unwrap_or_default();
        let number = |suffix: &str| {
            value
                .strip_suffix(suffix)
                .and_then(|n| n.parse::<f64>().ok())
        };
        number("us")
            .map(|n| n / 1000.0)
            .or_else(|| number("ms"))
            .or_else(|| number("s").map(|n| n * 1000.0))
            .unwrap_or(f64::NAN)
    };
    let failed = field("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
        // "Socket errors: connect 0, read 0, write 0, timeout 3"
        + field("Socket errors:").map_or(0, |errors| {
            errors
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        });
    // "  123456 requests in 5.00s, 20.00MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    Ok(Load {
        rate: field("Requests/sec:")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0),
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
        failed,
        requests,
        tool: "wrk",
    })
}

/// The Rust fallback: reqwest, closed loop.
async fn reqwest_load(url: &str, options: &Options, messages: usize) -> Load {
    let client = reqwest::Client::new();
    let url = url.to_owned();
    let measured = closed_loop(options.connections, options.duration(), move |worker, n| {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(webhook(worker, n, messages));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    Load::reqwest(&measured)
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let nats = test_support::NatsServer::start().await;
    let namespace = test_support::unique_name("bench_ingest");
    let gateway = Service::start(
        "webhook-gateway",
        &[
            ("NATS_URL", nats.url()),
            ("NATS_NAMESPACE", namespace.clone()),
        ],
    )
    .await?;
    let url = format!("{}/webhook", gateway.url());
    let nats_cpu = || nats.pid().and_then(cpu_seconds).unwrap_or(0.0);
    let own_cpu = || cpu_seconds(std::process::id()).unwrap_or(0.0);
    let seconds = options.duration().as_secs_f64();
    let share = |before: f64, after: f64| 100.0 * (after - before) / seconds;
    let use_wrk = has_wrk();

    let mut rows = Vec::new();
    let mut gateway_rate = 0.0;
    for messages in [1, 25] {
        let (gateway_before, nats_before) = (gateway.cpu_seconds().unwrap_or(0.0), nats_cpu());
        let load = if use_wrk {
            wrk(&url, options, messages, &namespace)?
        } else {
            reqwest_load(&url, options, messages).await
        };
        if messages == 1 {
            gateway_rate = load.rate;
        }
        rows.push(Row {
            scenario: format!("gateway ingest, {messages}-message webhooks"),
            result: format!(
                "{:.0} webhooks/s ({:.0} messages/s)",
                load.rate,
                load.rate * messages as f64
            ),
            detail: format!(
                "p50 {:.2} ms, p99 {:.2} ms; {} connections ({}); {} failed; CPU: gateway {:.0}%, nats-server {:.0}%; gateway RSS {:.0} MB",
                load.p50_ms,
                load.p99_ms,
                options.connections,
                load.tool,
                load.failed,
                share(gateway_before, gateway.cpu_seconds().unwrap_or(0.0)),
                share(nats_before, nats_cpu()),
                gateway.rss_mb().unwrap_or(0.0)
            ),
        });
    }

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let subject = wa_broker_nats::Names::new(&namespace).webhooks();
    let (own_before, nats_before) = (own_cpu(), nats_cpu());
    let measured = closed_loop(options.connections, options.duration(), move |worker, n| {
        let (js, subject) = (js.clone(), subject.clone());
        let body = webhook(worker + 10_000, n, 1);
        async move {
            let message = PublishMessage::build()
                .payload(body.into())
                .message_id(format!("bare-{worker}-{n}"));
            match js.send_publish(subject, message).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    rows.push(Row {
        scenario: "bare JetStream publish + ack (same payload)".to_owned(),
        result: format!("{:.0} publishes/s", measured.rate()),
        detail: format!(
            "{}; {} concurrent publishers (async-nats); CPU: publisher {:.0}%, nats-server {:.0}%; nats-server RSS {:.0} MB",
            measured.percentiles(),
            options.connections,
            share(own_before, own_cpu()),
            share(nats_before, nats_cpu()),
            nats.pid().and_then(rss_kib).unwrap_or(0) as f64 / 1024.0
        ),
    });
    rows.push(Row {
        scenario: "gateway / bare JetStream".to_owned(),
        result: format!("{:.0}%", 100.0 * gateway_rate / measured.rate().max(1.0)),
        detail: "single-message webhooks vs bare publishes".to_owned(),
    });
    Ok(rows)
}
