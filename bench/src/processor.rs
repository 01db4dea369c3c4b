//! Processor: messages/s stored through the processing rules (parse, then
//! `Processor::process`), by batch size, into the embedded SQLite store and,
//! when a MongoDB-wire server is given (`TEST_MONGODB_URI`), into MongoDB.
//! Also the cost of parsing one webhook, which the gateway pays too.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wa_core::domain::RawPayload;
use wa_engine::processing::Processor;
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

use crate::ingest::webhook;
use crate::services::mongo_label;
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
        rows.push(measure("SQLite", store, batch, messages, total).await?);
        std::fs::remove_dir_all(&dir).ok();
    }
    match std::env::var("TEST_MONGODB_URI") {
        Ok(_) => {
            // The stand-in server is far slower than mongod: fewer messages,
            // and in quick mode one batch size.
            let (total, runs) = if options.quick {
                (256, vec![(256, 1)])
            } else {
                (500, runs)
            };
            for &(batch, messages) in &runs {
                let database = test_support::unique_name("bench_processor");
                let uri = test_support::mongodb_uri(&database);
                let store = Arc::new(MongoStore::connect(&uri, "bench").await?);
                rows.push(measure(&mongo_label(), store, batch, messages, total).await?);
            }
        }
        Err(_) => rows.push(Row {
            scenario: "processor into MongoDB".to_owned(),
            result: "not run".to_owned(),
            detail: "set TEST_MONGODB_URI (scripts/bench.sh does)".to_owned(),
        }),
    }
    Ok(rows)
}

/// `total` messages in payloads of `messages`, stored `batch` payloads at a
/// time, as the worker does: parse, then process.
async fn measure(
    label: &str,
    store: Arc<dyn Store>,
    batch: usize,
    messages: usize,
    total: usize,
) -> anyhow::Result<Row> {
    store.prepare().await?;
    let processor = Processor::new(store);
    let bodies: Vec<Bytes> = (0..total / messages)
        .map(|n| Bytes::from(webhook(n % 100, n as u64, messages)))
        .collect();
    let started = Instant::now();
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
        processor.process(parsed).await?;
    }
    let elapsed = started.elapsed();
    let stored = bodies.len() * messages;
    Ok(Row {
        scenario: format!(
            "processor into {label}, {batch} payload(s) × {messages} message(s) per batch"
        ),
        result: format!("{:.0} messages/s", stored as f64 / elapsed.as_secs_f64()),
        detail: format!(
            "{stored} messages in {:.1} s, 100 conversations",
            elapsed.as_secs_f64()
        ),
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
