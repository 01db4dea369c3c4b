//! A JetStream that has no room left: webhooks are refused at once (not
//! after PUBLISH_TIMEOUT_MS of retries), `/readyz` says why, and both
//! recover by themselves once there is room again.

use std::process::Stdio;
use std::time::{Duration, Instant};

use test_support::{KillOnDrop, wait_until};
use wa_broker::{BatchLimits, BrokerError, EventBus, NotReady, Queue};
use wa_broker_nats::NatsBroker;

use crate::helpers::{TestApp, config, error_message, spawn_app_with};

/// A private nats-server whose JetStream may store `max_file_store` bytes.
struct SmallNats {
    url: String,
    dir: std::path::PathBuf,
    _server: KillOnDrop,
}

impl Drop for SmallNats {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn small_nats(max_file_store: &str) -> SmallNats {
    let dir = std::env::temp_dir().join(test_support::unique_name("nats-small"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = test_support::free_port();
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 8MB\n\
             jetstream {{ store_dir: \"{}\", max_file_store: {max_file_store} }}\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    let server = KillOnDrop::new(test_support::spawn_nats_server(&config, Stdio::null()));
    test_support::wait_listening("the small nats-server", port).await;
    SmallNats {
        url: format!("nats://127.0.0.1:{port}"),
        dir,
        _server: server,
    }
}

/// A valid webhook of about `size` bytes, different for every `n`.
fn webhook(n: usize, size: usize) -> Vec<u8> {
    let text = format!("{n} ").repeat(size / (n.to_string().len() + 1));
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1"},
        "contacts": [{"profile": {"name": "Filler"}, "wa_id": "447700900123"}],
        "messages": [{"from": "447700900123", "id": format!("wamid.fill{n}"), "timestamp": "1754400000", "type": "text", "text": {"body": text}}]
    }}]}]})
    .to_string()
    .into_bytes()
}

async fn readiness(app: &TestApp) -> (u16, String) {
    let response = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn a_full_jetstream_is_refused_at_once_and_readiness_says_why() {
    let nats = small_nats("1MB").await;
    let namespace = test_support::unique_name("gw-full");
    let mut config = config(&nats.url, &namespace, None);
    // The default: a refusal must not wait for it.
    config.publish_timeout_ms = 10_000;
    let app = spawn_app_with(config).await;
    wait_until("ready", Duration::from_secs(20), || async {
        readiness(&app).await.0 == 200
    })
    .await;

    // Fill JetStream with webhooks of 64 KB until it refuses one.
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 200, "JetStream never filled up");
        let started = Instant::now();
        let response = app.post_webhook(webhook(accepted, 64 * 1024)).await;
        match response.status().as_u16() {
            200 => accepted += 1,
            503 => break (started.elapsed(), response),
            other => panic!("unexpected status {other}"),
        }
    };
    let (took, response) = refused;
    assert!(accepted > 0, "some webhooks fit");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert!(response.headers().contains_key("retry-after"));
    let message = error_message(response).await;
    assert!(message.contains("out of storage"), "{message}");
    assert!(!message.contains("10023"), "no driver text: {message}");
    // Every webhook answered 200 is stored; the refused one is not.
    assert_eq!(app.stored_payloads().await, accepted as u64);

    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("out of storage"), "{body}");
    assert!(!body.contains("error code"), "no driver text: {body}");

    // A processor cannot append its events either: it is not ready, and
    // says why.
    let processor = NatsBroker::connect(
        &nats.url,
        &namespace,
        "test-processor",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let event: wa_core::domain::Event = serde_json::from_value(serde_json::json!({
        "event": "statusUpdate",
        "data": {"messageId": "wamid.fill0", "status": "read",
                 "conversationId": "conv_447700900123", "timestamp": "2026-12-07T00:00:00Z"}
    }))
    .unwrap();
    assert!(matches!(
        processor.append(std::slice::from_ref(&event)).await,
        Err(BrokerError::Full { .. })
    ));
    assert!(matches!(
        processor.ready().await,
        Err(NotReady::CannotStore(reason)) if reason.contains("out of storage")
    ));

    // It takes the webhooks: acknowledged ones free their space (a work
    // queue), and the gateway is ready and accepts webhooks again by
    // itself; so is the processor, and its event goes through.
    let mut processed = 0;
    while processed < accepted {
        let batch = tokio::time::timeout(
            Duration::from_secs(20),
            processor.next_batch(BatchLimits {
                count: 100,
                bytes: 16 << 20,
            }),
        )
        .await
        .expect("the stored webhooks are delivered")
        .unwrap();
        for delivery in batch {
            delivery.ack().await.unwrap();
            processed += 1;
        }
    }
    wait_until(
        "processed webhooks dropped",
        Duration::from_secs(10),
        || async { app.stored_payloads().await == 0 },
    )
    .await;
    wait_until("ready again", Duration::from_secs(10), || async {
        readiness(&app).await.0 == 200
    })
    .await;
    assert_eq!(
        app.post_webhook(webhook(1_000_000, 64 * 1024))
            .await
            .status(),
        200
    );
    wait_until(
        "the processor ready again",
        Duration::from_secs(10),
        || async { processor.ready().await.is_ok() },
    )
    .await;
    processor.append(&[event]).await.unwrap();
}

/// At `ulimit -n 256`, twice that many idle connections: the gateway
/// closes the oldest idle ones to make room (not waiting for them to time
/// out), so a health check and a webhook still get through at once.
#[tokio::test]
async fn idle_connections_past_the_fd_limit_do_not_starve_health_checks_and_webhooks() {
    wa_service::server::raise_fd_limit();
    let port = test_support::free_port();
    let namespace = test_support::unique_name("gw-fds");
    let child = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 256 && exec \"$0\""])
        .arg(env!("CARGO_BIN_EXE_webhook-gateway"))
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("NATS_URL", test_support::nats_url())
        .env("NATS_NAMESPACE", &namespace)
        // Idle connections would stay a minute: only shedding frees them.
        .env("HEADER_READ_TIMEOUT_SECS", "60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop::new(child);
    test_support::wait_listening("the gateway", port).await;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let webhook = || {
        http.post(format!("{url}/webhook"))
            .body(test_support::sample_files()[0].1.clone())
            .send()
    };
    wait_until("accepting webhooks", Duration::from_secs(20), || async {
        webhook().await.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let mut idle = Vec::new();
    for _ in 0..512 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let accepted = webhook().await.unwrap();
    assert_eq!(accepted.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    drop(idle);
}

/// A webhook stream made by an older version (Limits retention, which NATS
/// cannot change) is kept as it is and keeps working; a new one is a work
/// queue.
#[tokio::test]
async fn an_existing_limits_stream_is_kept_and_a_new_one_is_a_work_queue() {
    use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
    let js = test_support::jetstream_context().await;
    let namespace = test_support::unique_name("gw-old");
    let names = wa_broker_nats::Names::new(&namespace);
    js.create_stream(StreamConfig {
        name: names.webhook_stream(),
        subjects: vec![names.ingest()],
        retention: RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .unwrap();
    let app = spawn_app_with(config(&test_support::nats_url(), &namespace, None)).await;
    wait_until("accepting webhooks", Duration::from_secs(20), || async {
        app.post_webhook(webhook(1, 1024)).await.status() == 200
    })
    .await;
    let mut stream = js.get_stream(names.webhook_stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.retention, RetentionPolicy::Limits);
    assert_eq!(info.state.messages, 1);

    let fresh = crate::helpers::spawn_app(None).await;
    wait_until("accepting webhooks", Duration::from_secs(20), || async {
        fresh.post_webhook(webhook(2, 1024)).await.status() == 200
    })
    .await;
    let mut stream = js.get_stream(fresh.names.webhook_stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.retention, RetentionPolicy::WorkQueue);
}
