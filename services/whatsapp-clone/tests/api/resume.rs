//! The all-in-one's event log: a client resumes with `auth.lastSeq` after
//! a disconnect and across a restart (SIGKILL) of the binary, missing
//! nothing and getting nothing twice.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::SocketClient;

use crate::helpers::{Server, get_json, temp_dir};

fn text_webhook(customer: &str, id: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "15550000000"},
        "contacts": [{"wa_id": customer, "profile": {"name": "Someone"}}],
        "messages": [{"from": customer, "id": id, "timestamp": "1754500000", "type": "text", "text": {"body": id}}]
    }}]}]})
    .to_string()
    .into_bytes()
}

async fn post_webhooks(url: &str, prefix: &str, n: usize) {
    let http = reqwest::Client::new();
    for i in 0..n {
        let response = http
            .post(format!("{url}/webhook"))
            .body(text_webhook("4471000000", &format!("wamid.{prefix}.{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Sends a marker once `stored` messages are stored, so that it comes last.
async fn send_marker(url: &str, text: &str, stored: i64) {
    test_support::wait_until(
        "the webhooks to be stored",
        Duration::from_secs(30),
        || async { crate::helpers::total_messages(url).await == stored },
    )
    .await;
    let response = reqwest::Client::new()
        .post(format!("{url}/api/messages"))
        .json(&json!({"conversationId": "conv_4471000000", "message": text}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

/// The whole log, as `(seq, event id)`.
async fn log(url: &str) -> Vec<(u64, String)> {
    let events = get_json(&format!("{url}/api/events?limit=1000")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                id(e["event"].as_str().unwrap(), &e["data"]),
            )
        })
        .collect()
}

fn id(name: &str, data: &Value) -> String {
    match name {
        "newMessage" => format!("m:{}", data["messageId"].as_str().unwrap()),
        _ => format!(
            "s:{}:{}",
            data["messageId"].as_str().unwrap(),
            data["status"].as_str().unwrap()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_after_a_disconnect_and_across_a_restart() {
    let dir = temp_dir();
    let port = test_support::free_port();
    let server = Server::start(&dir, port).await;
    let url = server.url.clone();
    let mut client = SocketClient::connect_with(&url, "websocket", json!({"resume": true})).await;
    let mut received: Vec<(u64, String)> = Vec::new();
    let mut collect = |events: Vec<(String, Value)>| {
        received.extend(
            events
                .iter()
                .map(|(name, data)| (data["seq"].as_u64().unwrap(), id(name, data))),
        );
    };

    post_webhooks(&url, "first", 10).await;
    send_marker(&url, "one", 10).await;
    collect(client.events_until_marker("one").await);

    // Away while webhooks arrive.
    client.disconnect().await;
    post_webhooks(&url, "away", 10).await;
    send_marker(&url, "two", 21).await;
    client.reconnect().await;
    collect(client.events_until_marker("two").await);

    // The binary dies; the client keeps trying and resumes when it is back.
    server.kill();
    let server = Server::start(&dir, port).await;
    post_webhooks(&url, "after", 10).await;
    send_marker(&url, "three", 32).await;
    collect(client.events_until_marker("three").await);

    // Exactly the log, without the markers the client stopped at.
    let markers: Vec<u64> = {
        let events = get_json(&format!("{url}/api/events?limit=1000")).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| ["one", "two", "three"].contains(&e["data"]["body"].as_str().unwrap_or("")))
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let expected: Vec<(u64, String)> = log(&url)
        .await
        .into_iter()
        .filter(|(seq, _)| !markers.contains(seq))
        .collect();
    assert_eq!(expected.len(), 30, "30 webhook messages logged once each");
    assert_eq!(received, expected, "every event once, in order");
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_event_log_of_the_all_in_one_keeps_its_numbering_across_restarts() {
    let dir = temp_dir();
    let port = test_support::free_port();
    let server = Server::start(&dir, port).await;
    post_webhooks(&server.url, "a", 3).await;
    let url = server.url.clone();
    test_support::wait_until("three events", Duration::from_secs(20), || async {
        log(&url).await.len() == 3
    })
    .await;
    server.kill();
    let server = Server::start(&dir, port).await;
    post_webhooks(&server.url, "b", 3).await;
    test_support::wait_until("six events", Duration::from_secs(20), || async {
        log(&url).await.len() == 6
    })
    .await;
    let seqs: Vec<u64> = log(&url).await.into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
