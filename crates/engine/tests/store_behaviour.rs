//! One behaviour suite for both stores: the processing rules, run through
//! `Processor` on MongoDB (the test MongoDB-wire server) and on SQLite,
//! must give the same results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use wa_core::domain::{Conversation, Direction, Event, PENDING, Page, QueuedSend};
use wa_core::plan::counts::journal_key;
use wa_core::webhook;
use wa_engine::processing::Processor;
use wa_store::{KeyClaim, SearchScope, Store};
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

mod common;
use common::{documents, items, journals_left};

const RAVI: &str = "conv_919937320320";
const NEHA: &str = "conv_929967673820";
const RAVI_REPLY: &str =
    "wamid.HBgMOTE5OTY3NTc4NzIwFQIAEhggNDc4NzZBQ0YxMjdCQ0VFOTk2NzA3MTI4RkZCNjYyMjc=";
const NEHA_REPLY: &str =
    "wamid.HBgMOTI5OTY3NjczODIwFQIAEhggM0RFNDkxRjEwNDhDQzgwMzk3NzA1ODc1RkU3QzI0MzU=";

async fn mongo() -> Arc<dyn Store> {
    common::mongo(test_support::Mongo::Default, "behaviour").await
}

async fn mongo_replica_set() -> Arc<dyn Store> {
    common::mongo(test_support::Mongo::ReplicaSet, "behaviour").await
}

async fn sqlite() -> Arc<dyn Store> {
    common::sqlite("behaviour").await
}

/// Processes webhook bodies, one batch each; returns every event.
async fn feed(processor: &Processor, bodies: &[Vec<u8>]) -> Vec<Event> {
    let mut events = Vec::new();
    for body in bodies {
        events.extend(
            processor
                .process(items(std::slice::from_ref(body)))
                .await
                .unwrap(),
        );
    }
    events
}

fn bodies(files: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    files.iter().map(|(_, b)| b.clone()).collect()
}

/// A conversation's summary as the list returns it.
async fn conversation(store: &Arc<dyn Store>, id: &str) -> Conversation {
    let list = store.conversations(page(500), None).await.unwrap();
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
            Event::StatusUpdate(s) => Some((s.conversation_id.clone(), s.status.to_string())),
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
    let conversations = store.conversations(page(50), None).await.unwrap();
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
    let stats = store.stats(None).await.unwrap();
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
    let conversations = store.conversations(page(500), None).await.unwrap();
    assert_eq!(conversations.len(), per_conversation.len());
    for c in conversations {
        assert_eq!(
            c.message_count, per_conversation[&c.conversation_id],
            "{}",
            c.conversation_id
        );
    }
    assert_eq!(
        store.stats(None).await.unwrap().total_messages,
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
                Some(s.status.to_string())
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
    assert_eq!(processor.mark_read(RAVI, at).await.unwrap().0.len(), 1);
    assert!(processor.mark_read(RAVI, at).await.unwrap().0.is_empty());
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
    let first = store.conversations(page(1), None).await.unwrap();
    let next = store
        .conversations(
            Page {
                limit: 1,
                before: Some(first[0].last_timestamp),
                ..Default::default()
            },
            None,
        )
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

    let top = store.conversations(page(1), None).await.unwrap();
    let next = store
        .conversations(
            Page {
                limit: 5,
                before: Some(top[0].last_timestamp),
                before_id: Some(top[0].last_message_id.clone()),
            },
            None,
        )
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

/// Every counter a store keeps (summaries, stats) agrees with its
/// messages, and each summary shows its newest message.
async fn assert_counters_match_messages(store: &Arc<dyn Store>) {
    let conversations = store.conversations(page(500), None).await.unwrap();
    let mut totals = BTreeMap::<String, i64>::new();
    for c in &conversations {
        let messages = store.messages(&c.conversation_id, page(500)).await.unwrap();
        let unread = messages
            .iter()
            .filter(|m| m.direction == Direction::Inbound && m.status == "received")
            .count() as i64;
        assert_eq!(
            (c.message_count, c.unread_count),
            (messages.len() as i64, unread),
            "counts of {}",
            c.conversation_id
        );
        let newest = messages.last().unwrap();
        assert_eq!(
            (c.last_message_id.as_str(), c.last_message_status.as_str()),
            (newest.message_id.as_str(), newest.status.as_str()),
            "last message of {}",
            c.conversation_id
        );
        for m in &messages {
            *totals.entry("messages".into()).or_default() += 1;
            let direction = match m.direction {
                Direction::Inbound => "inbound",
                Direction::Outbound => "outbound",
            };
            *totals.entry(direction.into()).or_default() += 1;
            *totals.entry(m.status.to_string()).or_default() += 1;
        }
    }
    let stats = store.stats(None).await.unwrap();
    let total = |key: &str| totals.get(key).copied().unwrap_or(0);
    assert_eq!(
        (
            stats.total_messages,
            stats.inbound,
            stats.outbound,
            stats.total_conversations
        ),
        (
            total("messages"),
            total("inbound"),
            total("outbound"),
            conversations.len() as i64
        )
    );
    for (status, n) in &stats.status_breakdown {
        assert_eq!(*n, total(status), "stats of {status}");
    }
}

async fn counters_agree_with_the_messages_after_every_kind_of_change(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let mut files = bodies(&test_support::all_webhook_files());
    feed(&processor, &files).await;
    for c in store.conversations(page(3), None).await.unwrap() {
        processor
            .mark_read(&c.conversation_id, Utc::now())
            .await
            .unwrap();
    }
    files.reverse();
    let events = feed(&processor, &files).await;
    assert!(events.is_empty(), "nothing new the second time: {events:?}");
    assert_counters_match_messages(&store).await;
}

async fn one_bad_item_of_three_is_kept_aside_and_the_others_stored(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "1555"},
        "messages": [
            {"from": "4401", "id": "ok.1", "timestamp": "10", "type": "text", "text": {"body": "one"}},
            {"from": "4401", "timestamp": "11", "type": "text", "text": {"body": "no id"}},
            {"from": "4401", "id": "ok.2", "timestamp": "12", "type": "text", "text": {"body": "two"}}
        ]
    }}]}]})
    .to_string()
    .into_bytes();
    let events = feed(&processor, &[body.clone(), body]).await;
    assert_eq!(events.len(), 2, "the two good messages, once");
    assert!(store.message("ok.1").await.unwrap().is_some());
    assert!(store.message("ok.2").await.unwrap().is_some());
    let stats = store.stats(None).await.unwrap();
    assert_eq!(
        (stats.total_messages, stats.rejected_items),
        (2, 1),
        "kept once"
    );
}

/// What `POST /api/messages` queues: message `n` of the business to `customer`.
fn queued_send(customer: &str, n: u32) -> (QueuedSend, wa_core::domain::Message) {
    let id = format!("local.q{customer}n{n:03}");
    let now = Utc::now();
    let mut message = wa_core::domain::Message::outbound_text(
        id.clone(),
        customer,
        "15550783881".to_owned(),
        format!("message {n}"),
        now,
    );
    message.status = PENDING.into();
    let send = QueuedSend {
        id: id.clone(),
        conversation_id: message.conversation_id.clone(),
        phone_number_id: None,
        request: serde_json::json!({"to": customer, "biz_opaque_callback_data": id}),
        due: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap(),
        // Later messages were accepted later, whatever their due times.
        queued_at: Some(now + chrono::TimeDelta::microseconds(i64::from(n))),
        attempts: 0,
        wamid: None,
        last_error: None,
        held: false,
    };
    (send, message)
}

/// A conversation's first queued send is the one accepted first, whatever
/// due times retries gave the others; the others' come after it.
async fn each_conversation_sends_its_first_queued_message_first(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    for n in [0, 1, 2] {
        for customer in ["4477001", "4477002"] {
            let (send, message) = queued_send(customer, n);
            processor.send(Some(&send), &message).await.unwrap();
        }
    }
    let first = store.first_send("conv_4477001").await.unwrap().unwrap();
    assert_eq!(first.id, "local.q4477001n000");
    // In backoff: still first, while later ones of its conversation are due.
    let mut backoff = first.clone();
    backoff.due = first.due + chrono::TimeDelta::seconds(60);
    assert!(store.update_send(&backoff, first.due).await.unwrap());
    assert!(
        !store.update_send(&backoff, first.due).await.unwrap(),
        "claimed by the first update"
    );
    let again = store.first_send("conv_4477001").await.unwrap().unwrap();
    assert_eq!(
        (again.id.as_str(), again.due),
        (first.id.as_str(), backoff.due)
    );
    let due = store.due_sends(Utc::now(), 100).await.unwrap();
    assert_eq!(due.len(), 5, "the one in backoff is not due");
    // Done: the next one of that conversation is first; the other untouched.
    let outcome = wa_core::plan::SendOutcome::Refused {
        errors: serde_json::json!([{"code": 131047}]),
        at: Utc::now(),
    };
    processor.send_outcome(&again, &outcome).await.unwrap();
    let next = store.first_send("conv_4477001").await.unwrap().unwrap();
    assert_eq!(next.id, "local.q4477001n001");
    let other = store.first_send("conv_4477002").await.unwrap().unwrap();
    assert_eq!(other.id, "local.q4477002n000");
    assert!(store.first_send("conv_0000").await.unwrap().is_none());
}

/// One claim of a key wins, however many race; repeats are told apart
/// by what they were used for.
async fn an_idempotency_key_is_claimed_once(store: Arc<dyn Store>) {
    let claims = futures::future::join_all((0..20).map(|_| {
        let store = store.clone();
        async move { store.claim_key("local.k1", "body-a").await.unwrap() }
    }))
    .await;
    assert_eq!(claims.iter().filter(|c| **c == KeyClaim::New).count(), 1);
    assert_eq!(claims.iter().filter(|c| **c == KeyClaim::Same).count(), 19);
    assert_eq!(
        store.claim_key("local.k1", "body-b").await.unwrap(),
        KeyClaim::Other
    );
    assert_eq!(
        store.claim_key("local.k2", "body-b").await.unwrap(),
        KeyClaim::New
    );
}

/// A message we sent keeps its key once it has WhatsApp's id, and a status
/// naming that key (`biz_opaque_callback_data`) finds it there.
async fn a_sent_message_is_found_by_its_key_for_a_status_naming_it(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let (send, message) = queued_send("4477003", 0);
    processor.send(Some(&send), &message).await.unwrap();
    let accepted = wa_core::plan::SendOutcome::Accepted {
        wamid: "wamid.SECOND".to_owned(),
        at: Utc::now(),
    };
    processor.send_outcome(&send, &accepted).await.unwrap();
    let status = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1"},
        "statuses": [{"id": "wamid.FIRST", "status": "delivered", "recipient_id": "4477003",
            "timestamp": Utc::now().timestamp().to_string(), "biz_opaque_callback_data": send.id}]}}]}]});
    let events = feed(&processor, &[status.to_string().into_bytes()]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let stored = store.message(&send.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.message_id.as_str(), stored.status.as_str()),
        ("wamid.SECOND", "delivered")
    );
}

/// A customer's text message at `seconds`, to business number `phone`.
fn said(id: &str, customer: &str, phone: &str, text: &str, seconds: i64) -> Vec<u8> {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone},
        "contacts": [{"wa_id": customer, "profile": {"name": "Ravi"}}],
        "messages": [{"from": customer, "id": id, "timestamp": (1_754_400_000 + seconds).to_string(),
            "type": "text", "text": {"body": text}}]}}]}]})
    .to_string()
    .into_bytes()
}

async fn search(
    store: &Arc<dyn Store>,
    q: &str,
    scope: SearchScope,
    limit: usize,
) -> (Vec<String>, Option<String>) {
    let query = wa_core::search::Query::parse(q).unwrap();
    let page = store.search(&query, &scope, limit).await.unwrap();
    (
        page.messages.into_iter().map(|m| m.message_id).collect(),
        page.next,
    )
}

async fn ids(store: &Arc<dyn Store>, q: &str) -> Vec<String> {
    search(store, q, SearchScope::default(), 100).await.0
}

/// Words in any script, case and accents ignored, every word needed, the
/// last as a prefix; newest first, in pages; narrowed by conversation and
/// by number; messages the business sent are found too.
async fn search_finds_any_word_newest_first_in_pages_and_scopes(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    feed(
        &processor,
        &[
            said(
                "wamid.s1",
                "919900000001",
                "111",
                "Can you deliver to Pune tomorrow?",
                10,
            ),
            said(
                "wamid.s2",
                "919900000001",
                "111",
                "पुणे में डिलीवरी कब होगी?",
                20,
            ),
            said(
                "wamid.s3",
                "919900000002",
                "222",
                "Le CAFÉ est fermé, livraison à Pune?",
                30,
            ),
            said("wamid.s4", "919900000002", "222", "東京駅に着きました", 40),
            said(
                "wamid.s5",
                "919900000003",
                "111",
                "my nameplate order #4711",
                50,
            ),
        ],
    )
    .await;
    let (send, mut message) = queued_send("919900000003", 9);
    message.body = "Your nameplate ships today".to_owned();
    processor.send(Some(&send), &message).await.unwrap();

    assert_eq!(ids(&store, "pune").await, ["wamid.s3", "wamid.s1"]);
    assert_eq!(ids(&store, "PUNE deliver").await, ["wamid.s1"]);
    assert_eq!(ids(&store, "cafe").await, ["wamid.s3"]);
    assert_eq!(ids(&store, "fermé livr").await, ["wamid.s3"]);
    assert_eq!(ids(&store, "डिली").await, ["wamid.s2"]);
    assert_eq!(ids(&store, "पुणे").await, ["wamid.s2"]);
    assert_eq!(ids(&store, "東京").await, ["wamid.s4"]);
    assert!(ids(&store, "京東").await.is_empty(), "in that order only");
    assert_eq!(ids(&store, "namepl").await, [send.id.as_str(), "wamid.s5"]);
    assert_eq!(ids(&store, "4711").await, ["wamid.s5"]);
    assert!(
        ids(&store, "pune xyz").await.is_empty(),
        "every word must match"
    );
    assert_eq!(
        ids(&store, "\"pune\" * ^").await.len(),
        2,
        "quotes and stars are no syntax"
    );
    assert!(
        ids(&store, "pune OR cafe").await.is_empty(),
        "OR is a word like any other"
    );

    // Pages: newest first, each after the last.
    let (first, next) = search(&store, "pune", SearchScope::default(), 1).await;
    assert_eq!(first, ["wamid.s3"]);
    let before = next.expect("a next page");
    let (second, _) = search(
        &store,
        "pune",
        SearchScope {
            before: Some(before),
            ..Default::default()
        },
        1,
    )
    .await;
    assert_eq!(second, ["wamid.s1"]);

    // Scopes.
    let in_conversation = SearchScope {
        conversation_id: Some("conv_919900000001".into()),
        ..Default::default()
    };
    assert_eq!(
        search(&store, "pune", in_conversation, 10).await.0,
        ["wamid.s1"]
    );
    let of_number = SearchScope {
        numbers: Some(vec!["222".into()]),
        ..Default::default()
    };
    assert_eq!(search(&store, "pune", of_number, 10).await.0, ["wamid.s3"]);
}

/// Runs each scenario on every store: SQLite, MongoDB standalone (no
/// transactions: each change set in steps) and as a replica set (each
/// change set one transaction, as in production).
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod on_mongodb {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::mongo().await).await } )*
        }
        mod on_mongodb_replica_set {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::mongo_replica_set().await).await } )*
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
    counters_agree_with_the_messages_after_every_kind_of_change,
    one_bad_item_of_three_is_kept_aside_and_the_others_stored,
    each_conversation_sends_its_first_queued_message_first,
    an_idempotency_key_is_claimed_once,
    a_sent_message_is_found_by_its_key_for_a_status_naming_it,
    search_finds_any_word_newest_first_in_pages_and_scopes,
);

/// A MongoDB store (no transactions on the test server) stopped after
/// each step of a change set, as a crash there would: the redelivered
/// batch finishes it, counting nothing twice and announcing what the
/// stopped one could not.
#[tokio::test]
async fn mongodb_a_change_set_stopped_at_any_step_is_finished_by_a_retry() {
    let (first, second): (Vec<_>, Vec<_>) = test_support::all_webhook_files()
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let first: Vec<Vec<u8>> = first.into_iter().map(|(_, (_, b))| b).collect();
    let second: Vec<Vec<u8>> = second.into_iter().map(|(_, (_, b))| b).collect();
    for steps in 1..=3 {
        let database = test_support::unique_name("stopped");
        let mongo = MongoStore::connect(&test_support::mongodb_uri(&database), "tests")
            .await
            .unwrap();
        mongo.prepare().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(mongo.clone());
        let processor = Processor::new(store.clone());
        feed(&processor, &first).await;

        // The second half as one batch, stopped, then redelivered.
        mongo.stop_next_change_set_after(steps);
        assert!(processor.process(items(&second)).await.is_err());
        let events = processor.process(items(&second)).await.unwrap();
        let db = test_support::mongo_database(&database).await;
        assert_eq!(
            journals_left(&db).await,
            vec![],
            "redelivery finished the journals"
        );
        let announced: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::NewMessage(m) => Some(m.message_id.clone()),
                Event::StatusUpdate(_) => None,
            })
            .collect();
        let mut unique = announced.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), announced.len(), "announced once");
        if steps < 3 {
            let new_in_second = second
                .iter()
                .flat_map(|b| webhook::parse(b).unwrap().messages)
                .filter(|m| {
                    !first.iter().any(|f| {
                        webhook::parse(f)
                            .unwrap()
                            .messages
                            .iter()
                            .any(|o| o.message_id == m.message_id)
                    })
                })
                .map(|m| m.message_id)
                .collect::<std::collections::BTreeSet<_>>();
            let announced: std::collections::BTreeSet<_> = announced.into_iter().collect();
            assert_eq!(
                announced, new_in_second,
                "stopped after {steps}: every new message announced"
            );
        }

        // Marking read, stopped and retried.
        let conversation = store.conversations(page(1), None).await.unwrap()[0].clone();
        mongo.stop_next_change_set_after(steps);
        let _ = processor
            .mark_read(&conversation.conversation_id, Utc::now())
            .await;
        processor
            .mark_read(&conversation.conversation_id, Utc::now())
            .await
            .unwrap();

        assert_counters_match_messages(&store).await;
        // Every message settled; a journal entry left (a change set
        // stopped after settling, before dropping it) only names a settled
        // message at its status, and goes when the message is next touched.
        let db = test_support::mongo_database(&database).await;
        let all = documents(&db, "processed_messages").await;
        let settled: BTreeMap<String, String> = all
            .iter()
            .map(|m| {
                let id = m.get_str("_id").unwrap();
                assert_eq!(m.get_str("settled"), m.get_str("status"), "{id} settled");
                (journal_key(id), m.get_str("status").unwrap().to_owned())
            })
            .collect();
        for collection in ["conversations", "stats"] {
            for document in documents(&db, collection).await {
                let Ok(journal) = document.get_document("journal") else {
                    continue;
                };
                assert!(steps == 3 || journal.is_empty(), "{collection}: {journal}");
                for (key, status) in journal {
                    assert_eq!(
                        Some(status.as_str().unwrap()),
                        settled.get(key).map(String::as_str)
                    );
                }
            }
        }
    }
}

/// MongoDB's round trips for a batch, a mark-read and the stats are the
/// same whether the database is nearly empty or holds thousands of
/// messages: no counts, no scans, one command per kind of write.
#[tokio::test]
async fn mongodb_round_trips_do_not_grow_with_the_data() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use mongodb::event::{EventHandler, command::CommandEvent};
    use wa_core::domain::Message;
    use wa_core::plan::Batch;

    let commands = Arc::new(AtomicUsize::new(0));
    let mut options = mongodb::options::ClientOptions::parse(test_support::mongodb_uri("x"))
        .await
        .unwrap();
    let counted = commands.clone();
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(_) = event {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let client = mongodb::Client::with_options(options).unwrap();
    let at = |n: usize| DateTime::from_timestamp(1_754_000_000 + n as i64, 0).unwrap_or_default();
    let inbound = |id: String, customer: usize, n: usize| {
        let customer = format!("44{customer:08}");
        let mut m = Message::outbound_text(id, &customer, customer.clone(), "hi".into(), at(n));
        m.to = "1555".into();
        m.direction = Direction::Inbound;
        m.status = "received".into();
        m.status_timestamps = BTreeMap::from([("received".to_owned(), at(n))]);
        m
    };
    let mut costs = Vec::new();
    for stored in [50, 3_000] {
        let database = test_support::unique_name("trips");
        let store = MongoStore::from_client(&client, &database);
        store.prepare().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let processor = Processor::new(store.clone());
        let messages: Vec<Message> = (0..stored)
            .map(|n| inbound(format!("old.{n}"), n % 10, n))
            .collect();
        // Large batches: journals far longer than one statement takes.
        for chunk in messages.chunks(1500) {
            let batch = Batch {
                messages: chunk.to_vec(),
                ..Batch::default()
            };
            processor.process_batch(&batch).await.unwrap();
        }
        // Two conversations read, so marking one read again finds a few.
        processor.mark_read("conv_4400000001", at(1)).await.unwrap();

        let before = commands.load(Ordering::SeqCst);
        let batch = Batch {
            messages: (0..40)
                .map(|n| inbound(format!("new.{n}"), n % 10, stored + n))
                .collect(),
            ..Batch::default()
        };
        let events = processor.process_batch(&batch).await.unwrap();
        assert_eq!(events.len(), 40);
        let for_batch = commands.load(Ordering::SeqCst) - before;

        let before = commands.load(Ordering::SeqCst);
        let read = processor.mark_read("conv_4400000002", at(2)).await.unwrap();
        assert_eq!(read.0.len(), stored / 10 + 4, "all of its unread messages");
        let for_mark_read = commands.load(Ordering::SeqCst) - before;

        let before = commands.load(Ordering::SeqCst);
        assert_eq!(
            store.stats(None).await.unwrap().total_messages,
            stored as i64 + 40
        );
        let for_stats = commands.load(Ordering::SeqCst) - before;
        costs.push((for_batch, for_mark_read, for_stats));
        assert_counters_match_messages(&store).await;
        let db = client.database(&database);
        assert_eq!(journals_left(&db).await, vec![], "journal entries left");
        for collection in ["conversations", "stats"] {
            for document in documents(&db, collection).await {
                let keys: Vec<&String> = document.keys().collect();
                assert!(
                    keys.iter().all(|k| !k.contains('.')),
                    "nested counters: {keys:?}"
                );
            }
        }
    }
    assert_eq!(
        costs[0], costs[1],
        "round trips (batch, mark-read, stats) at 50 and 3,000 messages"
    );
    let (batch, mark_read, stats) = costs[0];
    assert!(batch <= 13 && mark_read <= 12 && stats <= 3, "{costs:?}");
}

/// The sample files' messages with their statuses applied, and each
/// conversation's summary, as version 1 of either store kept them.
fn version_1_data() -> (Vec<wa_core::domain::Message>, Vec<Conversation>) {
    use wa_core::plan::summary::{Last, Name};
    let parsed: Vec<webhook::Parsed> = bodies(&test_support::sample_files())
        .iter()
        .map(|b| webhook::parse(b).unwrap())
        .collect();
    let mut messages: Vec<wa_core::domain::Message> =
        parsed.iter().flat_map(|p| p.messages.clone()).collect();
    messages.sort_by(|a, b| a.message_id.cmp(&b.message_id));
    messages.dedup_by(|a, b| a.message_id == b.message_id);
    for status in parsed.iter().flat_map(|p| &p.statuses) {
        for m in messages
            .iter_mut()
            .filter(|m| m.message_id == status.message_id)
        {
            wa_core::plan::status::apply(m, status);
        }
    }
    let mut summaries: BTreeMap<String, Conversation> = BTreeMap::new();
    for m in &messages {
        let in_it: Vec<_> = messages
            .iter()
            .filter(|o| o.conversation_id == m.conversation_id)
            .collect();
        let newest = in_it.iter().max_by_key(|o| Last::of(o).key).unwrap();
        let last = Last::of(newest);
        let name = in_it
            .iter()
            .filter_map(|o| Name::of(o))
            .max_by(|a, b| a.key.cmp(&b.key))
            .map_or_else(|| Name::fallback(&last.wa_id), |n| n.name);
        summaries.insert(
            m.conversation_id.clone(),
            Conversation {
                conversation_id: m.conversation_id.clone(),
                user_name: name,
                last_message_id: last.message_id,
                last_message_body: last.body,
                last_timestamp: last.timestamp,
                last_message_status: last.status,
                last_message_direction: last.direction,
                message_count: in_it.len() as i64,
                unread_count: in_it
                    .iter()
                    .filter(|o| o.direction == Direction::Inbound && o.status == "received")
                    .count() as i64,
                participants: last.participants,
                window_expires_at: in_it
                    .iter()
                    .filter(|o| o.direction == Direction::Inbound)
                    .map(|o| o.timestamp + wa_core::domain::SERVICE_WINDOW)
                    .max(),
                phone_number_id: None,
                business_number: None,
            },
        );
    }
    (messages, summaries.into_values().collect())
}

/// After migrating, the store serves what version 1 did and keeps
/// counting right.
async fn migrated_store_keeps_counting(store: Arc<dyn Store>, before: &[Conversation]) {
    // Messages stored before search existed are found (MongoDB indexes
    // them in the background, SQLite at the upgrade).
    let neha = wa_core::search::Query::parse("absolutely").unwrap();
    test_support::wait_until(
        "older messages to be searchable",
        std::time::Duration::from_secs(20),
        || async {
            store
                .search(&neha, &SearchScope::default(), 10)
                .await
                .is_ok_and(|page| page.messages.len() == 1)
        },
    )
    .await;
    let mut after = store.conversations(page(50), None).await.unwrap();
    after.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
    assert_eq!(after, before);
    let stats = store.stats(None).await.unwrap();
    assert_eq!((stats.total_messages, stats.total_conversations), (4, 2));
    assert_counters_match_messages(&store).await;
    let processor = Processor::new(store.clone());
    let events = feed(&processor, &bodies(&test_support::sample_files())).await;
    assert!(events.is_empty(), "nothing is new: {events:?}");
    processor.mark_read(RAVI, Utc::now()).await.unwrap();
    feed(&processor, &bodies(&test_support::all_webhook_files())).await;
    assert_counters_match_messages(&store).await;
}

/// A store the previous release left at the current schema version (its
/// conversation pages indexed by key) gets the index pages use now.
#[tokio::test]
async fn a_sqlite_store_at_the_current_version_gets_the_page_index() {
    let path = std::env::temp_dir()
        .join(test_support::unique_name("v3"))
        .join("store.sqlite3");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    SqliteStore::open(&path).unwrap().prepare().await.unwrap();
    let index = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages_by_conversation_v3'";
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("DROP INDEX messages_by_conversation_v3")
        .unwrap();
    drop(db);
    SqliteStore::open(&path).unwrap().prepare().await.unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let count: i64 = db.query_row(index, [], |r| r.get(0)).unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn an_older_sqlite_store_is_migrated_at_startup() {
    let (messages, summaries) = version_1_data();
    let path = std::env::temp_dir()
        .join(test_support::unique_name("v1"))
        .join("store.sqlite3");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TABLE messages (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, ts INTEGER NOT NULL,
            direction TEXT NOT NULL, status TEXT NOT NULL, status_rank INTEGER NOT NULL, contact_name TEXT, doc TEXT NOT NULL);
         CREATE INDEX messages_by_status_direction ON messages (status, direction);
         CREATE TABLE conversations (id TEXT PRIMARY KEY, sort_key TEXT NOT NULL, doc TEXT NOT NULL);
         CREATE TABLE conversation_counts (id TEXT PRIMARY KEY, messages INTEGER NOT NULL, unread INTEGER NOT NULL);
         CREATE TABLE pending_statuses (key TEXT PRIMARY KEY, message_id TEXT NOT NULL, doc TEXT NOT NULL, parked_at INTEGER NOT NULL);
         CREATE TABLE webhook_payloads (id TEXT PRIMARY KEY, body BLOB NOT NULL, received_at INTEGER NOT NULL);",
    )
    .unwrap();
    for m in &messages {
        db.execute(
            "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                m.message_id,
                m.conversation_id,
                m.timestamp.timestamp_millis(),
                if m.direction == Direction::Inbound {
                    "inbound"
                } else {
                    "outbound"
                },
                m.status.as_str(),
                m.status.rank().unwrap(),
                m.contact_name,
                serde_json::to_string(m).unwrap()
            ],
        )
        .unwrap();
    }
    for c in &summaries {
        let key = wa_core::plan::summary::sort_key(c.last_timestamp, &c.last_message_id);
        db.execute(
            "INSERT INTO conversations VALUES (?1, ?2, ?3)",
            rusqlite::params![c.conversation_id, key, serde_json::to_string(c).unwrap()],
        )
        .unwrap();
        db.execute(
            "INSERT INTO conversation_counts VALUES (?1, ?2, ?3)",
            rusqlite::params![c.conversation_id, c.message_count, c.unread_count],
        )
        .unwrap();
    }
    drop(db);
    let store = SqliteStore::open(&path).unwrap();
    store.prepare().await.unwrap();
    store.prepare().await.unwrap();
    migrated_store_keeps_counting(Arc::new(store), &summaries).await;
}

#[tokio::test]
async fn an_older_mongodb_database_is_migrated_at_startup() {
    use mongodb::bson::doc;
    let (messages, summaries) = version_1_data();
    let database = test_support::unique_name("v1");
    let db = test_support::mongo_database(&database).await;
    let documents: Vec<_> = messages
        .iter()
        .map(|m| wa_store_mongo::message_to_document(m).unwrap())
        .collect();
    db.collection("processed_messages")
        .insert_many(documents)
        .await
        .unwrap();
    for c in &summaries {
        let key = wa_core::plan::summary::sort_key(c.last_timestamp, &c.last_message_id);
        // Version 1's summary: counts recomputed (here left stale) and a revision.
        db.collection("conversations")
            .insert_one(doc! {
                "_id": &c.conversation_id, "conversationId": &c.conversation_id,
                "waId": c.conversation_id.trim_start_matches("conv_"), "userName": &c.user_name,
                "participants": &c.participants, "lastMessageId": &c.last_message_id,
                "lastMessageBody": &c.last_message_body,
                "lastTimestamp": mongodb::bson::DateTime::from_millis(c.last_timestamp.timestamp_millis()),
                "lastMessageStatus": c.last_message_status.as_str(),
                "lastMessageDirection": if c.last_message_direction == Direction::Inbound { "inbound" } else { "outbound" },
                "sortKey": key, "messageCount": 0_i64, "rev": 3_i64,
            })
            .await
            .unwrap();
    }
    let store = MongoStore::connect(&test_support::mongodb_uri(&database), "tests")
        .await
        .unwrap();
    store.prepare().await.unwrap();
    store.prepare().await.unwrap();
    let settled = test_support::count(
        &db,
        "processed_messages",
        doc! {"settled": {"$exists": true}},
    )
    .await;
    assert_eq!(settled, 4, "what version 1 stored counts as settled");
    migrated_store_keeps_counting(Arc::new(store), &summaries).await;
}
