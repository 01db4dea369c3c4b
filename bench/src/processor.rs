//! Processor: messages/s stored into the embedded SQLite store through the
//! processing rules, by batch size (payloads per `Processor::process`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shared::processing::Processor;
use shared::store::sqlite::SqliteStore;
use shared::store::{RawPayload, Store};

use crate::ingest::webhook;
use crate::{Options, Row};

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let total_payloads: usize = if options.quick { 2_000 } else { 20_000 };
    let mut rows = Vec::new();
    let runs = options.batch_sizes.iter().map(|&b| (b, 1));
    for (batch, messages) in runs.chain([(64, 25)]) {
        let dir = std::env::temp_dir().join(test_support::unique_name("bench-processor"));
        let store = Arc::new(SqliteStore::open(&dir.join("store.sqlite3"))?);
        store.prepare().await?;
        let processor = Processor::new(store);
        let payloads: Vec<_> = (0..total_payloads / messages)
            .map(|n| {
                let body = webhook(n % 100, n as u64, messages);
                let raw = RawPayload {
                    id: shared::broker::payload_id(&body),
                    body: Bytes::from(body.clone()),
                    received_at: chrono::Utc::now(),
                };
                shared::webhook::parse(&body).map(|parsed| (raw, parsed))
            })
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        for chunk in payloads.chunks(batch) {
            processor.process(chunk).await?;
        }
        let elapsed = started.elapsed();
        let stored = payloads.len() * messages;
        rows.push(Row {
            scenario: format!(
                "processor into SQLite, {batch} payload(s) × {messages} message(s) per batch"
            ),
            result: format!("{:.0} messages/s", stored as f64 / elapsed.as_secs_f64()),
            detail: format!("{stored} messages in {:.1} s", elapsed.as_secs_f64()),
        });
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(rows)
}
