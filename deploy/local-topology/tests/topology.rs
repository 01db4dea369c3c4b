//! The deployment topology as local processes: nats-server and the
//! MongoDB-wire server (from scripts/test.sh), one webhook-gateway, two
//! processors, two api-gateways, and Debian's nginx running the edge config
//! from `deploy/nginx/` — everything reached through the edge's one port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use test_support::{KillOnDrop, SocketClient, free_port, wait_until};

const WAIT: Duration = Duration::from_secs(60);

mod common;
use common::binary;

struct Process(KillOnDrop);

impl Process {
    fn service(name: &str, port: u16, namespace: &str) -> Self {
        let child = Command::new(binary(name))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("NATS_URL", test_support::nats_url())
            .env("NATS_NAMESPACE", namespace)
            .env("MONGODB_URI", test_support::mongodb_uri(namespace))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self(KillOnDrop::new(child))
    }

    fn stop(self) {
        self.0.kill();
    }
}

/// nginx stops its worker processes only when asked nicely (SIGTERM);
/// SIGKILL would orphan them, still listening.
struct Edge(Child);

impl Drop for Edge {
    fn drop(&mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .ok();
        self.0.wait().ok();
    }
}

/// nginx with `deploy/nginx/edge.conf.template`, rendered the way the
/// nginx image's envsubst renders it in docker compose.
fn start_edge(dir: &Path, port: u16, webhook_ports: &[u16], api_ports: &[u16]) -> Edge {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nginx/edge.conf.template"),
    )
    .unwrap();
    let servers = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let edge = template
        .replace("${WEBHOOK_GATEWAY_SERVERS}", &servers(webhook_ports))
        .replace("${API_GATEWAY_SERVERS}", &servers(api_ports))
        .replace("${EDGE_PORT}", &format!("127.0.0.1:{port}"));
    assert!(!edge.contains("${"), "every template variable is filled in");
    std::fs::write(dir.join("edge.conf"), edge).unwrap();
    let main = format!(
        "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  include {dir}/edge.conf;\n}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx must be installed (scripts/test.sh installs Debian's nginx-light)");
    Edge(child)
}

async fn get(url: &str) -> (u16, Value) {
    match reqwest::get(url).await {
        Ok(response) => (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_behind_the_edge_serves_everything_on_one_port_and_survives_losing_replicas() {
    let namespace = test_support::unique_name("topology");
    let dir = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(&dir).unwrap();
    let (gateway_port, edge_port) = (free_port(), free_port());
    let api_ports = [free_port(), free_port()];

    let _gateway = Process::service("webhook-gateway", gateway_port, &namespace);
    let processor_a = Process::service("processor", free_port(), &namespace);
    let _processor_b = Process::service("processor", free_port(), &namespace);
    let api_a = Process::service("api-gateway", api_ports[0], &namespace);
    let _api_b = Process::service("api-gateway", api_ports[1], &namespace);
    let _edge = start_edge(&dir, edge_port, &[gateway_port], &api_ports);
    let edge = format!("http://127.0.0.1:{edge_port}");

    wait_until("the edge and every service behind it", WAIT, || async {
        get(&format!("{edge}/healthz")).await.0 == 200
            && get(&format!("{edge}/api/stats")).await.0 == 200
            && get(&format!("http://127.0.0.1:{}/readyz", api_ports[0]))
                .await
                .0
                == 200
            && get(&format!("http://127.0.0.1:{}/readyz", api_ports[1]))
                .await
                .0
                == 200
            && get(&format!("http://127.0.0.1:{gateway_port}/readyz"))
                .await
                .0
                == 200
    })
    .await;

    // The web inbox, through the edge like everything else.
    let page = reqwest::get(format!("{edge}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let script = reqwest::get(format!("{edge}/assets/app.js")).await.unwrap();
    assert_eq!(script.status(), 200);

    let mut polling = SocketClient::connect(&edge, "polling,websocket").await;
    let mut websocket = SocketClient::connect(&edge, "websocket").await;
    assert_eq!(
        polling.upgraded().await,
        "websocket",
        "the upgrade goes through the proxy"
    );

    let http = reqwest::Client::new();
    let post_webhook = |body: Vec<u8>| {
        let (http, edge) = (http.clone(), edge.clone());
        async move {
            // 503 only while the gateway creates its streams at startup.
            for _ in 0..200 {
                let response = http
                    .post(format!("{edge}/webhook"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                if response.status() == 200 {
                    return;
                }
                assert_eq!(response.status(), 503);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the gateway never accepted the webhook");
        }
    };
    for (_, body) in test_support::sample_files() {
        post_webhook(body).await;
    }
    // Two processors: wait until both are done (their events go out before
    // their acks), so the marker below is the last event.
    let js = test_support::jetstream_context().await;
    let stream = format!("{}_WEBHOOKS", namespace.to_uppercase());
    test_support::wait_until_drained(&js, &stream, WAIT).await;
    let marker = json!({"conversationId": "conv_929967673820", "message": "marker"});
    let response = http
        .post(format!("{edge}/api/messages"))
        .json(&marker)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    for client in [&mut polling, &mut websocket] {
        let events = client.events_until_marker("marker").await;
        let new_messages = events.iter().filter(|(n, _)| n == "newMessage").count();
        let updates = events.iter().filter(|(n, _)| n == "statusUpdate").count();
        assert_eq!(
            (new_messages, updates),
            (4, 2),
            "through the edge: {events:?}"
        );
    }
    let (_, conversations) = get(&format!("{edge}/api/conversations")).await;
    let ravi = conversations
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversationId"] == "conv_919937320320")
        .unwrap()
        .clone();
    assert_eq!(
        (
            ravi["userName"].as_str(),
            ravi["lastMessageStatus"].as_str()
        ),
        (Some("Ravi Kumar"), Some("read"))
    );

    // Lose a processor and an api-gateway; keep sending.
    processor_a.stop();
    api_a.stop();
    for (_, body) in test_support::all_webhook_files() {
        post_webhook(body).await;
    }
    let expected = test_support::expected_messages().len() as i64 + 1;
    wait_until(
        "every message, through the surviving replicas",
        WAIT,
        || async {
            get(&format!("{edge}/api/stats")).await.1["totalMessages"].as_i64() == Some(expected)
        },
    )
    .await;
    test_support::wait_until_drained(&js, &stream, WAIT).await;
    // Clients that were on the stopped replica reconnect to the other one.
    // Events sent while they reconnect are not replayed (yet), so a new
    // marker goes out until each client has received one.
    let mut sent = 0;
    for client in [&mut polling, &mut websocket] {
        loop {
            sent += 1;
            let after = json!({"conversationId": "conv_929967673820", "message": format!("after the loss {sent}")});
            let response = http
                .post(format!("{edge}/api/messages"))
                .json(&after)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                201,
                "the edge routes around the stopped api-gateway"
            );
            if client
                .saw_message_within("after the loss", Duration::from_secs(3))
                .await
            {
                break;
            }
            assert!(sent < 20, "a client never came back");
        }
    }
}
