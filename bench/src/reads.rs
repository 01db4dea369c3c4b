//! Reads at scale: `GET /api/conversations` and a conversation's messages,
//! through HTTP on the all-in-one binary, with a large embedded store.

use std::time::Instant;

use clap::Parser;
use shared::domain::Message;
use shared::store::Store;
use shared::store::sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

use crate::load::closed_loop;
use crate::{Options, Row};

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let (conversations, per_conversation) = if options.quick {
        (1_000, 100)
    } else {
        (10_000, 100)
    };
    let dir = std::env::temp_dir().join(test_support::unique_name("bench-reads"));
    let store = std::sync::Arc::new(SqliteStore::open(&dir.join("store.sqlite3"))?);
    store.prepare().await?;

    // Load straight through the store (the write path is measured elsewhere).
    let started = Instant::now();
    let base = chrono::DateTime::from_timestamp(1_754_500_000, 0).unwrap_or_default();
    for c in 0..conversations {
        let wa_id = format!("44{:010}", c);
        let messages: Vec<Message> = (0..per_conversation)
            .map(|i| {
                let at = base + chrono::Duration::seconds((c * per_conversation + i) as i64);
                Message::outbound_text(
                    format!("wamid.read.{c}.{i}"),
                    &wa_id,
                    "15550000000".into(),
                    format!("message {i}"),
                    at,
                )
            })
            .collect();
        store.insert_messages(&messages).await?;
        store
            .refresh_conversation(&shared::domain::conversation_id(&wa_id))
            .await?;
    }
    let loaded = started.elapsed();
    let total = conversations * per_conversation;

    let mut config =
        whatsapp_clone::ServeConfig::parse_from(["serve", "--host=127.0.0.1", "--port=0"]);
    config.data_dir = dir.clone();
    config.nats_url = None;
    config.mongodb_uri = None;
    let app = whatsapp_clone::Application::build(config).await?;
    let base_url = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::new();

    let mut rows = vec![Row {
        scenario: "reads: data set".to_owned(),
        result: format!("{conversations} conversations, {total} messages"),
        detail: format!("loaded in {:.0} s", loaded.as_secs_f64()),
    }];
    for (what, path) in [
        (
            "GET /api/conversations (newest 50)",
            "/api/conversations".to_owned(),
        ),
        (
            "GET a conversation's messages (newest 50)",
            format!(
                "/api/conversations/conv_44{:010}/messages",
                conversations / 2
            ),
        ),
    ] {
        let (client, url) = (client.clone(), format!("{base_url}{path}"));
        // One connection: latency, not throughput.
        let measured = closed_loop(1, options.duration(), move |_, _| {
            let request = client.get(&url);
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        rows.push(Row {
            scenario: format!("reads: {what}"),
            result: measured.percentiles(),
            detail: format!("{:.0} requests/s on one connection", measured.rate()),
        });
    }
    shutdown.cancel();
    std::fs::remove_dir_all(&dir).ok();
    Ok(rows)
}
