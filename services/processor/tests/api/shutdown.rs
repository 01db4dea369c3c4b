use std::time::Duration;

/// SIGTERM ends the processor within a few seconds even when neither NATS
/// nor MongoDB can be reached.
#[tokio::test]
async fn sigterm_stops_the_processor_promptly_when_nats_and_mongodb_are_gone() {
    let gone = |scheme: &str, path: &str| {
        format!("{scheme}://127.0.0.1:{}{path}", test_support::free_port())
    };
    let (child, _) = test_support::start_binary(
        env!("CARGO_BIN_EXE_processor"),
        &[
            ("NATS_URL", gone("nats", "")),
            ("MONGODB_URI", gone("mongodb", "/gone")),
        ],
    )
    .await;
    // Let it try its store and broker for a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let took = test_support::time_to_exit_after_sigterm(child).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(8)),
        "stopped after {took:?}"
    );
}
