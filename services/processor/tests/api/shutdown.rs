use std::time::{Duration, Instant};

/// SIGTERM ends the processor within a few seconds even when neither NATS
/// nor MongoDB can be reached.
#[tokio::test]
async fn sigterm_stops_the_processor_promptly_when_nats_and_mongodb_are_gone() {
    let port = test_support::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_processor"))
        .env(
            "NATS_URL",
            format!("nats://127.0.0.1:{}", test_support::free_port()),
        )
        .env(
            "MONGODB_URI",
            format!("mongodb://127.0.0.1:{}/gone", test_support::free_port()),
        )
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = test_support::KillOnDrop::new(child);
    let http = reqwest::Client::new();
    test_support::wait_until(
        "the processor to listen",
        Duration::from_secs(20),
        || async {
            http.get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok()
        },
    )
    .await;
    // Let it try its store and broker for a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    let took = asked.elapsed();
    assert!(exited, "still running after 15 s");
    assert!(took < Duration::from_secs(8), "stopped after {took:?}");
}
