use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::doc;

use wa_store::Store;
use wa_store_mongo::MongoStore;

use test_support::Mongo;

use crate::helpers::{Pipeline, spawn_stack};
use test_support::stack::StackConfig;

// 10,000 messages in 200 conversations, 25 per webhook.
const CUSTOMERS: usize = 200;
const PAYLOADS: usize = 400;
const MESSAGES_PER_PAYLOAD: usize = 25;

/// A processor replica in its own OS process, so it can be SIGKILLed.
struct Replica(test_support::KillOnDrop);

impl Replica {
    async fn start(p: &Pipeline) -> Self {
        let (child, _) = test_support::start_binary(
            env!("CARGO_BIN_EXE_processor"),
            &[
                ("NATS_URL", test_support::nats_url()),
                ("NATS_NAMESPACE", p.namespace.clone()),
                ("MONGODB_URI", p.mongo.uri(&p.database)),
                ("ACK_WAIT_SECS", "3".to_owned()),
                ("BATCH_SIZE", "64".to_owned()),
            ],
        )
        .await;
        Self(child)
    }

    /// SIGKILL: no chance to finish or ack the batch in hand.
    fn kill(self) {
        self.0.kill();
    }
}

/// The webhooks a test feeds: payload `n` carries `messages_per_payload`
/// texts from customer `<customer_prefix><n % customers, 5 digits>`, ids
/// `wamid.<id_tag>.<n>.<i>`. Each test has its own prefix and tag, so its
/// conversations and ids are its own.
struct Load {
    customers: usize,
    messages_per_payload: usize,
    customer_prefix: &'static str,
    id_tag: &'static str,
    first_timestamp: usize,
}

impl Load {
    fn payload(&self, n: usize) -> Vec<u8> {
        let customer = format!("{}{:05}", self.customer_prefix, n % self.customers);
        let messages: Vec<serde_json::Value> = (0..self.messages_per_payload)
            .map(|i| {
                serde_json::json!({
                    "from": customer, "id": format!("wamid.{}.{n}.{i}", self.id_tag),
                    "timestamp": (self.first_timestamp + n * 10 + i).to_string(),
                    "type": "text", "text": {"body": format!("message {i} of payload {n}")}
                })
            })
            .collect();
        serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
            "metadata": {"display_phone_number": "15550000000"},
            "contacts": [{"wa_id": customer, "profile": {"name": format!("Customer {}", n % self.customers)}}],
            "messages": messages
        }}]}]})
        .to_string()
        .into_bytes()
    }
}

const MID_INGEST: Load = Load {
    customers: CUSTOMERS,
    messages_per_payload: MESSAGES_PER_PAYLOAD,
    customer_prefix: "7000000",
    id_tag: "crash",
    first_timestamp: 1_754_500_000,
};

/// The stats of the database at `uri`: `total` messages, every one
/// inbound and received, in `customers` conversations.
async fn assert_stats(uri: &str, total: u64, customers: usize) {
    let store = MongoStore::connect(uri, "tests").await.unwrap();
    let stats = store.stats(None).await.unwrap();
    assert_eq!(
        (
            stats.total_messages,
            stats.inbound,
            stats.status_breakdown["received"],
            stats.total_conversations
        ),
        (total as i64, total as i64, total as i64, customers as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_processors_mid_ingest_loses_duplicates_and_miscounts_nothing() {
    // The standalone server: the non-transactional fallback, where a
    // change set's steps are journaled instead.
    let p = spawn_stack(StackConfig::new().mongo(Mongo::Default).processors(0)).await;
    let a = Replica::start(&p).await;
    let b = Replica::start(&p).await;

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
                                .body(MID_INGEST.payload(n))
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
    let _a = Replica::start(&p).await;
    at_least(total / 2).await;
    b.kill();
    let _b = Replica::start(&p).await;
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
    assert_stats(&p.mongo.uri(&p.database), total, CUSTOMERS).await;
    assert_eq!(
        test_support::count(&p.db, "processed_messages", doc! {"settled": "received"}).await,
        total,
        "every message settled"
    );
}

/// The production path: on the replica set each batch is one transaction.
/// The real processor binary is fed webhooks through NATS and SIGKILLed
/// three times while it writes, each time half-way between two commits,
/// then started again: every message is stored once, every count is
/// right, and every event is in the log once (what a killed writer
/// committed but did not relay, the sweeper relays).
///
/// MongoDB aborts a dead client's transaction; the stand-in
/// (`scripts/nx-replica-set.py`) keeps its writes instead, so there a
/// kill leaves a change set half-applied (seen: 80 messages without their
/// `settled` mark after most kills), which the next delivery completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_the_processor_mid_transaction_on_the_replica_set_loses_and_doubles_nothing() {
    use wa_broker::{EventBus, Ingest, Queue};
    use wa_core::domain::Event;

    const CUSTOMERS: usize = 60;
    const PAYLOADS: usize = 240;
    const MESSAGES_PER_PAYLOAD: usize = 10;
    let total = (PAYLOADS * MESSAGES_PER_PAYLOAD) as u64;

    let namespace = test_support::unique_name("rscrash");
    let mongo = Mongo::ReplicaSet;
    let db = mongo.database(&namespace).await;
    let broker = wa_broker_nats::NatsBroker::connect(
        &test_support::nats_url(),
        &namespace,
        "crash-test",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // Fed through NATS, as the gateway does: de-duplicated by the body's hash.
    let load = Load {
        customers: CUSTOMERS,
        messages_per_payload: MESSAGES_PER_PAYLOAD,
        customer_prefix: "7100000",
        id_tag: "rscrash",
        first_timestamp: 1_754_600_000,
    };
    for n in 0..PAYLOADS {
        let body = load.payload(n);
        let enqueued = broker
            .enqueue(Ingest::Webhook, &wa_broker::payload_id(&body), body.into())
            .await
            .unwrap();
        assert!(!enqueued.duplicate);
    }

    let env = [
        ("NATS_URL", test_support::nats_url()),
        ("NATS_NAMESPACE", namespace.clone()),
        ("MONGODB_URI", mongo.uri(&namespace)),
        ("ACK_WAIT_SECS", "3".to_owned()),
        // Small batches: many transactions, each short.
        ("BATCH_SIZE", "8".to_owned()),
    ];
    let start = || test_support::start_binary(env!("CARGO_BIN_EXE_processor"), &env);
    let stored = || test_support::count(&db, "processed_messages", doc! {});
    let mut kills = Vec::new();
    for share in [10, 35, 60] {
        let (processor, _) = start().await;
        let threshold = total * share / 100;
        test_support::wait_until(
            "the processor to store more messages",
            Duration::from_secs(120),
            || async { stored().await >= threshold },
        )
        .await;
        // Aim at the middle of a transaction: measure the time between two
        // commits, then kill half that time after the next one.
        let mut seen = stored().await;
        let mut commits = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while commits.len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the processor stopped committing ({seen} of {total} stored)"
            );
            let now = stored().await;
            if now != seen {
                seen = now;
                commits.push(tokio::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let period = commits[2] - commits[1];
        tokio::time::sleep_until(commits[2] + period / 2).await;
        // SIGKILL: the transaction in hand is never committed or aborted
        // by its writer, and its batch is never acknowledged.
        processor.kill();
        kills.push(stored().await);
    }
    assert!(
        kills.iter().all(|&n| n < total),
        "every kill came while there was work left: {kills:?} of {total}"
    );
    let (_processor, _) = start().await;
    test_support::wait_until(
        "every message to be stored",
        Duration::from_secs(180),
        || async { stored().await >= total },
    )
    .await;
    test_support::wait_until_drained(
        &test_support::jetstream_context().await,
        &broker.names().webhook_stream(),
        Duration::from_secs(60),
    )
    .await;

    assert_eq!(stored().await, total, "every message stored once");
    assert_eq!(
        test_support::count(&db, "processed_messages", doc! {"settled": "received"}).await,
        total,
        "every message settled"
    );
    let per_customer = (PAYLOADS / CUSTOMERS * MESSAGES_PER_PAYLOAD) as i64;
    for k in 0..CUSTOMERS {
        let c = db
            .collection::<mongodb::bson::Document>("conversations")
            .find_one(doc! {"_id": format!("conv_7100000{k:05}")})
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("conversation {k} has no summary"));
        assert_eq!(
            (
                test_support::int(&c, "messageCount"),
                test_support::int(&c, "unreadCount")
            ),
            (per_customer, per_customer),
            "conversation {k}"
        );
    }
    assert_stats(&mongo.uri(&namespace), total, CUSTOMERS).await;

    // Every event once in the log, once the sweeper relayed what killed
    // writers left in the outbox.
    let events = || async {
        let mut events = Vec::new();
        loop {
            let after = events
                .last()
                .map_or(0, |e: &wa_core::domain::Sequenced| e.seq);
            let page = broker.read(after, 1_000).await.unwrap();
            if page.is_empty() {
                return events;
            }
            events.extend(page);
        }
    };
    test_support::wait_until(
        "an event for every message",
        Duration::from_secs(60),
        || async { events().await.len() as u64 >= total },
    )
    .await;
    let mut ids: Vec<String> = events()
        .await
        .into_iter()
        .map(|e| match e.event {
            Event::NewMessage(m) => m.message_id,
            Event::StatusUpdate(s) => panic!("no status changed: {s:?}"),
        })
        .collect();
    assert_eq!(ids.len() as u64, total, "one event per message");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, total, "no message announced twice");
    test_support::drop_database(&db).await;
}
