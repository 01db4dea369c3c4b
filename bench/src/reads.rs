//! Reads at scale: `GET /api/conversations` and a conversation's messages,
//! over HTTP, with a large store: the embedded SQLite store behind the
//! all-in-one binary, and MongoDB (`--mongo`: the replica set by default) behind the
//! api-gateway.

use std::sync::Arc;
use std::time::Instant;

use wa_core::domain::{Message, conversation_id};
use wa_core::plan::Batch;
use wa_engine::processing::Processor;
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

use crate::load::closed_loop;
use crate::services::{Service, has_mongo, mongo_label, mongo_uri, no_mongo, stack_env};
use crate::{Options, Row};

const PER_CONVERSATION: usize = 100;

fn wa_id(conversation: usize) -> String {
    format!("44{conversation:010}")
}

/// `conversations` × 100 outbound messages, stored by the processing
/// rules without webhooks (the write path is measured elsewhere), 100
/// conversations a go.
async fn load(store: Arc<dyn Store>, conversations: usize) -> anyhow::Result<f64> {
    store.prepare().await?;
    let processor = Processor::new(store);
    let started = Instant::now();
    let base = chrono::DateTime::from_timestamp(1_754_500_000, 0).unwrap_or_default();
    let all: Vec<usize> = (0..conversations).collect();
    for chunk in all.chunks(100) {
        let messages: Vec<Message> = chunk
            .iter()
            .flat_map(|&c| {
                (0..PER_CONVERSATION).map(move |i| {
                    let at = base + chrono::Duration::seconds((c * PER_CONVERSATION + i) as i64);
                    Message::outbound_text(
                        format!("wamid.read.{c}.{i}"),
                        &wa_id(c),
                        "15550000000".into(),
                        format!("message {i}"),
                        at,
                    )
                })
            })
            .collect();
        let batch = Batch {
            messages,
            ..Batch::default()
        };
        processor.process_batch(&batch).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// p50/p99 of the two reads a chat screen makes, on one connection.
async fn measure(
    label: &str,
    service: &Service,
    conversations: usize,
    loaded_in: f64,
    options: &Options,
) -> Vec<Row> {
    let client = reqwest::Client::new();
    let mut rows = vec![Row {
        scenario: format!("reads, {label}: data set"),
        result: format!(
            "{conversations} conversations, {} messages",
            conversations * PER_CONVERSATION
        ),
        detail: format!("loaded in {loaded_in:.0} s"),
    }];
    let middle = conversation_id(&wa_id(conversations / 2));
    for (what, path) in [
        (
            "GET /api/conversations (newest 50)",
            "/api/conversations".to_owned(),
        ),
        (
            "a conversation's messages (newest 50)",
            format!("/api/conversations/{middle}/messages"),
        ),
    ] {
        let (client, url) = (client.clone(), format!("{}{path}", service.url()));
        // One connection: latency, not throughput.
        let measured = closed_loop(1, options.duration(), move |_, _| {
            let request = client.get(&url);
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        rows.push(Row {
            scenario: format!("reads, {label}: {what}"),
            result: measured.percentiles(),
            detail: format!(
                "{:.0} requests/s on one connection; {} failed; {} RSS {:.0} MB",
                measured.rate(),
                measured.failed,
                service.name,
                service.rss_mb().unwrap_or(0.0)
            ),
        });
    }
    rows
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let conversations = if options.quick { 1_000 } else { 10_000 };
    let dir = std::env::temp_dir().join(test_support::unique_name("bench-reads"));
    {
        let store = Arc::new(SqliteStore::open(&dir.join("store.sqlite3"))?);
        let loaded_in = load(store, conversations).await?;
        let app =
            Service::start("whatsapp-clone", &[("DATA_DIR", dir.display().to_string())]).await?;
        rows.extend(measure("SQLite", &app, conversations, loaded_in, options).await);
    }
    std::fs::remove_dir_all(&dir).ok();

    if !has_mongo() {
        rows.push(Row {
            scenario: "reads, MongoDB".to_owned(),
            result: "not run".to_owned(),
            detail: no_mongo(),
        });
        return Ok(rows);
    }
    // The stand-in server loads slowly: a smaller data set.
    let conversations = if options.quick { 20 } else { 100 };
    let database = test_support::unique_name("bench_reads");
    let uri = mongo_uri(&database);
    let store = Arc::new(MongoStore::connect(&uri, "bench").await?);
    let loaded_in = load(store, conversations).await?;
    let nats = test_support::NatsServer::start().await;
    let api = Service::start("api-gateway", &stack_env(&nats, &database, uri)).await?;
    rows.extend(measure(&mongo_label(), &api, conversations, loaded_in, options).await);
    Ok(rows)
}
