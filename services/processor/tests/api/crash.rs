use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::doc;

use wa_store::Store;
use wa_store_mongo::MongoStore;

use crate::helpers::{Pipeline, spawn_gateway_only};

// 10,000 messages in 200 conversations, 25 per webhook.
const CUSTOMERS: usize = 200;
const PAYLOADS: usize = 400;
const MESSAGES_PER_PAYLOAD: usize = 25;

/// A processor replica in its own OS process, so it can be SIGKILLed.
struct Replica(test_support::KillOnDrop);

impl Replica {
    fn start(p: &Pipeline) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_processor"))
            .env("NATS_URL", test_support::nats_url())
            .env("NATS_NAMESPACE", &p.namespace)
            .env("MONGODB_URI", test_support::mongodb_uri(&p.database))
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("ACK_WAIT_SECS", "3")
            .env("BATCH_SIZE", "64")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self(test_support::KillOnDrop::new(child))
    }

    /// SIGKILL: no chance to finish or ack the batch in hand.
    fn kill(self) {
        self.0.kill();
    }
}

fn payload(n: usize) -> Vec<u8> {
    let customer = format!("7000000{:05}", n % CUSTOMERS);
    let messages: Vec<serde_json::Value> = (0..MESSAGES_PER_PAYLOAD)
        .map(|i| {
            serde_json::json!({
                "from": customer, "id": format!("wamid.crash.{n}.{i}"),
                "timestamp": (1_754_500_000 + n * 10 + i).to_string(),
                "type": "text", "text": {"body": format!("message {i} of payload {n}")}
            })
        })
        .collect();
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "15550000000"},
        "contacts": [{"wa_id": customer, "profile": {"name": format!("Customer {}", n % CUSTOMERS)}}],
        "messages": messages
    }}]}]})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_processors_mid_ingest_loses_duplicates_and_miscounts_nothing() {
    let p = spawn_gateway_only().await;
    let a = Replica::start(&p);
    let b = Replica::start(&p);

    let ingest = {
        let (http, gateway) = (p.http.clone(), p.gateway.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..PAYLOADS)
                .map(|n| {
                    let (http, gateway) = (http.clone(), gateway.clone());
                    async move {
                        loop {
                            let response = http
                                .post(format!("{gateway}/webhook"))
                                .body(payload(n))
                                .send()
                                .await
                                .unwrap();
                            if response.status() == 200 {
                                break;
                            }
                            assert_eq!(
                                response.status(),
                                503,
                                "only a not-yet-ready broker may refuse"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<()>>()
                .await;
        })
    };

    // Each replica is killed once while it works, and replaced.
    let total = (PAYLOADS * MESSAGES_PER_PAYLOAD) as u64;
    let stored = || test_support::count(&p.db, "processed_messages", doc! {});
    let at_least = |n: u64| async move {
        test_support::wait_until(
            "messages to be stored",
            Duration::from_secs(120),
            || async { stored().await >= n },
        )
        .await;
    };
    at_least(total / 5).await;
    a.kill();
    let _a = Replica::start(&p);
    at_least(total / 2).await;
    b.kill();
    let _b = Replica::start(&p);
    ingest.await.unwrap();
    p.drained().await;

    assert_eq!(stored().await, total, "every message stored once");
    let per_customer = (PAYLOADS / CUSTOMERS * MESSAGES_PER_PAYLOAD) as i64;
    for k in 0..CUSTOMERS {
        let c = p.conversation(&format!("conv_7000000{k:05}")).await;
        assert_eq!(
            (
                test_support::int(&c, "messageCount"),
                test_support::int(&c, "unreadCount")
            ),
            (per_customer, per_customer),
            "conversation {k}"
        );
        assert_eq!(c.get_str("userName").unwrap(), format!("Customer {k}"));
    }
    let store = MongoStore::connect(&test_support::mongodb_uri(&p.database), "tests")
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.total_messages,
            stats.inbound,
            stats.status_breakdown["received"],
            stats.total_conversations
        ),
        (total as i64, total as i64, total as i64, CUSTOMERS as i64)
    );
    assert_eq!(
        test_support::count(&p.db, "processed_messages", doc! {"settled": "received"}).await,
        total,
        "every message settled"
    );
}
