use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::doc;

use crate::helpers::spawn_stack;
use test_support::stack::StackConfig;

#[tokio::test]
async fn an_unprocessable_payload_is_dead_lettered_and_does_not_block_the_queue() {
    let p = spawn_stack(StackConfig::new()).await;
    // Past the gateway's checks (e.g. published by an older gateway).
    p.publish_raw(b"{definitely not json").await;
    let (_, body) = &test_support::sample_files()[0];
    p.post(body).await;
    p.drained().await;

    assert_eq!(
        test_support::count(&p.db, "processed_messages", doc! {}).await,
        1
    );
    let dlq = p.js.get_stream(p.names.dead_letter_stream()).await.unwrap();
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let dead = messages.next().await.expect("one dead letter").unwrap();
    assert_eq!(dead.payload.as_ref(), b"{definitely not json");
    let reason = dead
        .headers
        .as_ref()
        .and_then(|h| h.get("Dlq-Reason"))
        .unwrap()
        .to_string();
    assert!(reason.contains("unparseable"), "{reason}");
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let p = spawn_stack(StackConfig::new()).await;
    p.post(&test_support::sample_files()[0].1).await;
    p.drained().await;
    test_support::wait_until("processor readiness", Duration::from_secs(20), || async {
        p.http
            .get(format!("{}/readyz", p.processor))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(
        p.http
            .get(format!("{}/healthz", p.processor))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = p
        .http
        .get(format!("{}/metrics", p.processor))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("payloads_processed_total"), "{metrics}");
}
