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

/// A frozen server keeps its connections open while every publish times
/// out: readiness asks JetStream, so the gateway is not ready meanwhile.
#[tokio::test]
async fn a_frozen_nats_makes_the_gateway_not_ready_until_it_thaws() {
    let nats = NatsServer::start().await;
    let app = spawn_app_on(&nats.url(), None).await;
    let ready = || async {
        app.http
            .get(format!("{}/readyz", app.address))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_until("ready", Duration::from_secs(20), || async {
        ready().await == 200
    })
    .await;
    let pid = nats.pid().unwrap();
    test_support::signal("-STOP", pid);
    wait_until(
        "not ready while NATS is frozen",
        Duration::from_secs(20),
        || async { ready().await == 503 },
    )
    .await;
    test_support::signal("-CONT", pid);
    wait_until("ready again", Duration::from_secs(20), || async {
        ready().await == 200
    })
    .await;
}

/// SIGTERM ends the gateway within a few seconds even while a webhook
/// waits on a NATS server that is gone.
#[tokio::test]
async fn sigterm_stops_the_gateway_promptly_when_nats_is_gone() {
    let nats = format!("nats://127.0.0.1:{}", test_support::free_port());
    // One request at a time: while the webhook waits, others are refused.
    let (child, url) = test_support::start_binary(
        env!("CARGO_BIN_EXE_webhook-gateway"),
        &[
            ("NATS_URL", nats),
            ("MAX_REQUESTS_IN_FLIGHT", "1".to_owned()),
        ],
    )
    .await;
    // A webhook waiting for NATS (up to PUBLISH_TIMEOUT_MS).
    let post = |url: String| {
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/webhook"))
                .body(test_support::sample_files()[0].1.clone())
                .send()
                .await
        })
    };
    let mut waiting = post(url.clone());
    // In flight once a probe is refused while the webhook still waits. A
    // probe that held the only slot when the webhook came got it refused
    // instead: then the webhook is posted again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if waiting.is_finished() {
            waiting = post(url.clone());
        }
        let refused = reqwest::get(format!("{url}/no-such-page"))
            .await
            .is_ok_and(|r| r.status() == 503);
        if refused && !waiting.is_finished() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook never got in flight"
        );
        // Polling: the next probe, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = test_support::time_to_exit_after_sigterm(child).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(8)),
        "stopped after {took:?}"
    );
    waiting.abort();
}
