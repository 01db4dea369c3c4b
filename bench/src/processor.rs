//! Processor: messages/s stored through the processing rules (parse,
//! `Processor::process`, clear the outbox), by batch size, into the
//! embedded SQLite store and, when a MongoDB-wire server is given, into
//! MongoDB (`--mongo`: the replica set by default; the other server too at
//! two batch sizes), with the documents written per stored message counted
//! from the driver's command events. Also the cost of parsing one webhook,
//! which the gateway pays too.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wa_core::domain::{Event, RawPayload};
use wa_engine::processing::Processor;
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

use crate::commands::Tally;
use crate::ingest::webhook;
use crate::services::{MongoMode, has_mongo, mongo, no_mongo};
use crate::{Options, Row};

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let total: usize = if options.quick { 2_000 } else { 20_000 };
    let mut rows = vec![parse_cost(total)?];
    let runs: Vec<(usize, usize)> = options
        .batch_sizes
        .iter()
        .map(|&b| (b, 1))
        .chain([(64, 25)])
        .collect();
    for &(batch, messages) in &runs {
        let dir = std::env::temp_dir().join(test_support::unique_name("bench-processor"));
        let store = Arc::new(SqliteStore::open(&dir.join("store.sqlite3"))?);
        rows.push(measure("SQLite", store, batch, messages, total, None).await?);
        std::fs::remove_dir_all(&dir).ok();
    }
    if !has_mongo() {
        rows.push(Row {
            scenario: "processor into MongoDB".to_owned(),
            result: "not run".to_owned(),
            detail: no_mongo(),
        });
        return Ok(rows);
    }
    // The stand-in server is far slower than mongod: fewer messages, and in
    // quick mode one batch size.
    let (total, runs) = if options.quick {
        (256, vec![(1, 1), (256, 1)])
    } else {
        (500, runs)
    };
    let chosen = mongo();
    for &(batch, messages) in &runs {
        rows.push(into_mongo(chosen, batch, messages, total).await?);
    }
    // The other server too (documents per message side by side: without
    // transactions the store journals more), at two batch sizes.
    let other = match chosen {
        MongoMode::ReplicaSet => MongoMode::Standalone,
        MongoMode::Standalone => MongoMode::ReplicaSet,
    };
    if other.available() && std::env::var(other.env()) != std::env::var(chosen.env()) {
        for (batch, messages) in [(1, 1), (256, 1)] {
            rows.push(into_mongo(other, batch, messages, 256).await?);
        }
    }
    Ok(rows)
}

/// [`measure`] into a fresh database on `mode`'s server, counting what the
/// store writes with the driver's command events.
async fn into_mongo(
    mode: MongoMode,
    batch: usize,
    messages: usize,
    total: usize,
) -> anyhow::Result<Row> {
    let database = test_support::unique_name("bench_processor");
    let (client, name, tally) = Tally::client(&mode.uri(&database)).await?;
    let store = Arc::new(MongoStore::from_client(&client, &name));
    let row = measure(&mode.label(), store, batch, messages, total, Some(&tally)).await;
    client.database(&name).drop().await.ok();
    row
}

/// `total` messages in payloads of `messages`, stored `batch` payloads at a
/// time, as the worker does: parse, process, then clear the batch's events
/// from the outbox (what the relay does once it has appended them; the
/// append itself is not part of this scenario). With `tally`, what the
/// store wrote per stored message.
async fn measure(
    label: &str,
    store: Arc<dyn Store>,
    batch: usize,
    messages: usize,
    total: usize,
    tally: Option<&Tally>,
) -> anyhow::Result<Row> {
    store.prepare().await?;
    let processor = Processor::new(store.clone());
    let bodies: Vec<Bytes> = (0..total / messages)
        .map(|n| Bytes::from(webhook(n % 100, n as u64, messages)))
        .collect();
    if let Some(tally) = tally {
        tally.reset();
    }
    let started = Instant::now();
    let mut events = 0;
    for chunk in bodies.chunks(batch) {
        let parsed = chunk
            .iter()
            .map(|body| {
                let raw = RawPayload {
                    id: wa_broker::payload_id(body),
                    body: body.clone(),
                    received_at: chrono::Utc::now(),
                };
                wa_core::webhook::parse(body).map(|parsed| (raw, parsed))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stored = processor.process(parsed).await?;
        let ids: Vec<String> = stored.iter().map(Event::id).collect();
        store.relayed(&ids).await?;
        events += ids.len();
    }
    let elapsed = started.elapsed();
    let stored = bodies.len() * messages;
    let batches = bodies.len().div_ceil(batch);
    // Payload n comes from sender n % 100; its messages each name their
    // own customer (`ingest::webhook`).
    let conversations = bodies.len().min(100) * messages;
    let mut detail = format!(
        "{stored} messages in {:.1} s, {conversations} conversations; {:.2} events per message",
        elapsed.as_secs_f64(),
        events as f64 / stored as f64
    );
    if let Some(tally) = tally {
        let counts = tally.counts();
        detail.push_str(&format!(
            "; **{:.2} documents written per message** ({}); per batch {:.1} write and {:.1} read commands",
            counts.documents() as f64 / stored as f64,
            counts.by_collection(stored as f64).join("; "),
            counts.write_commands() as f64 / batches as f64,
            counts.read_commands() as f64 / batches as f64,
        ));
    }
    Ok(Row {
        scenario: format!(
            "processor into {label}, {batch} payload(s) × {messages} message(s) per batch"
        ),
        result: format!("{:.0} messages/s", stored as f64 / elapsed.as_secs_f64()),
        detail,
    })
}

/// CPU time to parse (and hash, for the broker id) a 1-message webhook.
fn parse_cost(total: usize) -> anyhow::Result<Row> {
    let bodies: Vec<Vec<u8>> = (0..total * 5)
        .map(|n| webhook(n % 100, n as u64, 1))
        .collect();
    let started = Instant::now();
    for body in &bodies {
        wa_core::webhook::parse(body)?;
    }
    let parse = started.elapsed();
    let started = Instant::now();
    for body in &bodies {
        std::hint::black_box(wa_broker::payload_id(body));
    }
    let hash = started.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / bodies.len() as f64;
    Ok(Row {
        scenario: "parse a 1-message webhook (gateway and processor)".to_owned(),
        result: format!("{:.1} µs", per(parse)),
        detail: format!(
            "{} bytes; SHA-256 for the broker id {:.1} µs",
            bodies.first().map_or(0, Vec::len),
            per(hash)
        ),
    })
}
