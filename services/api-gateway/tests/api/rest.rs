use serde_json::json;

use crate::helpers::{MARKER, NEHA, RAVI, spawn_stack};
use test_support::stack::StackConfig;

#[tokio::test]
async fn conversations_are_listed_newest_first_with_their_summaries() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, list) = stack.get(0, "/api/conversations").await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "the samples' two and the stack's own");
    let (neha, ravi) = (&list[1], &list[2]);
    assert_eq!(
        neha["conversationId"], NEHA,
        "Neha's conversation has the newest message"
    );
    assert_eq!(neha["userName"], "Neha Joshi");
    assert!(
        neha["lastMessageBody"]
            .as_str()
            .unwrap()
            .starts_with("Hi Neha! Absolutely.")
    );
    assert_eq!(neha["lastMessageStatus"], "delivered");
    assert_eq!(neha["lastMessageDirection"], "outbound");
    assert_eq!(neha["lastTimestamp"], "2025-08-05T13:37:10Z");
    assert_eq!(
        (neha["messageCount"].as_i64(), neha["unreadCount"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(ravi["conversationId"], RAVI);
    assert_eq!(ravi["userName"], "Ravi Kumar");
    assert_eq!(ravi["lastMessageStatus"], "read");
    assert_eq!(
        ravi["participants"],
        json!(["919937320320", "918329446654"])
    );

    let (_, page) = stack.get(0, "/api/conversations?limit=1").await;
    assert_eq!(page[0]["conversationId"], MARKER, "written to just now");
    let (_, older) = stack
        .get(
            0,
            &format!(
                "/api/conversations?limit=1&before={}",
                neha["lastTimestamp"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(older[0]["conversationId"], RAVI);
}

#[tokio::test]
async fn messages_come_oldest_first_with_the_contract_fields_and_paginate() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, messages) = stack
        .get(0, &format!("/api/conversations/{RAVI}/messages"))
        .await;
    assert_eq!(status, 200);
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 2);
    let (first, reply) = (&messages[0], &messages[1]);
    for key in [
        "_id",
        "conversationId",
        "messageId",
        "from",
        "to",
        "timestamp",
        "type",
        "body",
        "status",
        "userName",
        "direction",
    ] {
        assert!(!first[key].is_null(), "{key} is present");
    }
    assert_eq!(first["_id"], first["messageId"]);
    assert_eq!(
        (first["userName"].as_str(), first["direction"].as_str()),
        (Some("Ravi Kumar"), Some("inbound"))
    );
    assert_eq!(
        (first["status"].as_str(), first["timestamp"].as_str()),
        (Some("received"), Some("2025-08-05T13:20:00Z"))
    );
    assert_eq!(
        (reply["userName"].as_str(), reply["status"].as_str()),
        (Some("Business"), Some("read"))
    );
    assert_eq!(
        first["body"],
        "Hi, I’d like to know more about your services."
    );

    let (_, newest) = stack
        .get(0, &format!("/api/conversations/{RAVI}/messages?limit=1"))
        .await;
    assert_eq!(
        newest[0]["messageId"], reply["messageId"],
        "pages hold the newest messages"
    );
    let before = reply["timestamp"].as_str().unwrap();
    let (_, older) = stack
        .get(
            0,
            &format!("/api/conversations/{RAVI}/messages?limit=1&before={before}"),
        )
        .await;
    assert_eq!(older[0]["messageId"], first["messageId"]);
}

#[tokio::test]
async fn unknown_conversations_are_empty_and_bad_parameters_are_400() {
    let stack = spawn_stack(StackConfig::new()).await;
    let (status, body) = stack.get(0, "/api/conversations/conv_123/messages").await;
    assert_eq!((status, body), (200, json!([])));
    for (path, field) in [
        (
            "/api/conversations/not-a-conversation/messages",
            "conversationId",
        ),
        ("/api/conversations/conv_1/messages?limit=0", "limit"),
        ("/api/conversations/conv_1/messages?limit=many", "limit"),
        ("/api/conversations?before=yesterday", "before"),
        ("/api/conversations?beforeId=local.1", "beforeId"),
    ] {
        let (status, body) = stack.get(0, path).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "{path}: {body}"
        );
    }
    let (status, body) = stack.get(0, "/api/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn marking_a_conversation_read_clears_its_unread_count_once() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, body) = stack
        .post(0, &format!("/api/conversations/{RAVI}/read"), json!({}))
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"conversationId": RAVI, "updated": 1, "readReceipt": false})
        )
    );
    let (_, again) = stack
        .post(0, &format!("/api/conversations/{RAVI}/read"), json!({}))
        .await;
    assert_eq!(again["updated"], 0);
    let (_, list) = stack.get(0, "/api/conversations").await;
    let ravi = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversationId"] == RAVI)
        .unwrap();
    assert_eq!(ravi["unreadCount"], 0);
    let (_, messages) = stack
        .get(0, &format!("/api/conversations/{RAVI}/messages"))
        .await;
    assert_eq!(messages[0]["status"], "read");
    assert!(messages[0]["statusTimestamps"]["read"].is_string());
}

#[tokio::test]
async fn stats_count_messages_per_status() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, stats) = stack.get(0, "/api/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        stats,
        json!({
            // The samples, and the stack's own first message (stored only:
            // WhatsApp is not configured).
            "totalMessages": 5, "totalConversations": 3, "inbound": 2, "outbound": 3,
            "statusBreakdown": {"received": 2, "pending": 0, "sent": 1, "delivered": 1, "read": 1, "played": 0, "failed": 0},
            "rejectedItems": 0
        })
    );
}

#[tokio::test]
async fn health_metrics_cors_and_request_ids() {
    let stack = spawn_stack(StackConfig::new()).await;
    let api = &stack.api[0];
    for path in ["/healthz", "/readyz"] {
        test_support::wait_until(path, std::time::Duration::from_secs(20), || async {
            stack
                .http
                .get(format!("{api}{path}"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    let metrics = stack
        .http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    let preflight = stack
        .http
        .request(reqwest::Method::OPTIONS, format!("{api}/api/messages"))
        .header("Origin", "http://localhost:5173")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let response = stack
        .http
        .get(format!("{api}/api/conversations"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
}

/// Search on MongoDB: the samples' words, newest first, with the
/// conversation's name; a message sent through the API is found as soon
/// as its 201 is back; documented in the OpenAPI.
#[tokio::test]
async fn messages_are_found_by_their_words_on_mongodb() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, found) = stack.get(0, "/api/search?q=hi").await;
    assert_eq!(status, 200, "{found}");
    let results = found["results"].as_array().unwrap();
    assert!(!results.is_empty(), "{found}");
    assert!(
        results
            .iter()
            .all(|r| r["conversationName"].is_string() && r["highlight"].is_array())
    );

    let sent = stack.send(0, RAVI, "Your nameplate is engraved").await;
    assert_eq!(sent["conversationId"], RAVI);
    let (_, found) = stack.get(0, "/api/search?q=Nameplate%20engr").await;
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{found}");
    assert_eq!(results[0]["conversationName"], "Ravi Kumar");
    let (_, scoped) = stack
        .get(0, &format!("/api/search?q=engraved&conversationId={NEHA}"))
        .await;
    assert!(scoped["results"].as_array().unwrap().is_empty(), "{scoped}");
    let (status, _) = stack.get(0, "/api/search?q=x").await;
    assert_eq!(status, 400);
    let (_, openapi) = stack.get(0, "/api/openapi.json").await;
    assert!(openapi["paths"]["/api/search"]["get"].is_object());
}
