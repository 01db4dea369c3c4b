//! Gateway ingest: webhooks/s accepted with a durable JetStream ack, next to
//! the bare JetStream publish-with-ack rate of a plain client, same server,
//! same concurrency.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use clap::Parser;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::load::closed_loop;
use crate::{Options, Row};

/// A webhook with `messages` text messages, unique per (worker, n).
pub fn webhook(worker: usize, n: u64, messages: usize) -> Vec<u8> {
    let items: Vec<_> = (0..messages)
        .map(|i| {
            json!({"from": format!("4477{:08}", (worker * 1000 + i) % 100_000), "id": format!("wamid.bench.{worker}.{n}.{i}"),
                   "timestamp": "1754500000", "type": "text", "text": {"body": "benchmark message"}})
        })
        .collect();
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1"},
        "contacts": [{"wa_id": "447700000000", "profile": {"name": "Bench"}}],
        "messages": items
    }}]}]})
    .to_string()
    .into_bytes()
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let nats = test_support::NatsServer::start().await;
    let namespace = "bench";
    let config = webhook_gateway::Config::parse_from([
        "webhook-gateway",
        "--host=127.0.0.1",
        "--port=0",
        &format!("--nats-url={}", nats.url()),
        &format!("--nats-namespace={namespace}"),
    ]);
    let gateway = webhook_gateway::Application::build(config).await?;
    let url = format!("http://127.0.0.1:{}/webhook", gateway.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.connections)
        .build()?;
    test_support::wait_until(
        "the gateway to accept webhooks",
        Duration::from_secs(20),
        || async {
            client
                .post(&url)
                .body(webhook(9999, 0, 1))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;

    let mut rows = Vec::new();
    let mut gateway_rate = 0.0;
    for messages in [1, 25] {
        let (client, url) = (client.clone(), url.clone());
        let measured = closed_loop(options.connections, options.duration(), move |worker, n| {
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(webhook(worker, n, messages));
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        if messages == 1 {
            gateway_rate = measured.rate();
        }
        rows.push(Row {
            scenario: format!("gateway ingest, {messages}-message webhooks"),
            result: format!(
                "{:.0} webhooks/s ({:.0} messages/s)",
                measured.rate(),
                measured.rate() * messages as f64
            ),
            detail: format!(
                "{}; {} connections; {} failed",
                measured.percentiles(),
                options.connections,
                measured.failed
            ),
        });
    }

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let subject = shared::broker::Names::new(namespace).webhooks();
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
            "{}; {} publishers",
            measured.percentiles(),
            options.connections
        ),
    });
    rows.push(Row {
        scenario: "gateway / bare JetStream".to_owned(),
        result: format!("{:.0}%", 100.0 * gateway_rate / measured.rate().max(1.0)),
        detail: "single-message webhooks vs bare publishes".to_owned(),
    });
    shutdown.cancel();
    Ok(rows)
}
