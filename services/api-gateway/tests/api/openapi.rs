use serde_json::Value;

use crate::helpers::{RAVI, spawn_stack};
use test_support::stack::StackConfig;

/// Every key of a real response is a documented property, and every
/// required property is in the response.
fn assert_matches_schema(document: &Value, schema: &str, instance: &Value) {
    let schema = &document["components"]["schemas"][schema];
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{schema}"));
    for key in instance.as_object().unwrap().keys() {
        assert!(properties.contains_key(key), "{key} is not documented");
    }
    for key in schema["required"].as_array().unwrap() {
        assert!(
            instance.get(key.as_str().unwrap()).is_some(),
            "required {key} is missing"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_matches_the_api() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, document) = stack.get(0, "/api/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["info"]["title"], "WhatsApp Web clone API");
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/conversations", "get"),
        ("/api/conversations/{conversationId}/messages", "get"),
        ("/api/conversations/{conversationId}/read", "post"),
        ("/api/messages", "post"),
        ("/api/stats", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is documented"
        );
    }
    let (_, conversations) = stack.get(0, "/api/conversations").await;
    assert_matches_schema(&document, "Conversation", &conversations[0]);
    let (_, messages) = stack
        .get(0, &format!("/api/conversations/{RAVI}/messages"))
        .await;
    assert_matches_schema(&document, "Message", &messages[0]);
    let (_, stats) = stack.get(0, "/api/stats").await;
    assert_matches_schema(&document, "Stats", &stats);
}
