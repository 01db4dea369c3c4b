//! Fan-out: 10,000 Socket.IO clients on one api-gateway, every client
//! getting every event. Events are published on NATS the way the processor
//! publishes them, so the api-gateway alone is measured: broadcast latency
//! (until the last client has a message) and resident memory per connection.

use std::time::Duration;

use wa_broker_nats::Names;
use wa_core::domain::{Event, Message};

use crate::services::{Service, stack_env};
use crate::socketio::{Clients, now_micros};
use crate::{Options, Row};

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let clients_wanted = if options.quick { 2_000 } else { 10_000 };
    let nats = test_support::NatsServer::start().await;
    let namespace = test_support::unique_name("bench_fanout");
    // MongoDB only serves REST, which this scenario does not use.
    let mongodb = std::env::var("TEST_MONGODB_URI")
        .map(|_| test_support::mongodb_uri(&namespace))
        .unwrap_or_else(|_| "mongodb://127.0.0.1:1/unused".to_owned());
    let api = Service::start_live("api-gateway", &stack_env(&nats, &namespace, mongodb)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // settle before measuring
    let idle_mb = api.rss_mb().unwrap_or(0.0);
    let mut clients = Clients::connect(&api.url(), clients_wanted, 0, 0).await?;
    let connected_mb = api.rss_mb().unwrap_or(0.0);
    let per_connection_kb = (connected_mb - idle_mb) * 1024.0 / clients.connected.max(1) as f64;

    let nats_client = async_nats::connect(nats.url()).await?;
    let subject = Names::new(&namespace).events();
    let messages: u64 = if options.quick { 10 } else { 25 };
    let cpu_before = api.cpu_seconds().unwrap_or(0.0);
    let clients_cpu_before = clients.cpu_seconds();
    let started = std::time::Instant::now();
    for n in 0..messages {
        let message = Message::outbound_text(
            format!("wamid.fanout.{n}"),
            "447900000000",
            "15550000000".to_owned(),
            format!("sent:{}", now_micros()),
            chrono::Utc::now(),
        );
        let event = serde_json::to_vec(&Event::NewMessage(Box::new(message)))?;
        nats_client.publish(subject.clone(), event.into()).await?;
        nats_client.flush().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = messages * clients.connected;
    let report = clients
        .report_when(Duration::from_secs(60), |r| r.deliveries >= expected)
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = 100.0 * (api.cpu_seconds().unwrap_or(0.0) - cpu_before) / elapsed;
    let clients_cpu = 100.0 * (clients.cpu_seconds() - clients_cpu_before) / elapsed;
    let busy_mb = api.rss_mb().unwrap_or(0.0);
    let connected = clients.connected;
    clients.close().await;
    Ok(vec![
        Row {
            scenario: format!(
                "fan-out: {connected} Socket.IO clients on one api-gateway, broadcast"
            ),
            result: format!(
                "until the last client: p99 {:.0} ms; per delivery p50 {:.0} ms, p99 {:.0} ms",
                report.complete_p99_ms, report.p50_ms, report.p99_ms
            ),
            detail: format!(
                "{messages} messages at 5/s; {} of {expected} deliveries, {} clients still connected; api-gateway {cpu:.0}% CPU; clients (one Node.js process) {clients_cpu:.0}% CPU, {:.0} MB",
                report.deliveries, report.connected, report.rss_mb
            ),
        },
        Row {
            scenario: "fan-out: api-gateway memory per connection".to_owned(),
            result: format!("{per_connection_kb:.1} KB"),
            detail: format!(
                "RSS {idle_mb:.1} MB idle → {connected_mb:.1} MB connected → {busy_mb:.1} MB after the broadcasts"
            ),
        },
    ])
}
