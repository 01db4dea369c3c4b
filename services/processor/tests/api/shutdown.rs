use std::time::Duration;

/// SIGTERM ends the processor within a few seconds even when neither NATS
/// nor MongoDB can be reached.
#[tokio::test]
async fn sigterm_stops_the_processor_promptly_when_nats_and_mongodb_are_gone() {
    let gone = |scheme: &str, path: &str| {
        format!("{scheme}://127.0.0.1:{}{path}", test_support::free_port())
    };
    let (child, url) = test_support::start_binary(
        env!("CARGO_BIN_EXE_processor"),
        &[
            ("NATS_URL", gone("nats", "")),
            ("MONGODB_URI", gone("mongodb", "/gone")),
        ],
    )
    .await;
    // Up, and trying its store and broker: not ready without them.
    test_support::wait_until(
        "the processor to say it is not ready",
        Duration::from_secs(20),
        || async {
            reqwest::get(format!("{url}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 503)
        },
    )
    .await;
    let took = test_support::time_to_exit_after_sigterm(child).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(8)),
        "stopped after {took:?}"
    );
}
