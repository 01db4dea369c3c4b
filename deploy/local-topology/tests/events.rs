//! Events are never lost, across the stack's failures: two processors and
//! two api-gateways as processes, a real socket.io-client on each
//! api-gateway, 2,000 messages posted while each processor is SIGKILLed
//! once and NATS is killed and restarted once. Every stored message
//! reaches each client as exactly one `newMessage`, with `seq` increasing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::doc;
use serde_json::json;
use test_support::{KillOnDrop, NatsServer, SocketClient, free_port, wait_until};

mod common;
use common::binary;

const WEBHOOKS: usize = 200;
const PER_WEBHOOK: usize = 10;
const CUSTOMERS: usize = 20;
const WAIT: Duration = Duration::from_secs(120);

struct Stack {
    namespace: String,
    nats: String,
}

impl Stack {
    fn start(&self, name: &str, port: u16) -> KillOnDrop {
        let child = Command::new(binary(name))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("NATS_URL", &self.nats)
            .env("NATS_NAMESPACE", &self.namespace)
            .env("MONGODB_URI", test_support::mongodb_uri(&self.namespace))
            .env("ACK_WAIT_SECS", "3")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop::new(child)
    }
}

fn webhook(n: usize) -> Vec<u8> {
    let customer = format!("4472{:06}", n % CUSTOMERS);
    let messages: Vec<_> = (0..PER_WEBHOOK)
        .map(|i| {
            json!({"from": customer, "id": format!("wamid.faults.{n}.{i}"),
                   "timestamp": (1_754_600_000 + n).to_string(), "type": "text",
                   "text": {"body": format!("{n}.{i}")}})
        })
        .collect();
    json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "15550000000"},
        "contacts": [{"wa_id": customer, "profile": {"name": "Faulty"}}],
        "messages": messages
    }}]}]})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_message_reaches_every_client_once_through_crashes() {
    let mut nats = NatsServer::start().await;
    let stack = Stack {
        namespace: test_support::unique_name("faults"),
        nats: nats.url(),
    };
    let gateway_port = free_port();
    let api_ports = [free_port(), free_port()];
    let _gateway = stack.start("webhook-gateway", gateway_port);
    let processor_a = stack.start("processor", free_port());
    let processor_b = stack.start("processor", free_port());
    let _api: Vec<KillOnDrop> = api_ports
        .iter()
        .map(|&port| stack.start("api-gateway", port))
        .collect();
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let apis: Vec<String> = api_ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let http = reqwest::Client::new();
    wait_until("every service to be ready", WAIT, || async {
        let mut ready = true;
        for url in apis.iter().chain([&gateway]) {
            ready &= http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
        }
        ready
    })
    .await;
    let mut clients = vec![
        SocketClient::connect_with(&apis[0], "polling,websocket", json!({"resume": true})).await,
        SocketClient::connect_with(&apis[1], "websocket", json!({"resume": true})).await,
    ];

    let ingest = {
        let (http, gateway) = (http.clone(), gateway.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..WEBHOOKS)
                .map(|n| {
                    let (http, gateway) = (http.clone(), gateway.clone());
                    async move {
                        // 503 while NATS is down: Meta retries, so do we.
                        loop {
                            let posted = http
                                .post(format!("{gateway}/webhook"))
                                .body(webhook(n))
                                .send()
                                .await;
                            if posted.is_ok_and(|r| r.status() == 200) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<()>>()
                .await;
        })
    };

    let db = test_support::mongo_database(&stack.namespace).await;
    let stored = || test_support::count(&db, "processed_messages", doc! {});
    let total = (WEBHOOKS * PER_WEBHOOK) as u64;
    let at_least = |n: u64| async move {
        wait_until("messages to be stored", WAIT, || async {
            stored().await >= n
        })
        .await;
    };
    at_least(total / 5).await;
    processor_a.kill();
    let _processor_a = stack.start("processor", free_port());
    at_least(total / 3).await;
    nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart().await;
    at_least(total * 2 / 3).await;
    processor_b.kill();
    let _processor_b = stack.start("processor", free_port());
    ingest.await.unwrap();
    at_least(total).await;
    // Stored is not finished: a processor killed after inserting messages
    // and before the rest of its batch leaves that to the redelivery, an
    // ack wait later. So: every payload acknowledged...
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let names = wa_broker_nats::Names::new(&stack.namespace);
    test_support::wait_until_drained(&js, &names.webhook_stream(), WAIT).await;
    // ...and events a killed processor committed but did not relay taken
    // to the log by the sweeper, a few seconds later.
    wait_until("the outboxes to be relayed", WAIT, || async {
        test_support::count(&db, "outbox", doc! {}).await == 0
    })
    .await;

    // A marker last: each client has everything before it once it has it.
    let marker = loop {
        let response = http
            .post(format!("{}/api/messages", apis[0]))
            .json(&json!({"conversationId": "conv_4472000000", "message": "marker"}))
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(marker.status().is_success());
    let expected: BTreeSet<String> = (0..WEBHOOKS)
        .flat_map(|n| (0..PER_WEBHOOK).map(move |i| format!("wamid.faults.{n}.{i}")))
        .collect();
    for client in &mut clients {
        let events = client.events_until_marker("marker").await;
        test_support::increasing_seqs(&events);
        let ids: Vec<&str> = events
            .iter()
            .filter(|(name, _)| name == "newMessage")
            .map(|(_, d)| d["messageId"].as_str().unwrap())
            .collect();
        let unique: BTreeSet<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        assert_eq!(ids.len(), unique.len(), "no message announced twice");
        let missing: Vec<&String> = expected.difference(&unique).take(5).collect();
        assert!(
            missing.is_empty(),
            "every stored message announced; {} missing, e.g. {missing:?}",
            expected.len() - unique.len()
        );
    }
    assert_eq!(stored().await, total + 1, "and stored once");
}
