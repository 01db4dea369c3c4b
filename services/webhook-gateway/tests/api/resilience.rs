use std::time::Duration;

use test_support::{NatsServer, wait_until};

use crate::helpers::{error_message, spawn_app_on};

#[tokio::test]
async fn with_nats_down_the_gateway_answers_503_and_recovers_by_itself() {
    let mut nats = NatsServer::start().await;
    let app = spawn_app_on(&nats.url(), None).await;
    let (_, body) = &test_support::sample_files()[0];
    // Retried: the gateway creates its streams in the background at startup.
    wait_until(
        "the first webhook to be accepted",
        Duration::from_secs(20),
        || async { app.post_webhook(body.clone()).await.status() == 200 },
    )
    .await;

    nats.stop();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let response = http
        .post(format!("{}/webhook", app.address))
        .body(test_support::sample_files()[1].1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        error_message(response)
            .await
            .contains("message queue is unavailable")
    );
    let ready = http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    nats.restart().await;
    wait_until(
        "the gateway to accept webhooks again",
        Duration::from_secs(30),
        || async {
            app.post_webhook(test_support::sample_files()[1].1.clone())
                .await
                .status()
                == 200
        },
    )
    .await;
    // NATS kept its data: both accepted payloads are there.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream(app.names.webhook_stream()).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}
