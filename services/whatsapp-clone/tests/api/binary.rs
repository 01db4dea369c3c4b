use std::process::Command;
use std::time::Duration;

use crate::helpers::{Server, temp_dir, total_messages};

fn import(paths: &[std::path::PathBuf], url: &str) -> std::process::Output {
    import_with(paths, url, &[], &[])
}

/// `whatsapp-clone import` with extra arguments and environment (and no
/// WHATSAPP_APP_SECRET of the caller's).
fn import_with(
    paths: &[std::path::PathBuf],
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_whatsapp-clone"))
        .env_remove("WHATSAPP_APP_SECRET")
        .envs(env.iter().copied())
        .arg("import")
        .args(paths)
        .arg("--url")
        .arg(format!("{url}/webhook"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn in_an_empty_folder_it_serves_imports_and_keeps_everything_across_sigkill() {
    let dir = temp_dir();
    let port = test_support::free_port();
    let server = Server::start(&dir, port).await;

    let output = import(&[test_support::webhook_files_dir()], &server.url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    let expected = test_support::expected_messages().len() as i64;
    test_support::wait_until(
        "every message to be stored",
        Duration::from_secs(60),
        || async { total_messages(&server.url).await == expected },
    )
    .await;
    assert!(
        dir.join("data/store.sqlite3").exists(),
        "data lives under ./data by default"
    );

    server.kill();
    let server = Server::start(&dir, port).await;
    assert_eq!(
        total_messages(&server.url).await,
        expected,
        "everything accepted is still there"
    );
}

#[tokio::test]
async fn accepted_webhooks_survive_a_sigkill_before_they_are_processed() {
    let dir = temp_dir();
    let port = test_support::free_port();
    let server = Server::start(&dir, port).await;
    let client = reqwest::Client::new();
    for n in 0..200 {
        let messages: Vec<_> = (0..5)
            .map(|i| serde_json::json!({"from": "447000000001", "id": format!("wamid.kill.{n}.{i}"), "timestamp": "1754500000", "type": "text", "text": {"body": "x"}}))
            .collect();
        let body = serde_json::json!({"entry": [{"changes": [{"field": "messages", "value": {"metadata": {"display_phone_number": "1555"}, "messages": messages}}]}]});
        let response = client
            .post(format!("{}/webhook", server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Killed straight after the last 200: much is still queued.
    server.kill();
    let server = Server::start(&dir, port).await;
    test_support::wait_until(
        "all 1000 accepted messages",
        Duration::from_secs(120),
        || async { total_messages(&server.url).await == 1000 },
    )
    .await;
    let conversation = crate::helpers::get_json(&format!("{}/api/conversations", server.url)).await;
    assert_eq!(conversation[0]["messageCount"], 1000);
}

#[tokio::test]
async fn import_fails_loudly_naming_the_file() {
    let dir = temp_dir();
    let server = Server::start(&dir, test_support::free_port()).await;
    let bad = dir.join("broken.json");
    std::fs::write(&bad, "{not json").unwrap();
    let output = import(&[bad, dir.join("missing.json")], &server.url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("broken.json: 400"), "{stdout}");
    assert!(stdout.contains("missing.json: cannot read"), "{stdout}");
}

#[tokio::test]
async fn import_signs_its_posts_with_the_app_secret_as_the_gateway_checks() {
    let dir = temp_dir();
    let secret = "import-test-app-secret";
    let server = Server::start_with(
        &dir,
        test_support::free_port(),
        &[("RUST_LOG", "warn"), ("WHATSAPP_APP_SECRET", secret)],
        None,
    )
    .await;
    let samples = test_support::webhook_files_dir();
    let one = samples.join("conversation_1_message_1.json");

    // Unsigned: refused, and the importer says what to do.
    let output = import_with(std::slice::from_ref(&one), &server.url, &[], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("401"), "{stdout}");
    assert!(stdout.contains("WHATSAPP_APP_SECRET"), "{stdout}");

    // Another secret: refused too (the signature is checked, not just present).
    let output = import_with(
        std::slice::from_ref(&one),
        &server.url,
        &["--app-secret", "not-the-secret"],
        &[],
    );
    assert!(!output.status.success());

    // The secret from the flag, then from the environment: every file taken.
    let output = import_with(
        std::slice::from_ref(&one),
        &server.url,
        &["--app-secret", secret],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let output = import_with(
        &[samples],
        &server.url,
        &[],
        &[("WHATSAPP_APP_SECRET", secret)],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    let expected = test_support::expected_messages().len() as i64;
    test_support::wait_until(
        "every signed message to be stored",
        Duration::from_secs(60),
        || async { total_messages(&server.url).await == expected },
    )
    .await;
}
