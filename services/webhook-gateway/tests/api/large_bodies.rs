//! Bodies larger than the NATS server's `max_payload` (1 MB on a server
//! with the default configuration) are accepted and delivered whole.

use std::collections::HashMap;
use std::time::Duration;

use test_support::NatsServer;
use tokio::io::AsyncReadExt;
use wa_broker::{BatchLimits, Delivery, Ingest, Queue, payload_id};
use wa_broker_nats::{BODY_REF, NatsBroker};

use crate::helpers::{TestApp, error_message, spawn_app_on};

const LIMITS: BatchLimits = BatchLimits {
    count: 64,
    bytes: 16 * 1024 * 1024,
};

/// A valid webhook of about `size` bytes: one text message whose text is
/// numbered words, so a chunk out of place or missing changes the bytes.
fn webhook_of(size: usize, id: &str) -> Vec<u8> {
    let mut text = String::with_capacity(size);
    let mut word = 0;
    while text.len() < size.saturating_sub(400) {
        text.push_str(&format!("{word:08} "));
        word += 1;
    }
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1"},
        "contacts": [{"profile": {"name": "Big Sender"}, "wa_id": "447700900123"}],
        "messages": [{"from": "447700900123", "id": id, "timestamp": "1754400000", "type": "text", "text": {"body": text}}]
    }}]}]});
    body.to_string().into_bytes()
}

/// Posts until the gateway answers something else than 503 (it creates its
/// streams in the background when NATS first answers), expecting 200.
async fn post_accepted(app: &TestApp, body: &[u8]) -> serde_json::Value {
    for _ in 0..200 {
        let response = app.post_webhook(body.to_vec()).await;
        if response.status() != 503 {
            assert_eq!(response.status(), 200);
            return response.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway kept answering 503");
}

/// What a processor would take: the queue as the processor reads it.
async fn processor_queue(server: &NatsServer, app: &TestApp) -> NatsBroker {
    NatsBroker::connect(
        &server.url(),
        &app.namespace,
        "test-processor",
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    // Short: a delivery dropped by a timed-out `next_batch` comes back soon.
    .with_ack_wait(Duration::from_secs(5))
}

async fn take(queue: &NatsBroker, count: usize) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    while deliveries.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(20), queue.next_batch(LIMITS))
            .await
            .expect("the payloads to be delivered")
            .unwrap();
        deliveries.extend(batch);
    }
    deliveries
}

#[tokio::test]
async fn bodies_up_to_the_limit_pass_a_server_with_the_default_max_payload() {
    let server = NatsServer::start_with_default_max_payload().await;
    let app = spawn_app_on(&server.url(), None).await;
    let bodies = [
        test_support::sample_files()[0].1.clone(),
        // Just under NATS's 1 MB: no room left for headers.
        webhook_of(1024 * 1024 - 1024, "wamid.almost1mb"),
        webhook_of(2_500_000, "wamid.big"),
    ];
    for body in &bodies {
        let answer = post_accepted(&app, body).await;
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["messages"], 1);
    }
    let again = post_accepted(&app, &bodies[2]).await;
    assert_eq!(again["duplicate"], true, "de-duplicated by reference too");
    assert_eq!(app.stored_payloads().await, 3);

    // Over the gateway's own limit (4 MB here) is still refused.
    let response = app
        .post_webhook(webhook_of(5 * 1024 * 1024, "wamid.huge"))
        .await;
    assert_eq!(response.status(), 413);
    assert!(error_message(response).await.contains("larger"));

    let queue = processor_queue(&server, &app).await;
    let deliveries = take(&queue, 3).await;
    assert_eq!(deliveries.len(), 3);
    let expected: HashMap<String, &Vec<u8>> = bodies.iter().map(|b| (payload_id(b), b)).collect();
    for delivery in &deliveries {
        assert_eq!(delivery.kind, Ingest::Webhook);
        let body = expected.get(&delivery.id).expect("a posted body's id");
        assert!(
            delivery.body == body.as_slice(),
            "{} arrived whole",
            delivery.id
        );
        delivery.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_body_that_cannot_be_fetched_is_delivered_later_and_dead_letters_keep_it_whole() {
    let server = NatsServer::start_with_default_max_payload().await;
    let app = spawn_app_on(&server.url(), None).await;
    let body = webhook_of(2_500_000, "wamid.big");
    let name = payload_id(&body);
    post_accepted(&app, &body).await;

    // The body is missing for a while: nothing is delivered, nothing lost.
    let bodies = app
        .js
        .get_object_store(app.names.bodies_bucket())
        .await
        .unwrap();
    bodies.delete(&name).await.unwrap();
    let queue = processor_queue(&server, &app).await;
    let waited = tokio::time::timeout(Duration::from_secs(2), queue.next_batch(LIMITS)).await;
    assert!(waited.is_err(), "nothing to deliver without its body");
    bodies
        .put(name.as_str(), &mut body.as_slice())
        .await
        .unwrap();
    let deliveries = take(&queue, 1).await;
    assert!(
        deliveries[0].body == body,
        "delivered whole once it is back"
    );
    assert!(deliveries[0].attempt > 1, "it was handed back meanwhile");

    // Dead-lettered: too large for a DLQ message, kept by reference.
    deliveries[0]
        .dead_letter("refused for the test")
        .await
        .unwrap();
    let mut dlq = app
        .js
        .get_stream(app.names.dead_letter_stream())
        .await
        .unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 1);
    let letter = dlq.get_raw_message(1).await.unwrap();
    let header = |h: &str| letter.headers.get(h).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Dlq-Reason").as_deref(),
        Some("refused for the test")
    );
    assert_eq!(header(BODY_REF), Some(name.clone()));
    let mut kept = Vec::new();
    app.js
        .get_object_store(app.names.dead_letter_bodies_bucket())
        .await
        .unwrap()
        .get(&name)
        .await
        .unwrap()
        .read_to_end(&mut kept)
        .await
        .unwrap();
    assert!(kept == body, "the dead letter's body is kept whole");

    // And a dead-lettered payload is not delivered again.
    let waited = tokio::time::timeout(Duration::from_secs(1), queue.next_batch(LIMITS)).await;
    assert!(waited.is_err());
}
