//! The processing rules are indifferent to order, batching and
//! redelivery: whatever order webhooks arrive in, however they are cut
//! into batches, and whichever batches are delivered again, the stored
//! conversations, messages and counts are those of the same webhooks
//! applied one after another on the reference store
//! (`wa_store::memory::MemoryStore`); on SQLite too. And every change has
//! its event, nothing twice: one `newMessage` per message, and the last
//! event about a message tells its stored status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::DateTime;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::json;
use wa_core::domain::{Conversation, Event, Message, Page, Stats, Status};
use wa_engine::processing::Processor;
use wa_store::Store;
use wa_store::memory::MemoryStore;
use wa_store_sqlite::SqliteStore;

const BUSINESS: &str = "15550001111";
const PHONE_NUMBER_ID: &str = "106540352242922";
const CUSTOMERS: [&str; 3] = ["447700900001", "447700900002", "447700900003"];
/// Messages the business sent before the webhooks (statuses are about them).
const SENT: usize = 3;
const T0: i64 = 1_754_400_000;

/// One webhook: a customer's text, or a status of a sent message (or of
/// one never stored: it stays parked).
#[derive(Debug, Clone)]
enum Webhook {
    Text {
        n: usize,
        customer: usize,
        named: bool,
        at: i64,
    },
    Status {
        sent: usize,
        status: &'static str,
        at: i64,
    },
}

impl Webhook {
    fn body(&self) -> Vec<u8> {
        let value = match self {
            Webhook::Text {
                n,
                customer,
                named,
                at,
            } => {
                let wa_id = CUSTOMERS[*customer];
                let contacts = if *named {
                    json!([{"profile": {"name": format!("Customer {customer} at {at}")}, "wa_id": wa_id}])
                } else {
                    json!([{"wa_id": wa_id}])
                };
                json!({
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": BUSINESS, "phone_number_id": PHONE_NUMBER_ID},
                    "contacts": contacts,
                    "messages": [{"from": wa_id, "id": format!("wamid.in{n}"), "timestamp": (T0 + at).to_string(),
                                  "type": "text", "text": {"body": format!("text {n}")}}],
                })
            }
            Webhook::Status { sent, status, at } => {
                let mut item = json!({"id": format!("wamid.out{sent}"), "status": status,
                    "timestamp": (T0 + at).to_string(), "recipient_id": CUSTOMERS[sent % CUSTOMERS.len()]});
                if *status == "failed" {
                    item["errors"] = json!([{"code": 131047, "title": "Re-engagement message"}]);
                }
                json!({
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": BUSINESS, "phone_number_id": PHONE_NUMBER_ID},
                    "statuses": [item],
                })
            }
        };
        let body = json!({"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]});
        serde_json::to_vec(&body).unwrap()
    }
}

fn webhook() -> impl Strategy<Value = Webhook> {
    let statuses = &["sent", "delivered", "read", "failed"][..];
    prop_oneof![
        (0..CUSTOMERS.len(), any::<bool>(), 0i64..40).prop_map(|(customer, named, at)| {
            Webhook::Text {
                n: 0,
                customer,
                named,
                at,
            }
        }),
        // `SENT` itself names a message never stored. WhatsApp tells a
        // message's status once, at one time (a repeat is a redelivery).
        (0..SENT + 1, 0..statuses.len()).prop_map(move |(sent, s)| Webhook::Status {
            sent,
            status: statuses[s],
            at: 10 * sent as i64 + s as i64,
        }),
    ]
}

/// Webhooks (texts numbered), and a schedule: their order, the batch
/// sizes, and which batches are delivered twice.
fn scenario() -> impl Strategy<Value = (Vec<Webhook>, Vec<usize>, Vec<usize>, Vec<bool>)> {
    proptest::collection::vec(webhook(), 1..14).prop_flat_map(|mut webhooks| {
        for (n, w) in webhooks.iter_mut().enumerate() {
            if let Webhook::Text { n: number, .. } = w {
                *number = n;
            }
        }
        let len = webhooks.len();
        (
            Just(webhooks),
            Just((0..len).collect::<Vec<_>>()).prop_shuffle(),
            proptest::collection::vec(1usize..5, len),
            proptest::collection::vec(any::<bool>(), len),
        )
    })
}

/// What a store holds, as the API shows it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    conversations: Vec<Conversation>,
    messages: BTreeMap<String, Vec<Message>>,
    stats: Stats,
}

async fn snapshot(store: &Arc<dyn Store>) -> Snapshot {
    let page = |limit| Page {
        limit,
        before: None,
        before_id: None,
    };
    let conversations = store.conversations(page(100), None).await.unwrap();
    let mut messages = BTreeMap::new();
    for c in &conversations {
        let list = store
            .messages(&c.conversation_id, page(1000))
            .await
            .unwrap();
        messages.insert(c.conversation_id.clone(), list);
    }
    Snapshot {
        conversations,
        messages,
        stats: store.stats(None).await.unwrap(),
    }
}

/// The business's messages the statuses are about, stored first.
async fn with_sent(store: Arc<dyn Store>) -> Processor {
    store.prepare().await.unwrap();
    let processor = Processor::new(store);
    for n in 0..SENT {
        let at = DateTime::from_timestamp(T0 - 100 + n as i64, 0).unwrap();
        let m = Message::outbound_text(
            format!("wamid.out{n}"),
            CUSTOMERS[n % CUSTOMERS.len()],
            BUSINESS.to_owned(),
            format!("reply {n}"),
            at,
        );
        processor.send(None, &m).await.unwrap();
    }
    processor
}

fn sqlite() -> Arc<dyn Store> {
    let path = std::env::temp_dir()
        .join(test_support::unique_name("order"))
        .join("store.sqlite3");
    Arc::new(SqliteStore::open(&path).unwrap())
}

/// Applies the webhooks as scheduled; returns every event, in order.
async fn run(
    processor: &Processor,
    webhooks: &[Webhook],
    order: &[usize],
    sizes: &[usize],
    again: &[bool],
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = order;
    let mut k = 0;
    while !rest.is_empty() {
        let size = sizes[k % sizes.len()].min(rest.len());
        let bodies: Vec<Vec<u8>> = rest[..size].iter().map(|i| webhooks[*i].body()).collect();
        events.extend(processor.process(common::items(&bodies)).await.unwrap());
        if again[k % again.len()] {
            // Redelivered: changes nothing, announces nothing.
            let repeat = processor.process(common::items(&bodies)).await.unwrap();
            assert_eq!(repeat, Vec::new(), "a redelivered batch emitted events");
        }
        rest = &rest[size..];
        k += 1;
    }
    events
}

/// One `newMessage` per stored message, and the last event about each
/// message names the status it is stored with.
fn events_tell_the_state(events: &[Event], state: &Snapshot) {
    let mut new_messages: HashMap<String, usize> = HashMap::new();
    let mut last_status: HashMap<String, Status> = HashMap::new();
    for event in events {
        match event {
            Event::NewMessage(m) => {
                *new_messages.entry(m.message_id.clone()).or_default() += 1;
                last_status.insert(m.message_id.clone(), m.status.clone());
            }
            Event::StatusUpdate(u) => {
                last_status.insert(u.message_id.clone(), u.status.clone());
            }
        }
    }
    for message in state.messages.values().flatten() {
        if message.message_id.starts_with("wamid.in") {
            assert_eq!(
                new_messages.get(&message.message_id),
                Some(&1),
                "{}",
                message.message_id
            );
        }
        if let Some(status) = last_status.get(&message.message_id) {
            assert_eq!(
                status, &message.status,
                "last event about {}",
                message.message_id
            );
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the webhooks in order on the reference store, then as scheduled on
/// each of `stores`, and compares.
async fn check(
    webhooks: &[Webhook],
    order: &[usize],
    sizes: &[usize],
    again: &[bool],
    stores: Vec<Arc<dyn Store>>,
) {
    // The reference: one webhook after another, as written.
    let reference = with_sent(Arc::new(MemoryStore::new())).await;
    let in_order: Vec<usize> = (0..webhooks.len()).collect();
    let events = run(&reference, webhooks, &in_order, &[1], &[false]).await;
    let expected = snapshot(reference.store()).await;
    events_tell_the_state(&events, &expected);
    for store in stores {
        let processor = with_sent(store).await;
        let events = run(&processor, webhooks, order, sizes, again).await;
        let state = snapshot(processor.store()).await;
        events_tell_the_state(&events, &state);
        assert_eq!(state, expected);
    }
}

async fn mongodb(mongo: test_support::Mongo) -> Arc<dyn Store> {
    let database = test_support::unique_name("order");
    let store = wa_store_mongo::MongoStore::connect(&mongo.uri(&database), "tests")
        .await
        .unwrap();
    Arc::new(store)
}

proptest! {
    #![proptest_config(Config { cases: 40, ..Config::default() })]

    #[test]
    fn order_batches_and_redelivery_change_nothing(
        (webhooks, order, sizes, again) in scenario()
    ) {
        runtime().block_on(check(
            &webhooks,
            &order,
            &sizes,
            &again,
            vec![Arc::new(MemoryStore::new()), sqlite()],
        ));
    }
}

/// The same on MongoDB, standalone (several writes a change set) and as a
/// replica set (one transaction), where "only if newer" is MongoDB's own
/// filters: a dozen scenarios, the same on every run (MongoDB is slower
/// to set up than a file).
#[test]
fn order_batches_and_redelivery_change_nothing_on_mongodb() {
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let config = Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    TestRunner::new_with_rng(config, rng)
        .run(&scenario(), |(webhooks, order, sizes, again)| {
            runtime().block_on(async {
                let stores = vec![
                    mongodb(test_support::Mongo::Default).await,
                    mongodb(test_support::Mongo::ReplicaSet).await,
                ];
                check(&webhooks, &order, &sizes, &again, stores).await;
            });
            Ok(())
        })
        .unwrap();
}
