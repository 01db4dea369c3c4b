//! `GET /api/search` on the all-in-one (SQLite FTS5): a message is found
//! right after its `201`, hits carry what a client shows, bad queries get
//! `400`, and no query string, however odd, gets a `5xx`.

use serde_json::{Value, json};

use crate::helpers::{embedded_config, get_json, spawn, temp_dir};

async fn search(http: &reqwest::Client, url: &str, q: &str) -> (u16, Value) {
    let response = http
        .get(format!("{url}/api/search"))
        .query(&[("q", q)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_searchable_once_stored_and_odd_queries_never_fail() {
    let app = spawn(embedded_config(&temp_dir())).await;
    let http = reqwest::Client::new();
    let customer = "919937320320";
    let inbound = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"wa_id": customer, "profile": {"name": "Ravi Kumar"}}],
        "messages": [{"from": customer, "id": "wamid.search.1", "timestamp": "1754400000", "type": "text",
            "text": {"body": "Kya Pune mein delivery hogi? पुणे में डिलीवरी"}}]}}]}]});
    let response = http
        .post(format!("{}/webhook", app.url))
        .body(inbound.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let messages_url = format!("{}/api/conversations/conv_{customer}/messages", app.url);
    test_support::wait_until(
        "the message",
        std::time::Duration::from_secs(20),
        || async {
            get_json(&messages_url)
                .await
                .as_array()
                .is_some_and(|m| !m.is_empty())
        },
    )
    .await;

    // Sent through the API: searchable as soon as the 201 is back.
    let sent = http
        .post(format!("{}/api/messages", app.url))
        .json(&json!({"conversationId": format!("conv_{customer}"), "message": "Yes, Pune deliveries go out on Tuesdays"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201);
    let (status, found) = search(&http, &app.url, "tuesd").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 1, "{found}");

    let (status, found) = search(&http, &app.url, "PUNE deliv").await;
    assert_eq!(status, 200, "{found}");
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{found}");
    assert_eq!(
        results[0]["body"], "Yes, Pune deliveries go out on Tuesdays",
        "newest first"
    );
    let inbound_hit = &results[1];
    assert_eq!(inbound_hit["messageId"], "wamid.search.1");
    assert_eq!(inbound_hit["conversationId"], format!("conv_{customer}"));
    assert_eq!(inbound_hit["conversationName"], "Ravi Kumar");
    let marked: Vec<&str> = inbound_hit["highlight"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["hit"] == true)
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(marked, ["Pune", "delivery"], "{inbound_hit}");
    assert!(found["next"].is_null());
    let (_, hindi) = search(&http, &app.url, "डिली").await;
    assert_eq!(hindi["results"].as_array().unwrap().len(), 1, "{hindi}");

    // Bad requests are 400 with a reason.
    for q in ["", "a", " x ", "!!"] {
        let (status, body) = search(&http, &app.url, q).await;
        assert_eq!(status, 400, "{q:?}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let bad_scope = http
        .get(format!("{}/api/search?q=pune&conversationId=nope", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_scope.status(), 400);
    let bad_cursor = http
        .get(format!("{}/api/search?q=pune&before=yesterday", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_cursor.status(), 400);

    // Query syntax of every kind is plain words: never a 5xx.
    let odd = [
        "\"pune",
        "pune\"",
        "* *",
        "pune*",
        "NEAR(pune delivery)",
        "pune OR",
        "AND pune",
        "NOT pune",
        "^pune",
        "words:pune",
        "{words scope}: pune",
        "pune\0delivery",
        "(((pune",
        "pune)))",
        "'; DROP TABLE messages; --",
        "\\\\pune",
        "%_%",
        "p\u{301}une",
        "🙂🙂",
        "pune-",
        "-pune",
        "+pune",
        "東京駅",
        "مرحبا",
        &"pune ".repeat(80),
    ];
    for q in odd {
        let (status, body) = search(&http, &app.url, q).await;
        assert!(status == 200 || status == 400, "{q:?}: {status} {body}");
    }
}
