//! Fan-out: thousands of Socket.IO clients on one api-gateway, every client
//! getting every event, at two client counts side by side (full mode:
//! 1,000 and 10,000). Events take the processor's path: a webhook is
//! parsed and stored (`Processor::process`, whose change set commits the
//! message and its events to the store's outbox), then relayed
//! (`wa_engine::relay::Relay`: the JetStream events stream append, each
//! event once by its id, and the `events_ring` doorbell that wakes the
//! api-gateway's reader), as the processor's worker does. Measured:
//! broadcast latency from just before the store write (per delivery and
//! until the last client has a message), the store-and-append time on its
//! own, and resident memory per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wa_broker_nats::NatsBroker;
use wa_core::domain::RawPayload;
use wa_engine::processing::Processor;
use wa_engine::relay::Relay;
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

use crate::e2e::webhook;
use crate::services::{Service, has_mongo, mongo_label, mongo_uri, stack_env};
use crate::socketio::Clients;
use crate::{Options, Row};

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let sizes = if options.quick {
        [500, 2_000]
    } else {
        [1_000, 10_000]
    };
    let mut rows = Vec::new();
    for clients in sizes {
        rows.extend(broadcast(options, clients).await?);
    }
    Ok(rows)
}

/// The processor's write path, in this process: a store (the stack's
/// MongoDB server; SQLite when none is given) and the NATS event log.
struct Writer {
    processor: Processor,
    relay: Relay,
    store_label: String,
    _dir: Option<std::path::PathBuf>,
}

impl Writer {
    async fn new(nats: &test_support::NatsServer, namespace: &str) -> anyhow::Result<Self> {
        let (store, store_label, dir): (Arc<dyn Store>, String, _) = if has_mongo() {
            let store = MongoStore::connect(&mongo_uri(namespace), "bench").await?;
            (Arc::new(store), mongo_label(), None)
        } else {
            let dir = std::env::temp_dir().join(test_support::unique_name("bench-fanout"));
            let store = SqliteStore::open(&dir.join("store.sqlite3"))?;
            (Arc::new(store), "SQLite".to_owned(), Some(dir))
        };
        store.prepare().await?;
        let bus = NatsBroker::connect(
            &nats.url(),
            namespace,
            "bench-fanout",
            Duration::from_secs(10),
        )
        .await?;
        bus.ensure_streams().await?;
        Ok(Self {
            processor: Processor::new(store.clone()),
            relay: Relay::new(store, Arc::new(bus)),
            store_label,
            _dir: dir,
        })
    }

    /// Stores a 1-message webhook (its text carries the time now) and
    /// relays its events, as the worker does with a batch of one.
    async fn write(&self, n: u64) -> anyhow::Result<()> {
        let body = Bytes::from(webhook(
            447_700_000_000 + n % 10,
            &format!("wamid.fanout.{}.{n}", test_support::unique_name("b")),
        ));
        let raw = RawPayload {
            id: wa_broker::payload_id(&body),
            body: body.clone(),
            received_at: chrono::Utc::now(),
        };
        let parsed = wa_core::webhook::parse(&body)?;
        let events = self.processor.process(vec![(raw, parsed)]).await?;
        anyhow::ensure!(
            self.relay.relay(&events).await,
            "the events could not be appended"
        );
        Ok(())
    }
}

async fn broadcast(options: &Options, clients_wanted: usize) -> anyhow::Result<Vec<Row>> {
    let nats = test_support::NatsServer::start().await;
    let namespace = test_support::unique_name("bench_fanout");
    let mongodb = if has_mongo() {
        mongo_uri(&namespace)
    } else {
        "mongodb://127.0.0.1:1/unused".to_owned()
    };
    let api = Service::start_live("api-gateway", &stack_env(&nats, &namespace, mongodb)).await?;
    let writer = Writer::new(&nats, &namespace).await?;
    // One message first: streams made, connections and store warm.
    writer.write(u64::MAX).await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // settle before measuring
    let idle_mb = api.rss_mb().unwrap_or(0.0);
    let mut clients = Clients::connect(&api.url(), clients_wanted, 0, 0).await?;
    let connected_mb = api.rss_mb().unwrap_or(0.0);
    let per_connection_kb = (connected_mb - idle_mb) * 1024.0 / clients.connected.max(1) as f64;

    let messages: u64 = if options.quick { 10 } else { 25 };
    clients.reset().await?;
    let cpu_before = api.cpu_seconds().unwrap_or(0.0);
    let clients_cpu_before = clients.cpu_seconds();
    let started = Instant::now();
    let mut written = hdrhistogram::Histogram::<u64>::new(3)?;
    for n in 0..messages {
        let at = Instant::now();
        writer.write(n).await?;
        written.record(at.elapsed().as_micros() as u64).ok();
        // 5 a second.
        tokio::time::sleep_until((started + Duration::from_millis(200 * (n + 1))).into()).await;
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
    let ms = |q: f64| written.value_at_quantile(q) as f64 / 1000.0;
    Ok(vec![
        Row {
            scenario: format!(
                "fan-out: {connected} Socket.IO clients on one api-gateway, broadcast through the processor's path"
            ),
            result: format!(
                "until the last client: p99 {:.0} ms; per delivery p50 {:.0} ms, p99 {:.0} ms",
                report.complete_p99_ms, report.p50_ms, report.p99_ms
            ),
            detail: format!(
                "{messages} messages at 5/s, each stored ({}) and appended with its doorbell before it can be delivered: store + append p50 {:.1} ms, p99 {:.1} ms of that; {} of {expected} deliveries, {} clients still connected; api-gateway {cpu:.0}% CPU; clients (one Node.js process) {clients_cpu:.0}% CPU, {:.0} MB",
                writer.store_label,
                ms(0.5),
                ms(0.99),
                report.deliveries,
                report.connected,
                report.rss_mb
            ),
        },
        Row {
            scenario: format!("fan-out: api-gateway memory per connection, {connected} clients"),
            result: format!("{per_connection_kb:.1} KB"),
            detail: format!(
                "RSS {idle_mb:.1} MB idle → {connected_mb:.1} MB connected → {busy_mb:.1} MB after the broadcasts"
            ),
        },
    ])
}
