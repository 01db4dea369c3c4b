use std::collections::BTreeMap;

use mongodb::bson::{Bson, doc};

use crate::helpers::{Pipeline, spawn_stack};
use test_support::stack::StackConfig;

const RAVI_IN: &str = "wamid.HBgMOTE5OTY3NTc4NzIwFQIAEhggMTIzQURFRjEyMzQ1Njc4OTA=";
const RAVI_REPLY: &str =
    "wamid.HBgMOTE5OTY3NTc4NzIwFQIAEhggNDc4NzZBQ0YxMjdCQ0VFOTk2NzA3MTI4RkZCNjYyMjc=";
const NEHA_IN: &str =
    "wamid.HBgMOTI5OTY3NjczODIwFQIAEhggQ0FBQkNERUYwMDFGRjEyMzQ1NkZGQTk5RTJCM0I2NzY=";
const NEHA_REPLY: &str =
    "wamid.HBgMOTI5OTY3NjczODIwFQIAEhggM0RFNDkxRjEwNDhDQzgwMzk3NzA1ODc1RkU3QzI0MzU=";

/// Deterministic shuffles (no randomness dependency, reproducible failures).
fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut items = items.to_vec();
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
    items
}

async fn assert_sample_state(p: &Pipeline) {
    assert_eq!(
        p.messages(doc! {}).await.len(),
        4,
        "exactly the 4 sample messages"
    );
    let expectations = [
        (
            RAVI_IN,
            "conv_919937320320",
            "inbound",
            "received",
            "Ravi Kumar",
        ),
        (
            RAVI_REPLY,
            "conv_919937320320",
            "outbound",
            "read",
            "Business",
        ),
        (
            NEHA_IN,
            "conv_929967673820",
            "inbound",
            "received",
            "Neha Joshi",
        ),
        (
            NEHA_REPLY,
            "conv_929967673820",
            "outbound",
            "delivered",
            "Business",
        ),
    ];
    for (id, conversation, direction, status, user) in expectations {
        let m = p.message(id).await;
        assert_eq!(m.get_str("messageId").unwrap(), id);
        assert_eq!(m.get_str("conversationId").unwrap(), conversation, "{id}");
        assert_eq!(m.get_str("direction").unwrap(), direction, "{id}");
        assert_eq!(m.get_str("status").unwrap(), status, "{id}");
        assert_eq!(m.get_str("userName").unwrap(), user, "{id}");
        assert!(
            matches!(m.get("timestamp"), Some(Bson::DateTime(_))),
            "{id}: timestamp must be a BSON date"
        );
    }
    let ravi_reply = p.message(RAVI_REPLY).await;
    assert_eq!(
        ravi_reply
            .get_datetime("timestamp")
            .unwrap()
            .timestamp_millis(),
        1_754_400_020_000
    );

    for (conversation, name, last, status) in [
        ("conv_919937320320", "Ravi Kumar", RAVI_REPLY, "read"),
        ("conv_929967673820", "Neha Joshi", NEHA_REPLY, "delivered"),
    ] {
        let c = p.conversation(conversation).await;
        assert_eq!(c.get_str("userName").unwrap(), name);
        assert_eq!(c.get_str("lastMessageId").unwrap(), last);
        assert_eq!(c.get_str("lastMessageStatus").unwrap(), status);
        assert_eq!(c.get_str("lastMessageDirection").unwrap(), "outbound");
        assert_eq!(
            (
                test_support::int(&c, "messageCount"),
                test_support::int(&c, "unreadCount")
            ),
            (2, 1)
        );
    }
}

#[tokio::test]
async fn the_eight_samples_in_any_order_each_twice_give_the_four_messages() {
    let files = test_support::sample_files();
    for seed in [0, 1, 7] {
        let p = spawn_stack(StackConfig::new()).await;
        let first = if seed == 0 {
            files.iter().rev().cloned().collect()
        } else {
            shuffled(&files, seed)
        };
        for (_, body) in &first {
            p.post(body).await;
        }
        // The second copy of each bypasses the broker's de-duplication, so
        // the processor itself must see the repeats and ignore them.
        for (_, body) in shuffled(&files, seed + 100) {
            p.publish_raw(&body).await;
        }
        p.drained().await;
        assert_sample_state(&p).await;
    }
}

#[tokio::test]
async fn every_webhook_file_is_stored_as_expected() {
    let p = spawn_stack(StackConfig::new()).await;
    let files = test_support::all_webhook_files();
    for (_, body) in &files {
        p.post(body).await;
    }
    p.drained().await;

    let expected = test_support::expected_messages();
    assert_eq!(p.messages(doc! {}).await.len(), expected.len());
    let mut per_conversation: BTreeMap<String, i64> = BTreeMap::new();
    for e in &expected {
        let id = e["messageId"].as_str().unwrap();
        let m = p.message(id).await;
        let field = |name: &str| m.get_str(name).unwrap().to_owned();
        assert_eq!(
            field("conversationId"),
            e["conversationId"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(field("type"), e["type"].as_str().unwrap(), "{id}");
        assert_eq!(field("direction"), e["direction"].as_str().unwrap(), "{id}");
        assert_eq!(field("status"), e["finalStatus"].as_str().unwrap(), "{id}");
        assert_eq!(field("userName"), e["userName"].as_str().unwrap(), "{id}");
        let body = field("body");
        assert!(
            body.contains(e["bodyContains"].as_str().unwrap()),
            "{id}: body {body:?}"
        );
        if e["type"] != "reaction" {
            assert!(!body.is_empty(), "{id}: every message has a readable body");
        }
        *per_conversation.entry(field("conversationId")).or_default() += 1;
    }
    for (conversation, count) in per_conversation {
        let c = p.conversation(&conversation).await;
        assert_eq!(
            test_support::int(&c, "messageCount"),
            count,
            "{conversation}"
        );
    }

    // A failed status keeps WhatsApp's errors; every status time is kept.
    let failed = p.messages(doc! {"status": "failed"}).await;
    assert!(
        !failed.is_empty()
            && failed
                .iter()
                .all(|m| m.get_array("errors").is_ok_and(|e| !e.is_empty()))
    );
    let read = p
        .messages(doc! {"status": "read", "direction": "outbound"})
        .await;
    assert!(read.iter().all(|m| {
        m.get_document("statusTimestamps")
            .is_ok_and(|t| t.contains_key("read"))
    }));
    // Every raw body is archived once.
    let archived = test_support::count(&p.db, "webhook_payloads", doc! {}).await;
    let distinct: std::collections::BTreeSet<&Vec<u8>> = files.iter().map(|(_, b)| b).collect();
    assert_eq!(archived, distinct.len() as u64);
}

#[tokio::test]
async fn out_of_order_statuses_end_in_the_highest_one_and_failed_is_terminal() {
    let p = spawn_stack(StackConfig::new()).await;
    let message = |id: &str, ts: u32| {
        format!(
            r#"{{"entry":[{{"changes":[{{"field":"messages","value":{{"metadata":{{"display_phone_number":"1555"}},"contacts":[{{"wa_id":"4477"}}],"messages":[{{"from":"1555","id":"{id}","timestamp":"{ts}","type":"text","text":{{"body":"hi"}}}}]}}}}]}}]}}"#
        )
    };
    let status = |id: &str, status: &str, ts: u32| {
        format!(
            r#"{{"entry":[{{"changes":[{{"field":"messages","value":{{"statuses":[{{"id":"{id}","status":"{status}","timestamp":"{ts}","recipient_id":"4477"}}]}}}}]}}]}}"#
        )
    };
    // Statuses first (parked), then the message, then a stale repeat.
    p.post(status("wamid.a", "read", 30).as_bytes()).await;
    p.post(status("wamid.a", "delivered", 20).as_bytes()).await;
    test_support::wait_until(
        "both statuses to be parked",
        std::time::Duration::from_secs(60),
        || async { test_support::count(&p.db, "pending_statuses", doc! {}).await == 2 },
    )
    .await;
    p.post(message("wamid.a", 10).as_bytes()).await;
    p.post(status("wamid.a", "sent", 11).as_bytes()).await;
    // Failed is terminal: a later delivered does not undo it.
    p.post(message("wamid.b", 10).as_bytes()).await;
    p.post(status("wamid.b", "failed", 12).as_bytes()).await;
    p.post(status("wamid.b", "delivered", 13).as_bytes()).await;
    p.drained().await;

    let a = p.message("wamid.a").await;
    assert_eq!(a.get_str("status").unwrap(), "read");
    let times = a.get_document("statusTimestamps").unwrap();
    for s in ["sent", "delivered", "read"] {
        assert!(times.contains_key(s), "time of {s} is kept: {times}");
    }
    assert_eq!(
        p.message("wamid.b").await.get_str("status").unwrap(),
        "failed"
    );
    assert_eq!(
        test_support::count(&p.db, "pending_statuses", doc! {}).await,
        0,
        "parked statuses are applied and cleared"
    );
}
