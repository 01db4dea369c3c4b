use serde_json::json;

use crate::helpers::{MARKER, RAVI, spawn_stack};
use test_support::stack::StackConfig;

#[tokio::test]
async fn a_sent_message_is_stored_and_readable_on_any_replica_at_once() {
    let stack = spawn_stack(StackConfig::new().api_replicas(2)).await;
    stack.load_samples().await;
    let (status, sent) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": RAVI, "message": "Our catalogue is attached"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(
        (sent["status"].as_str(), sent["direction"].as_str()),
        (Some("sent"), Some("outbound"))
    );
    assert_eq!(
        (sent["userName"].as_str(), sent["conversationId"].as_str()),
        (Some("Business"), Some(RAVI))
    );
    assert_eq!(
        (sent["from"].as_str(), sent["to"].as_str()),
        (Some("918329446654"), Some("919937320320"))
    );
    assert_eq!(sent["_id"], sent["messageId"]);

    // Straight after the 201, the other replica serves it.
    let (_, messages) = stack
        .get(1, &format!("/api/conversations/{RAVI}/messages"))
        .await;
    let last = messages.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["messageId"], sent["messageId"]);
    assert_eq!(last["body"], "Our catalogue is attached");
    let (_, list) = stack.get(1, "/api/conversations").await;
    assert_eq!(
        list[0]["conversationId"], RAVI,
        "the conversation moves to the top"
    );
    assert_eq!(list[0]["lastMessageBody"], "Our catalogue is attached");
    assert_eq!(list[0]["messageCount"], 3);
}

#[tokio::test]
async fn the_frontends_body_is_accepted_too() {
    let stack = spawn_stack(StackConfig::new()).await;
    let body = json!({"conversationId": MARKER, "from": "918329446654", "to": "15550000001", "body": "Hello!", "userName": "Business"});
    let (status, sent) = stack.post(0, "/api/messages", body).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(
        (sent["body"].as_str(), sent["from"].as_str()),
        (Some("Hello!"), Some("918329446654"))
    );
    let (_, messages) = stack
        .get(0, &format!("/api/conversations/{MARKER}/messages"))
        .await;
    assert_eq!(messages[1]["messageId"], sent["messageId"]);
}

#[tokio::test]
async fn bad_sends_are_400_naming_the_field_and_store_nothing() {
    let stack = spawn_stack(StackConfig::new()).await;
    let long = "x".repeat(4097);
    let cases = [
        (json!({"message": "hi"}), "conversationId"),
        (
            json!({"conversationId": {"$gt": ""}, "message": "hi"}),
            "conversationId",
        ),
        (
            json!({"conversationId": "919937320320", "message": "hi"}),
            "conversationId",
        ),
        (json!({"conversationId": RAVI}), "message"),
        (
            json!({"conversationId": RAVI, "message": {"$ne": null}}),
            "message",
        ),
        (json!({"conversationId": RAVI, "body": 42}), "body"),
        (json!({"conversationId": RAVI, "message": "   "}), "message"),
        (json!({"conversationId": RAVI, "message": long}), "4096"),
        (
            json!({"conversationId": RAVI, "message": "hi", "to": "123"}),
            "to",
        ),
        (
            json!({"conversationId": RAVI, "message": "hi", "from": ["x"]}),
            "from",
        ),
        (json!(["not", "an", "object"]), "object"),
    ];
    for (body, field) in cases {
        let (status, error) = stack.post(0, "/api/messages", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            error["error"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }
    let response = stack
        .http
        .post(format!("{}/api/messages", stack.api[0]))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let exactly_4096 = "é".repeat(4096);
    let (status, _) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": MARKER, "message": exactly_4096}),
        )
        .await;
    assert_eq!(status, 201, "4096 characters (not bytes) are fine");
    assert_eq!(
        test_support::count(&stack.db, "processed_messages", mongodb::bson::doc! {}).await,
        2,
        "the conversation's first message, and that one"
    );
}
