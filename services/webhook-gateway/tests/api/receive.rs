use crate::helpers::{APP_SECRET, error_message, spawn_app};

fn sign(body: &[u8]) -> String {
    test_support::signature(APP_SECRET, body)
}

#[tokio::test]
async fn every_sample_file_is_accepted_and_stored_in_the_stream() {
    let app = spawn_app(None).await;
    let files = test_support::sample_files();
    for (name, body) in &files {
        let response = app.post_webhook(body.clone()).await;
        assert_eq!(response.status(), 200, "{name}");
    }
    // conversation_1_status_1.json is a byte copy of a message file: the
    // broker's de-duplication stores it once.
    assert_eq!(app.stored_payloads().await, files.len() as u64 - 1);
}

#[tokio::test]
async fn the_api_alias_accepts_webhooks_too() {
    let app = spawn_app(None).await;
    let (_, body) = &test_support::sample_files()[0];
    let response = app
        .http
        .post(format!("{}/api/webhook", app.address))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.stored_payloads().await, 1);
}

#[tokio::test]
async fn a_body_posted_twice_is_stored_once() {
    let app = spawn_app(None).await;
    let (_, body) = &test_support::sample_files()[0];
    let first: serde_json::Value = app.post_webhook(body.clone()).await.json().await.unwrap();
    let second: serde_json::Value = app.post_webhook(body.clone()).await.json().await.unwrap();
    assert_eq!(
        (first["duplicate"].as_bool(), second["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(app.stored_payloads().await, 1);
}

#[tokio::test]
async fn signatures_are_checked_on_the_raw_bytes_when_a_secret_is_set() {
    let app = spawn_app(Some(APP_SECRET)).await;
    // Meta's test vector: non-ASCII text escaped as \uXXXX in the body.
    let body = include_bytes!("../fixtures/signature_fixture_text_non_ascii.json").to_vec();
    let good = "sha256=f837ee19f226214302584c609bf140394d45ff22d14b4b52545d94b37bb72116";
    let post = |signature: Option<String>, body: Vec<u8>| {
        let mut request = app.http.post(format!("{}/webhook", app.address)).body(body);
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        request.send()
    };
    assert_eq!(
        post(Some(good.to_owned()), body.clone())
            .await
            .unwrap()
            .status(),
        200
    );

    // The signature of a parsed-and-re-serialised body must not pass.
    let reserialised =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&body).unwrap()).unwrap();
    for (signature, body) in [
        (Some(sign(&reserialised)), body.clone()),
        (Some(good.to_owned()), reserialised.clone()),
        (Some("sha256=00".to_owned()), body.clone()),
        (None, body.clone()),
    ] {
        let response = post(signature.clone(), body).await.unwrap();
        assert_eq!(response.status(), 401, "{signature:?}");
        assert!(error_message(response).await.contains("Signature"));
    }
    assert_eq!(app.stored_payloads().await, 1);
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_nothing_is_stored() {
    let app = spawn_app(None).await;
    // Deep nesting outside the items (a bad item alone is kept aside, below).
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not JSON", b"hello".to_vec(), 400, "not valid JSON"),
        ("empty", Vec::new(), 400, "not valid JSON"),
        (
            "not an envelope",
            br#"{"hello":"world"}"#.to_vec(),
            400,
            "not a WhatsApp webhook",
        ),
        (
            "entry not an array",
            br#"{"object":"whatsapp_business_account","entry":5}"#.to_vec(),
            400,
            "not a WhatsApp webhook",
        ),
        ("deep nesting", deep.into_bytes(), 400, "body is not"),
        (
            "over the body limit",
            vec![b' '; 5 * 1024 * 1024],
            413,
            "larger",
        ),
    ];
    for (what, body, status, message) in cases {
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), status, "{what}");
        let error = error_message(response).await;
        assert!(error.contains(message), "{what}: {error}");
    }
    assert_eq!(app.stored_payloads().await, 0);
    // One malformed item does not refuse its envelope (the processor keeps
    // it aside with the reason and stores the rest), even nested deep.
    let without_id = br#"{"entry":[{"changes":[{"field":"messages","value":{"messages":[{"from":"1","timestamp":"1","type":"text"}]}}]}]}"#;
    let deep_item = format!(
        r#"{{"entry":[{{"changes":[{{"value":{{"messages":[{}{}]}}}}]}}]}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    for body in [without_id.to_vec(), deep_item.into_bytes()] {
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            (&answer["messages"], &answer["rejected"]),
            (&serde_json::json!(0), &serde_json::json!(1)),
            "the bad item is counted as rejected: {answer}"
        );
    }
    let health = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the gateway is still up");
}

#[tokio::test]
async fn a_three_megabyte_webhook_is_accepted() {
    let app = spawn_app(None).await;
    let text = "x".repeat(3 * 1024 * 1024);
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "1555"},
        "messages": [{"from": "4477", "id": "wamid.big", "timestamp": "1754400000", "type": "text", "text": {"body": text}}]
    }}]}]});
    let response = app.post_webhook(body.to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.stored_payloads().await, 1);
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let app = spawn_app(None).await;
    app.post_webhook(test_support::sample_files()[0].1.clone())
        .await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .http
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metrics = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("webhooks_accepted_total"), "{metrics}");
}

/// With API_TOKENS set, /metrics takes a token (health and the webhook do not).
#[tokio::test]
async fn metrics_need_a_token_when_tokens_are_set() {
    let token = "metrics-token-0123456789abcdef";
    let mut config = crate::helpers::config(
        &test_support::nats_url(),
        &test_support::unique_name("gw"),
        None,
    );
    config.webhook.allow_unsigned_webhooks = true;
    config.metrics.api_tokens = Some(token.to_owned());
    let app = crate::helpers::spawn_app_with(config).await;
    let metrics = format!("{}/metrics", app.address);
    let anonymous = app.http.get(&metrics).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let with_token = app
        .http
        .get(&metrics)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let health = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
