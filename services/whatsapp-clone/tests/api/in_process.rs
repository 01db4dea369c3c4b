use std::time::Duration;

use mongodb::bson::doc;
use test_support::SocketClient;
use whatsapp_clone::import;

use crate::helpers::{embedded_config, get_json, spawn, temp_dir};

fn sample_paths() -> Vec<std::path::PathBuf> {
    let dir = test_support::webhook_files_dir();
    test_support::sample_files()
        .into_iter()
        .map(|(name, _)| dir.join(name))
        .collect()
}

#[tokio::test]
async fn on_embedded_defaults_it_shows_the_same_conversations_and_events_as_the_stack() {
    let app = spawn(embedded_config(&temp_dir())).await;
    let mut client = SocketClient::connect(&app.url, "polling,websocket").await;

    let report = import::run(&sample_paths(), &format!("{}/webhook", app.url), false)
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{report}");
    assert_eq!(
        (report.posted, report.messages, report.statuses),
        (8, 5, 3),
        "{report}"
    );

    let (mut new_messages, mut updates) = (0, Vec::new());
    while new_messages < 4 || updates.len() < 2 {
        match client.next_event(Duration::from_secs(30)).await {
            (name, _) if name == "newMessage" => new_messages += 1,
            (_, data) => updates.push((
                data["conversationId"].as_str().unwrap().to_owned(),
                data["status"].as_str().unwrap().to_owned(),
            )),
        }
    }
    updates.sort();
    assert_eq!(
        updates,
        vec![
            ("conv_919937320320".into(), "read".into()),
            ("conv_929967673820".into(), "delivered".into())
        ]
    );

    let conversations = get_json(&format!("{}/api/conversations", app.url)).await;
    let list = conversations.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (
            list[0]["conversationId"].as_str(),
            list[0]["userName"].as_str()
        ),
        (Some("conv_929967673820"), Some("Neha Joshi"))
    );
    assert_eq!(
        (
            list[0]["lastMessageStatus"].as_str(),
            list[0]["messageCount"].as_i64()
        ),
        (Some("delivered"), Some(2))
    );
    assert_eq!(
        (
            list[1]["userName"].as_str(),
            list[1]["lastMessageStatus"].as_str()
        ),
        (Some("Ravi Kumar"), Some("read"))
    );
    let messages = get_json(&format!(
        "{}/api/conversations/conv_919937320320/messages",
        app.url
    ))
    .await;
    assert_eq!(messages[0]["timestamp"], "2025-08-05T13:20:00Z");
    assert_eq!(messages[1]["userName"], "Business");

    // Sending works the same way, through the embedded queue.
    let sent: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/messages", app.url))
        .json(&serde_json::json!({"conversationId": "conv_919937320320", "message": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["status"], "sent");
    let (name, data) = client.next_event(Duration::from_secs(30)).await;
    assert_eq!(
        (name.as_str(), &data["messageId"]),
        ("newMessage", &sent["messageId"])
    );
}

#[tokio::test]
async fn sustained_ingest_through_the_webhook_keeps_every_message() {
    let app = spawn(embedded_config(&temp_dir())).await;
    let client = reqwest::Client::new();
    let posts = (0..300).map(|n| {
        let (client, url) = (client.clone(), format!("{}/webhook", app.url));
        async move {
            let messages: Vec<_> = (0..10)
                .map(|i| serde_json::json!({"from": format!("4470000{:05}", n % 50), "id": format!("wamid.load.{n}.{i}"), "timestamp": "1754500000", "type": "text", "text": {"body": "load"}}))
                .collect();
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {"metadata": {"display_phone_number": "1555"}, "messages": messages}}]}]});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    });
    futures_join_all(posts).await;
    test_support::wait_until(
        "all 3000 messages to be stored",
        Duration::from_secs(120),
        || async { crate::helpers::total_messages(&app.url).await == 3000 },
    )
    .await;
    // Summaries follow each batch's inserts: they converge on the same count.
    test_support::wait_until(
        "the summaries to count all 3000",
        Duration::from_secs(60),
        || async {
            let conversations = get_json(&format!("{}/api/conversations?limit=500", app.url)).await;
            let counted: i64 = conversations
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["messageCount"].as_i64())
                .sum();
            counted == 3000
        },
    )
    .await;
}

/// Runs the futures with at most 16 at a time.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    use futures::StreamExt;
    futures::stream::iter(futures)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test]
async fn given_nats_and_mongodb_it_uses_them() {
    let namespace = test_support::unique_name("clone");
    let mut config = embedded_config(&temp_dir());
    config.nats_url = Some(test_support::nats_url());
    config.nats_namespace = namespace.clone();
    config.mongodb_uri = Some(test_support::mongodb_uri(&namespace));
    let app = spawn(config).await;
    let report = import::run(&sample_paths(), &format!("{}/webhook", app.url), false)
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{report}");
    let db = test_support::mongo_database(&namespace).await;
    test_support::wait_until(
        "the samples to land in MongoDB",
        Duration::from_secs(60),
        || async { test_support::count(&db, "processed_messages", doc! {}).await == 4 },
    )
    .await;
    let js = test_support::jetstream_context().await;
    let mut stream = js
        .get_stream(format!("{}_WEBHOOKS", namespace.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.last_sequence,
        7,
        "the payloads went through JetStream"
    );
}

/// On the embedded store too: a reply is sent through WhatsApp, takes its
/// wamid, and Meta's later status applies to it; the conversation shows it.
#[tokio::test]
async fn on_embedded_defaults_a_reply_goes_to_whatsapp_and_takes_its_statuses() {
    use serde_json::json;
    let graph = test_support::graph::FakeGraph::start().await;
    let mut config = embedded_config(&temp_dir());
    config.graph.whatsapp_access_token = Some(test_support::graph::TOKEN.to_owned());
    config.graph.whatsapp_phone_number_id = Some(test_support::graph::PHONE_NUMBER_ID.to_owned());
    config.graph.graph_api_url = graph.url();
    let app = spawn(config).await;
    let http = reqwest::Client::new();
    let customer = "447700900201";
    let webhook = |value: serde_json::Value| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
            "value": value}]}]})
        .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let inbound = webhook(json!({"metadata": {"display_phone_number": "15550783881"},
        "contacts": [{"wa_id": customer, "profile": {"name": "Ada"}}],
        "messages": [{"from": customer, "id": "wamid.ada.1", "timestamp": now, "type": "text", "text": {"body": "hi"}}]}));
    let response = http
        .post(format!("{}/webhook", app.url))
        .body(inbound)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let messages_url = format!("{}/api/conversations/conv_{customer}/messages", app.url);
    test_support::wait_until(
        "the customer's message",
        Duration::from_secs(20),
        || async {
            get_json(&messages_url)
                .await
                .as_array()
                .is_some_and(|m| m.len() == 1)
        },
    )
    .await;

    let sent: serde_json::Value = http
        .post(format!("{}/api/messages", app.url))
        .json(&json!({"conversationId": format!("conv_{customer}"), "message": "Hello Ada", "replyTo": "wamid.ada.1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["status"], "pending", "{sent}");
    graph
        .wait_for("the reply", Duration::from_secs(20), |r| {
            r.iter().any(|r| r.wamid.is_some())
        })
        .await;
    let request = graph.sends().remove(0);
    assert_eq!(
        request.body["context"],
        json!({"message_id": "wamid.ada.1"})
    );
    let wamid = request.wamid.unwrap();
    test_support::wait_until(
        "the reply to take its wamid",
        Duration::from_secs(20),
        || async { get_json(&messages_url).await[1]["messageId"] == wamid.as_str() },
    )
    .await;
    let delivered = webhook(json!({"metadata": {"display_phone_number": "15550783881"},
        "statuses": [{"id": wamid, "status": "delivered", "recipient_id": customer, "timestamp": now}]}));
    http.post(format!("{}/webhook", app.url))
        .body(delivered)
        .send()
        .await
        .unwrap();
    test_support::wait_until("delivered", Duration::from_secs(20), || async {
        get_json(&messages_url).await[1]["status"] == "delivered"
    })
    .await;
    let conversations = get_json(&format!("{}/api/conversations", app.url)).await;
    assert_eq!(conversations[0]["lastMessageId"], wamid.as_str());
    assert_eq!(conversations[0]["lastMessageStatus"], "delivered");
    assert!(conversations[0]["windowExpiresAt"].is_string());
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}
