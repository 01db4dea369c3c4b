//! One behaviour suite for both stores: the processing rules, run through
//! `Processor` on MongoDB (the test MongoDB-wire server) and on SQLite,
//! must give the same results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use shared::broker::payload_id;
use shared::domain::{Conversation, Event, Page, RawPayload};
use shared::processing::Processor;
use shared::store::Store;
use shared::store::mongo::MongoStore;
use shared::store::sqlite::SqliteStore;
use shared::webhook;

const RAVI: &str = "conv_919937320320";
const NEHA: &str = "conv_929967673820";
const RAVI_REPLY: &str =
    "wamid.HBgMOTE5OTY3NTc4NzIwFQIAEhggNDc4NzZBQ0YxMjdCQ0VFOTk2NzA3MTI4RkZCNjYyMjc=";
const NEHA_REPLY: &str =
    "wamid.HBgMOTI5OTY3NjczODIwFQIAEhggM0RFNDkxRjEwNDhDQzgwMzk3NzA1ODc1RkU3QzI0MzU=";

async fn mongo() -> Arc<dyn Store> {
    let database = test_support::unique_name("behaviour");
    let store = MongoStore::connect(&test_support::mongodb_uri(&database), "tests")
        .await
        .unwrap();
    store.prepare().await.unwrap();
    Arc::new(store)
}

async fn sqlite() -> Arc<dyn Store> {
    let path = std::env::temp_dir()
        .join(test_support::unique_name("behaviour"))
        .join("store.sqlite3");
    let store = SqliteStore::open(&path).unwrap();
    store.prepare().await.unwrap();
    Arc::new(store)
}

/// Processes webhook bodies, one batch each; returns every event.
async fn feed(processor: &Processor, bodies: &[Vec<u8>]) -> Vec<Event> {
    let mut events = Vec::new();
    for body in bodies {
        let raw = RawPayload {
            id: payload_id(body),
            body: Bytes::from(body.clone()),
            received_at: Utc::now(),
        };
        let parsed = webhook::parse(body).unwrap();
        events.extend(processor.process(vec![(raw, parsed)]).await.unwrap());
    }
    events
}

fn bodies(files: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    files.iter().map(|(_, b)| b.clone()).collect()
}

/// A conversation's summary as the list returns it.
async fn conversation(store: &Arc<dyn Store>, id: &str) -> Conversation {
    let list = store.conversations(page(500)).await.unwrap();
    list.into_iter()
        .find(|c| c.conversation_id == id)
        .unwrap_or_else(|| panic!("{id} is listed"))
}

fn page(limit: i64) -> Page {
    Page {
        limit,
        ..Default::default()
    }
}

async fn samples_in_any_order_each_twice(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let mut files = bodies(&test_support::sample_files());
    files.reverse();
    let mut events = feed(&processor, &files).await;
    files.rotate_left(3);
    events.extend(feed(&processor, &files).await);

    let new_messages = events
        .iter()
        .filter(|e| matches!(e, Event::NewMessage(_)))
        .count();
    let mut updates: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StatusUpdate(s) => Some((s.conversation_id.clone(), s.status.clone())),
            Event::NewMessage(_) => None,
        })
        .collect();
    updates.sort();
    assert_eq!(
        new_messages, 4,
        "one event per stored message, none for repeats"
    );
    assert_eq!(
        updates,
        vec![
            (RAVI.to_owned(), "read".to_owned()),
            (NEHA.to_owned(), "delivered".to_owned())
        ]
    );

    assert_eq!(
        store.message(RAVI_REPLY).await.unwrap().unwrap().status,
        "read"
    );
    assert_eq!(
        store.message(NEHA_REPLY).await.unwrap().unwrap().status,
        "delivered"
    );
    let conversations = store.conversations(page(50)).await.unwrap();
    let ids: Vec<&str> = conversations
        .iter()
        .map(|c| c.conversation_id.as_str())
        .collect();
    assert_eq!(ids, vec![NEHA, RAVI], "newest first");
    for c in &conversations {
        assert_eq!((c.message_count, c.unread_count), (2, 1));
    }
    assert_eq!(conversations[1].user_name, "Ravi Kumar");
    assert_eq!(conversations[1].last_message_status, "read");
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.total_messages,
            stats.total_conversations,
            stats.inbound,
            stats.outbound
        ),
        (4, 2, 2, 2)
    );
    assert_eq!(stats.status_breakdown["received"], 2);
}

async fn every_webhook_file_as_expected(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    feed(&processor, &bodies(&test_support::all_webhook_files())).await;
    let expected = test_support::expected_messages();
    let mut per_conversation: BTreeMap<String, i64> = BTreeMap::new();
    for e in &expected {
        let id = e["messageId"].as_str().unwrap();
        let m = store
            .message(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} is stored"));
        assert_eq!(
            m.conversation_id,
            e["conversationId"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(m.kind, e["type"].as_str().unwrap(), "{id}");
        assert_eq!(m.status, e["finalStatus"].as_str().unwrap(), "{id}");
        assert_eq!(m.user_name, e["userName"].as_str().unwrap(), "{id}");
        assert!(
            m.body.contains(e["bodyContains"].as_str().unwrap()),
            "{id}: {}",
            m.body
        );
        *per_conversation.entry(m.conversation_id).or_default() += 1;
    }
    let conversations = store.conversations(page(500)).await.unwrap();
    assert_eq!(conversations.len(), per_conversation.len());
    for c in conversations {
        assert_eq!(
            c.message_count, per_conversation[&c.conversation_id],
            "{}",
            c.conversation_id
        );
    }
    assert_eq!(
        store.stats().await.unwrap().total_messages,
        expected.len() as i64
    );
}

fn status_body(id: &str, status: &str, ts: u32) -> Vec<u8> {
    format!(r#"{{"entry":[{{"changes":[{{"field":"messages","value":{{"statuses":[{{"id":"{id}","status":"{status}","timestamp":"{ts}","recipient_id":"4477"}}]}}}}]}}]}}"#).into_bytes()
}

fn business_message(id: &str, ts: u32) -> Vec<u8> {
    format!(r#"{{"entry":[{{"changes":[{{"field":"messages","value":{{"metadata":{{"display_phone_number":"1555"}},"contacts":[{{"wa_id":"4477"}}],"messages":[{{"from":"1555","id":"{id}","timestamp":"{ts}","type":"text","text":{{"body":"hi"}}}}]}}}}]}}]}}"#).into_bytes()
}

async fn statuses_move_forward_and_wait_for_their_message(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let events = feed(
        &processor,
        &[
            status_body("a", "read", 30),
            status_body("a", "delivered", 20),
        ],
    )
    .await;
    assert!(events.is_empty(), "nothing to apply yet");
    let events = feed(
        &processor,
        &[business_message("a", 10), status_body("a", "sent", 11)],
    )
    .await;
    let statuses: Vec<String> = events
        .iter()
        .filter_map(|e| {
            if let Event::StatusUpdate(s) = e {
                Some(s.status.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        statuses,
        vec!["delivered", "read"],
        "parked statuses applied in order, the stale one ignored"
    );
    let a = store.message("a").await.unwrap().unwrap();
    assert_eq!(a.status, "read");
    assert!(
        ["sent", "delivered", "read"]
            .iter()
            .all(|s| a.status_timestamps.contains_key(*s))
    );

    feed(
        &processor,
        &[
            business_message("b", 10),
            status_body("b", "failed", 12),
            status_body("b", "delivered", 13),
        ],
    )
    .await;
    assert_eq!(
        store.message("b").await.unwrap().unwrap().status,
        "failed",
        "failed is terminal"
    );
    feed(&processor, &[status_body("b", "deleted", 14)]).await;
    let b = store.message("b").await.unwrap().unwrap();
    assert_eq!(
        b.status, "failed",
        "unknown statuses are recorded, not applied"
    );
    assert!(b.status_timestamps.contains_key("deleted"));
}

async fn marking_read_happens_once(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    feed(&processor, &bodies(&test_support::sample_files())).await;
    let at: DateTime<Utc> = Utc::now();
    assert_eq!(processor.mark_read(RAVI, at).await.unwrap().len(), 1);
    assert!(processor.mark_read(RAVI, at).await.unwrap().is_empty());
    let ravi = conversation(&store, RAVI).await;
    assert_eq!(ravi.unread_count, 0);
    let messages = store.messages(RAVI, page(50)).await.unwrap();
    assert_eq!(messages[0].status, "read");
}

async fn pages_are_newest_first_returned_oldest_first(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    feed(&processor, &bodies(&test_support::sample_files())).await;
    let all = store.messages(RAVI, page(50)).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].timestamp < all[1].timestamp, "oldest first");
    let newest = store.messages(RAVI, page(1)).await.unwrap();
    assert_eq!(newest[0].message_id, all[1].message_id);
    let older = store
        .messages(
            RAVI,
            Page {
                limit: 1,
                before: Some(all[1].timestamp),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(older[0].message_id, all[0].message_id);
    assert!(store.messages("conv_1", page(10)).await.unwrap().is_empty());
    let first = store.conversations(page(1)).await.unwrap();
    let next = store
        .conversations(Page {
            limit: 1,
            before: Some(first[0].last_timestamp),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            first[0].conversation_id.as_str(),
            next[0].conversation_id.as_str()
        ),
        (NEHA, RAVI)
    );
}

fn text_message(id: &str, from: &str, ts: u32) -> Vec<u8> {
    format!(r#"{{"entry":[{{"changes":[{{"field":"messages","value":{{"metadata":{{"display_phone_number":"1555"}},"messages":[{{"from":"{from}","id":"{id}","timestamp":"{ts}","type":"text","text":{{"body":"{id}"}}}}]}}}}]}}]}}"#).into_bytes()
}

async fn paging_through_ties_skips_nothing(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    // Three messages in the same second; two conversations ending in the same second.
    feed(
        &processor,
        &[
            text_message("m1", "4401", 50),
            text_message("m2", "4401", 50),
            text_message("m3", "4401", 50),
        ],
    )
    .await;
    feed(&processor, &[text_message("n1", "4402", 50)]).await;
    let first = store.messages("conv_4401", page(2)).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m2", "m3"]);
    let rest = store
        .messages(
            "conv_4401",
            Page {
                limit: 2,
                before: Some(first[0].timestamp),
                before_id: Some("m2".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        ["m1"]
    );

    let top = store.conversations(page(1)).await.unwrap();
    let next = store
        .conversations(Page {
            limit: 5,
            before: Some(top[0].last_timestamp),
            before_id: Some(top[0].last_message_id.clone()),
        })
        .await
        .unwrap();
    let mut both = vec![
        top[0].conversation_id.clone(),
        next[0].conversation_id.clone(),
    ];
    both.sort();
    assert_eq!(
        both,
        ["conv_4401", "conv_4402"],
        "the tie at the page boundary is on the next page"
    );
}

/// Runs each scenario on both stores.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod on_mongodb {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::mongo().await).await } )*
        }
        mod on_sqlite {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::sqlite().await).await } )*
        }
    };
}

on_both_stores!(
    samples_in_any_order_each_twice,
    every_webhook_file_as_expected,
    statuses_move_forward_and_wait_for_their_message,
    marking_read_happens_once,
    pages_are_newest_first_returned_oldest_first,
    paging_through_ties_skips_nothing,
);
