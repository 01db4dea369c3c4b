//! Secure by default, as a client sees it: tokens on the API, /metrics and
//! Socket.IO; no anonymous public listener by accident; per-IP rate
//! limits; idle and half-sent connections that can't hold the service;
//! JSON for every error; secrets in no log line and no `--help`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use test_support::SocketClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Server, temp_dir};

const TOKEN: &str = "token-for-tests-0123456789abcdef";
const APP_SECRET: &str = "app-secret-for-tests-5f2b9c";
const VERIFY_TOKEN: &str = "verify-token-for-tests-81d3";

/// The binary with `env` (and nothing else but PATH), its output in `log`.
async fn start(dir: &Path, env: &[(&str, &str)], log: &Path) -> Server {
    Server::start_with(dir, test_support::free_port(), env, Some(log)).await
}

/// Status and JSON body (a non-JSON body fails the test).
async fn call(request: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, body, headers)
}

fn is_error(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|e| !e.is_empty())
}

/// Every route of the API, with a body where it takes one.
fn api_routes(url: &str, http: &reqwest::Client) -> Vec<(String, reqwest::RequestBuilder)> {
    // A first message to a customer is a template.
    let message = json!({"conversationId": "conv_919937320320",
        "template": {"name": "hello_world", "language": {"code": "en_US"}}});
    vec![
        ("list".into(), http.get(format!("{url}/api/conversations"))),
        (
            "messages".into(),
            http.get(format!(
                "{url}/api/conversations/conv_919937320320/messages"
            )),
        ),
        (
            "read".into(),
            http.post(format!("{url}/api/conversations/conv_919937320320/read")),
        ),
        (
            "send".into(),
            http.post(format!("{url}/api/messages")).json(&message),
        ),
        ("stats".into(), http.get(format!("{url}/api/stats"))),
        ("events".into(), http.get(format!("{url}/api/events"))),
        (
            "openapi".into(),
            http.get(format!("{url}/api/openapi.json")),
        ),
    ]
}

#[tokio::test]
async fn with_tokens_only_a_good_token_opens_the_api_the_metrics_and_the_socket() {
    let dir = temp_dir();
    let log = dir.join("log.txt");
    let app = start(&dir, &[("API_TOKENS", TOKEN)], &log).await;
    let http = reqwest::Client::new();
    let url = &app.url;

    for (name, request) in api_routes(url, &http) {
        let (status, body, headers) = call(request).await;
        assert_eq!(status, 401, "{name} without a token: {body}");
        assert!(is_error(&body), "{name}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer", "{name}");
    }
    for (name, request) in api_routes(url, &http) {
        let (status, body, _) = call(request.bearer_auth("not-the-token-0123456789")).await;
        assert_eq!(status, 401, "{name} with a wrong token: {body}");
    }
    // A browser on another origin may send the token (a `*` in
    // Access-Control-Allow-Headers would not cover Authorization).
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{url}/api/stats"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(
        allowed.to_lowercase().contains("authorization"),
        "{allowed}"
    );
    let metrics = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401);
    let metrics = http.get(format!("{url}/metrics")).bearer_auth(TOKEN);
    assert_eq!(metrics.send().await.unwrap().status(), 200);
    // Health needs no token; the webhook is guarded by its signature.
    // (Ready once it follows its event log: at once, or nearly.)
    for path in ["/healthz", "/readyz"] {
        test_support::wait_until(path, std::time::Duration::from_secs(10), || async {
            call(http.get(format!("{url}{path}"))).await.0 == 200
        })
        .await;
    }

    // Sockets: refused without the token, or with another.
    for options in [
        json!({}),
        json!({"auth": {"token": "not-the-token-0123456789"}}),
    ] {
        let mut refused = SocketClient::start(url, "websocket", options.clone());
        let error = refused
            .next_of("connect_error", Duration::from_secs(10))
            .await;
        assert!(
            error["message"].as_str().unwrap().contains("unauthorized"),
            "{options}: {error}"
        );
    }

    // With the token everything works, the live events included.
    let mut socket =
        SocketClient::connect_with(url, "websocket", json!({"auth": {"token": TOKEN}})).await;
    for (name, request) in api_routes(url, &http) {
        let (status, body, _) = call(request.bearer_auth(TOKEN)).await;
        assert!(
            (200..300).contains(&status),
            "{name} with the token: {status} {body}"
        );
    }
    let sent = socket.next_of("event", Duration::from_secs(20)).await;
    assert_eq!(sent["event"], "newMessage", "{sent}");
    assert_eq!(sent["data"]["body"], "[template: hello_world]");
    assert!(!std::fs::read_to_string(&log).unwrap().contains(TOKEN));
}

#[tokio::test]
async fn a_public_address_is_refused_without_tokens_or_the_explicit_switch() {
    let dir = temp_dir();
    let refused = Command::new(env!("CARGO_BIN_EXE_whatsapp-clone"))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "0.0.0.0")
        .env("PORT", test_support::free_port().to_string())
        .env("WHATSAPP_APP_SECRET", APP_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("refusing to listen on 0.0.0.0"), "{said}");
    assert!(said.contains("ALLOW_ANONYMOUS=true"), "{said}");

    // Tokens, but unsigned webhooks: refused too.
    let refused = Command::new(env!("CARGO_BIN_EXE_whatsapp-clone"))
        .current_dir(&dir)
        .env_clear()
        .env("HOST", "0.0.0.0")
        .env("PORT", test_support::free_port().to_string())
        .env("API_TOKENS", TOKEN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("ALLOW_UNSIGNED_WEBHOOKS=true"), "{said}");

    // Explicitly allowed: it serves (on every address, so on loopback too).
    let log = dir.join("log.txt");
    let app = start(
        &dir,
        &[
            ("HOST", "0.0.0.0"),
            ("ALLOW_ANONYMOUS", "true"),
            ("ALLOW_UNSIGNED_WEBHOOKS", "true"),
        ],
        &log,
    )
    .await;
    let (status, _, _) = call(reqwest::Client::new().get(format!("{}/api/stats", app.url))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn one_client_past_its_rate_gets_429_while_health_answers() {
    let dir = temp_dir();
    let app = start(&dir, &[("RATE_LIMIT_PER_IP", "20")], &dir.join("log.txt")).await;
    let http = reqwest::Client::new();
    let stats = format!("{}/api/stats", app.url);
    let burst = futures::future::join_all((0..200).map(|_| call(http.get(&stats)))).await;
    let limited: Vec<_> = burst
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    let served = burst.iter().filter(|(status, _, _)| *status == 200).count();
    assert!(served >= 20, "the burst allowance is served: {served}");
    assert!(limited.len() >= 100, "{} of 200 limited", limited.len());
    for (_, body, headers) in &limited {
        assert!(is_error(body), "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
    }
    // New Socket.IO sessions are limited too (each costs memory until it
    // times out, authenticated or not); a client past the limit retries.
    let handshake = format!("{}/socket.io/?EIO=4&transport=polling", app.url);
    let opened = futures::future::join_all((0..200).map(|_| http.get(&handshake).send())).await;
    let refused = opened
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 429))
        .count();
    assert!(refused >= 100, "{refused} of 200 handshakes refused");
    // Health checks are not limited.
    let health = format!("{}/healthz", app.url);
    let checks = futures::future::join_all((0..50).map(|_| call(http.get(&health)))).await;
    assert!(checks.iter().all(|(status, _, _)| *status == 200));
}

/// Guessing tokens is limited like any other traffic: past the per-IP
/// rate, wrong tokens get 429 with Retry-After instead of 401 at any pace.
#[tokio::test]
async fn wrong_tokens_past_the_rate_get_429() {
    let dir = temp_dir();
    let app = start(
        &dir,
        &[("API_TOKENS", TOKEN), ("RATE_LIMIT_PER_IP", "20")],
        &dir.join("log.txt"),
    )
    .await;
    let http = reqwest::Client::new();
    let stats = format!("{}/api/stats", app.url);
    let burst = futures::future::join_all(
        (0..200).map(|n| call(http.get(&stats).bearer_auth(format!("guess-{n}")))),
    )
    .await;
    let unauthorized = burst.iter().filter(|(status, _, _)| *status == 401).count();
    let limited: Vec<_> = burst
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    assert!(
        unauthorized >= 20,
        "the burst allowance is answered: {unauthorized}"
    );
    assert!(limited.len() >= 100, "{} of 200 limited", limited.len());
    for (_, body, headers) in &limited {
        assert!(is_error(body), "{body}");
        assert!(headers.contains_key("retry-after"));
    }
}

#[tokio::test]
async fn idle_and_half_sent_connections_do_not_hold_the_service() {
    let dir = temp_dir();
    let app = start(
        &dir,
        &[
            ("HEADER_READ_TIMEOUT_SECS", "1"),
            ("RATE_LIMIT_PER_IP", "0"),
        ],
        &dir.join("log.txt"),
    )
    .await;
    let address = app.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    let mut half = TcpStream::connect(&address).await.unwrap();
    half.write_all(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The start of an HTTP/2 preface, never finished.
    let mut preface = TcpStream::connect(&address).await.unwrap();
    preface.write_all(b"PRI").await.unwrap();

    // Answered while they are open.
    let http = reqwest::Client::new();
    let (status, _, _) = call(http.get(format!("{}/api/conversations", app.url))).await;
    assert_eq!(status, 200);

    // The half-sent request and the idle connections are closed.
    let closed = |mut stream: TcpStream| async move {
        let mut buffer = [0_u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    };
    assert!(closed(half).await, "a half-sent request is cut off");
    assert!(closed(preface).await, "a half-sent preface is cut off");
    let all = futures::future::join_all(idle.into_iter().map(closed)).await;
    assert!(all.iter().all(|c| *c), "idle connections are closed");
}

#[tokio::test]
async fn every_error_is_json_and_a_large_rest_body_is_413() {
    let dir = temp_dir();
    let app = start(&dir, &[], &dir.join("log.txt")).await;
    let http = reqwest::Client::new();
    let url = &app.url;
    let large = json!({"conversationId": "conv_919937320320", "message": "x".repeat(70_000)});
    let cases = [
        (413, http.post(format!("{url}/api/messages")).json(&large)),
        (405, http.delete(format!("{url}/api/conversations"))),
        (404, http.get(format!("{url}/api/nothing-here"))),
        (
            400,
            http.post(format!("{url}/api/messages"))
                .header("content-type", "application/json")
                .body("{"),
        ),
    ];
    for (expected, request) in cases {
        let (status, body, _) = call(request).await;
        assert_eq!(status, expected, "{body}");
        assert!(is_error(&body), "{expected}: {body}");
    }
}

#[tokio::test]
async fn secrets_are_in_no_log_line_and_no_help() {
    let secrets = [
        ("API_TOKENS", TOKEN),
        ("WHATSAPP_APP_SECRET", APP_SECRET),
        ("WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN),
    ];
    // (deploy/local-topology's config_names checks the services' --help.)
    for args in [vec!["--help"], vec!["serve", "--help"]] {
        {
            let help = Command::new(env!("CARGO_BIN_EXE_whatsapp-clone"))
                .args(&args)
                .envs(secrets)
                .env(
                    "MONGODB_URI",
                    "mongodb://user:db-password-3c1a@127.0.0.1:1/x",
                )
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&help.stdout);
            assert!(help.status.success(), "{text}");
            for secret in [TOKEN, APP_SECRET, VERIFY_TOKEN, "db-password-3c1a"] {
                assert!(!text.contains(secret), "{args:?} shows {secret}");
            }
        }
    }

    // At debug, through a verification, a signed webhook and a socket
    // handshake carrying the token.
    let dir = temp_dir();
    let log = dir.join("log.txt");
    let mut env = secrets.to_vec();
    env.push(("RUST_LOG", "debug"));
    let app = start(&dir, &env, &log).await;
    let http = reqwest::Client::new();
    let verify = format!(
        "{}/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=42",
        app.url
    );
    let answer = http.get(&verify).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "42");
    let body = test_support::sample_files()[0].1.clone();
    let signature = test_support::signature(APP_SECRET, &body);
    let posted = http
        .post(format!("{}/webhook", app.url))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let mut socket = SocketClient::connect_with(
        &app.url,
        "polling,websocket",
        json!({"auth": {"token": TOKEN, "lastSeq": 0}}),
    )
    .await;
    // From the start of the log: the webhook's events.
    socket.next_of("event", Duration::from_secs(20)).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "debug logging is on");
    for (name, secret) in secrets {
        assert!(!logged.contains(secret), "{name} is in the log");
    }
}

#[tokio::test]
async fn sockets_from_origins_outside_cors_origins_are_refused() {
    let dir = temp_dir();
    let app = start(
        &dir,
        &[("CORS_ORIGINS", "http://app.example")],
        &dir.join("log.txt"),
    )
    .await;
    let evil = json!({"extraHeaders": {"Origin": "http://evil.example"}});
    for transports in ["websocket", "polling"] {
        let mut refused = SocketClient::start(&app.url, transports, evil.clone());
        let error = refused
            .next_of("connect_error", Duration::from_secs(10))
            .await;
        assert!(
            error["message"].as_str().unwrap().contains("origin"),
            "{transports}: {error}"
        );
    }
    let good = json!({"extraHeaders": {"Origin": "http://app.example"}});
    SocketClient::connect_with(&app.url, "websocket", good).await;
    // Clients that are not browsers send no Origin.
    SocketClient::connect(&app.url, "websocket").await;
}

#[tokio::test]
async fn a_socket_subscribes_to_at_most_max_subscriptions_conversations() {
    let dir = temp_dir();
    let app = start(&dir, &[("MAX_SUBSCRIPTIONS", "2")], &dir.join("log.txt")).await;
    let mut socket = SocketClient::connect(&app.url, "websocket").await;
    let ids: Vec<String> = (1..=5).map(|n| format!("conv_91000000000{n}")).collect();
    let listed = socket.emit_with_ack("subscribe", json!(ids)).await;
    assert_eq!(
        listed,
        json!(["conv_910000000001", "conv_910000000002"]),
        "{listed}"
    );
    let listed = socket
        .emit_with_ack("subscribe", json!(["conv_910000000009"]))
        .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
}

#[tokio::test]
async fn a_5xx_says_what_failed_with_the_request_id_and_no_driver_text() {
    let dir = temp_dir();
    // A MongoDB that is not there (and answers nothing within 300 ms).
    let mongo = "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300";
    let app = start(&dir, &[("MONGODB_URI", mongo)], &dir.join("log.txt")).await;
    let http = reqwest::Client::new();
    let (status, body, headers) = call(http.get(format!("{}/api/stats", app.url))).await;
    assert_eq!(status, 503, "{body}");
    assert!(is_error(&body), "{body}");
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(body["requestId"], id, "{body}");
    let (status, ready, _) = call(http.get(format!("{}/readyz", app.url))).await;
    assert_eq!(status, 503);
    assert_eq!(ready["error"], "not ready: the database is not reachable");
    for answer in [&body, &ready] {
        let text = answer.to_string();
        assert!(
            !text.contains("127.0.0.1:1") && !text.contains("Kind"),
            "{text}"
        );
    }
}
