//! Search at scale: p50/p99 of `Store::search` (the index read and the
//! messages it returns; the HTTP around it is the same for every query)
//! for a common word (one message in ten) and a rare one (ten messages in
//! all), newest 20 first: on SQLite at two sizes side by side (the cost
//! must stay flat as messages grow), and on the MongoDB-wire server; and
//! what the SQLite index costs the write path (the same messages stored
//! with and without it).

use std::sync::Arc;
use std::time::Instant;

use wa_core::domain::Message;
use wa_core::plan::Batch;
use wa_core::search::Query;
use wa_engine::processing::Processor;
use wa_store::{SearchScope, Store};
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

use crate::load::new_histogram;
use crate::services::{has_mongo, mongo_label, mongo_uri, no_mongo};
use crate::{Options, Row};

/// Words most messages are made of.
const FILLER: &[&str] = &[
    "hello",
    "price",
    "when",
    "delivery",
    "thanks",
    "please",
    "tomorrow",
    "size",
    "colour",
    "shop",
    "नमस्ते",
    "कीमत",
    "डिलीवरी",
    "café",
    "livraison",
    "東京",
    "مرحبا",
    "box",
    "gift",
    "paid",
];
const COMMON: &str = "nameplate";
const RARE: &str = "zanzibar";

/// Message `n` of a data set of `total`: filler words, the common word in
/// one of ten, the rare word in ten messages spread over the set.
fn message(n: usize, total: usize) -> Message {
    let mut words: Vec<&str> = (0..8)
        .map(|i| FILLER[(n * 7 + i * 13) % FILLER.len()])
        .collect();
    if n % 10 == 3 {
        words.push(COMMON);
    }
    if n % (total / 10).max(1) == 5 {
        words.push(RARE);
    }
    let at = chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap_or_default();
    Message::outbound_text(
        format!("wamid.search.{n}"),
        &format!("44{:010}", n % 5_000),
        "15550000000".into(),
        format!("{} #{n}", words.join(" ")),
        at,
    )
}

/// Stores `total` messages, 1,000 per change set; the seconds it took.
async fn load(store: Arc<dyn Store>, total: usize) -> anyhow::Result<f64> {
    store.prepare().await?;
    let processor = Processor::new(store);
    let started = Instant::now();
    for start in (0..total).step_by(1_000) {
        let batch = Batch {
            messages: (start..(start + 1_000).min(total))
                .map(|n| message(n, total))
                .collect(),
            ..Batch::default()
        };
        processor.process_batch(&batch).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// p50/p99 of `q` searched `rounds` times (one at a time), newest 20.
async fn latency(
    store: &Arc<dyn Store>,
    q: &str,
    rounds: usize,
) -> anyhow::Result<(String, usize)> {
    let query = Query::parse(q).map_err(|e| anyhow::anyhow!(e.0))?;
    let mut histogram = new_histogram();
    let mut hits = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let page = store.search(&query, &SearchScope::default(), 20).await?;
        histogram.saturating_record(started.elapsed().as_micros() as u64);
        hits = page.messages.len();
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok((
        format!("p50 {:.2} ms, p99 {:.2} ms", ms(0.5), ms(0.99)),
        hits,
    ))
}

async fn measure(
    label: &str,
    store: Arc<dyn Store>,
    total: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let loaded_in = load(store.clone(), total).await?;
    let mut rows = vec![Row {
        scenario: format!("search, {label}, {total} messages: stored"),
        result: format!("{:.0} messages/s", total as f64 / loaded_in),
        detail: format!("{total} messages in {loaded_in:.1} s, index included"),
    }];
    for (what, q) in [
        ("common word (1 in 10)", COMMON),
        ("common word as a prefix", "namepl"),
        ("rare word (10 in all)", RARE),
        ("two words", "nameplate delivery"),
    ] {
        let (result, hits) = latency(&store, q, rounds).await?;
        rows.push(Row {
            scenario: format!("search, {label}, {total} messages: {what}"),
            result,
            detail: format!("`{q}`, newest 20, {hits} returned, {rounds} searches one at a time"),
        });
    }
    Ok(rows)
}

fn sqlite_at(name: &str) -> anyhow::Result<(SqliteStore, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(test_support::unique_name(name));
    let store = SqliteStore::open(&dir.join("store.sqlite3"))?;
    Ok((store, dir))
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let rounds = if options.quick { 200 } else { 1_000 };
    let sizes: [usize; 2] = if options.quick {
        [10_000, 100_000]
    } else {
        [100_000, 1_000_000]
    };
    let mut rows = Vec::new();
    for total in sizes {
        let (store, dir) = sqlite_at("bench_search")?;
        rows.extend(measure("SQLite FTS5", Arc::new(store), total, rounds).await?);
        std::fs::remove_dir_all(&dir).ok();
    }
    // What the index costs the write path: the smaller set, stored again
    // without it, beside the run with it above.
    let (store, dir) = sqlite_at("bench_search_plain")?;
    let plain = load(Arc::new(store.without_search_index()), sizes[0]).await?;
    std::fs::remove_dir_all(&dir).ok();
    rows.push(Row {
        scenario: format!(
            "search, SQLite, {} messages: stored without the index",
            sizes[0]
        ),
        result: format!("{:.0} messages/s", sizes[0] as f64 / plain),
        detail:
            "the same messages and change sets, no FTS5 rows (compare with the row with the index)"
                .to_owned(),
    });

    if !has_mongo() {
        rows.push(Row {
            scenario: "search, MongoDB".to_owned(),
            result: "not run".to_owned(),
            detail: no_mongo(),
        });
        return Ok(rows);
    }
    let total = if options.quick { 10_000 } else { 100_000 };
    let database = test_support::unique_name("bench_search");
    let store = MongoStore::connect(&mongo_uri(&database), "bench").await?;
    let rounds = rounds.min(300);
    rows.extend(measure(&mongo_label(), Arc::new(store), total, rounds).await?);
    Ok(rows)
}
