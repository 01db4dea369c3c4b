//! Events are never lost: `seq`, resuming with `auth: {lastSeq}`, `resync`
//! and `GET /api/events`, with a real socket.io-client.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::{Mongo, SocketClient};

use crate::helpers::{MARKER, RAVI, spawn_api, spawn_stack};
use test_support::stack::{NatsSettings, StackConfig};

const WAIT: Duration = Duration::from_secs(30);

/// `(seq, event, id)` of events, to compare streams.
fn keys(events: &[(String, Value)]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .map(|(name, data)| {
            (
                data["seq"].as_u64().unwrap(),
                name.clone(),
                format!("{}:{}", data["messageId"], data["status"]),
            )
        })
        .collect()
}

fn text_webhook(customer: &str, id: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "15550000000"},
        "contacts": [{"wa_id": customer, "profile": {"name": "Load"}}],
        "messages": [{"from": customer, "id": id, "timestamp": "1754500000", "type": "text", "text": {"body": id}}]
    }}]}]})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_after_missing_events_gets_exactly_what_it_missed_then_live_events() {
    // The standalone server: on the replica-set stand-in, marking Ravi's
    // conversation read while the processor stores the load answered 200
    // with `"updated": 0` (1 here), and the read's event was missing.
    let stack = spawn_stack(StackConfig::new().mongo(Mongo::Default).api_replicas(2)).await;
    // One client stays connected throughout: the reference stream.
    let mut steady = SocketClient::connect(&stack.api[1], "websocket").await;
    let mut resuming =
        SocketClient::connect_with(&stack.api[0], "websocket", json!({"resume": true})).await;
    stack.load_samples().await;
    stack.send(0, MARKER, "before").await;
    let seen = resuming.events_until_marker("before").await;
    assert!(!seen.is_empty());

    // Away while webhooks keep coming.
    resuming.disconnect().await;
    let load = {
        let (http, webhook) = (reqwest::Client::new(), stack.webhook.clone());
        tokio::spawn(async move {
            for n in 0..50 {
                let body = text_webhook("4470000000", &format!("wamid.away.{n}"));
                let response = http
                    .post(format!("{webhook}/webhook"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    stack
        .post(1, &format!("/api/conversations/{RAVI}/read"), json!({}))
        .await;
    // Back once it missed half of them (the rest come while it resumes).
    test_support::wait_until("25 events while it is away", WAIT, || async {
        let (_, log) = stack.get(0, "/api/events?limit=1000").await;
        let away = log.as_array().into_iter().flatten().filter(|e| {
            e["data"]["messageId"]
                .as_str()
                .is_some_and(|id| id.starts_with("wamid.away."))
        });
        away.count() >= 25
    })
    .await;
    resuming.reconnect().await;
    load.await.unwrap();
    stack.drained().await;
    stack.send(1, MARKER, "after").await;

    let reference = steady.events_until_marker("after").await;
    let resumed = resuming.events_until_marker("after").await;
    // The last event it got before leaving: the "before" marker.
    let (_, log) = stack.get(0, "/api/events?limit=1000").await;
    let last_seen = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["body"] == "before")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let missed: Vec<_> = keys(&reference)
        .into_iter()
        .filter(|(seq, _, _)| *seq > last_seen)
        .collect();
    assert!(missed.len() > 50, "the load happened while it was away");
    assert_eq!(
        keys(&resumed),
        missed,
        "exactly the events it missed, in order, then the live ones"
    );
}

#[tokio::test]
async fn resuming_keeps_the_narrowed_stream_and_a_forgotten_seq_means_resync() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    stack.send(0, MARKER, "marker").await;
    // From the start of the log, only Ravi's conversation.
    let mut narrowed = SocketClient::connect_with(
        &stack.api[0],
        "websocket",
        json!({"auth": {"lastSeq": 0, "subscribe": [RAVI, MARKER]}}),
    )
    .await;
    let events = narrowed.events_until_marker("marker").await;
    assert_eq!(
        events.len(),
        4,
        "the stack's first message, Ravi's two messages and his status: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(_, d)| d["conversationId"] == RAVI || d["conversationId"] == MARKER)
    );

    // Events the log no longer keeps: resync, then live events.
    let (status, all) = stack.get(0, "/api/events?after=0&limit=1000").await;
    assert_eq!(status, 200);
    let last = all.as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    stack
        .js
        .get_stream(stack.names.events_stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let (status, gone) = stack.get(0, "/api/events?after=1").await;
    assert_eq!(status, 410, "{gone}");
    assert!(gone["error"].as_str().unwrap().contains("no longer kept"));
    let mut late =
        SocketClient::connect_with(&stack.api[0], "websocket", json!({"auth": {"lastSeq": 1}}))
            .await;
    let (name, data) = late.next_event(WAIT).await;
    assert_eq!(name, "resync");
    assert!(data["reason"].is_string());
    stack.send(0, MARKER, "live").await;
    let (name, data) = late.next_event(WAIT).await;
    assert_eq!(
        (name.as_str(), data["body"].as_str()),
        ("newMessage", Some("live"))
    );
    assert!(data["seq"].as_u64().unwrap() > last);

    // A seq the log never gave (a reset log, or made up): 410 and resync too.
    let ahead = last + 1_000_000;
    let (status, error) = stack.get(0, &format!("/api/events?after={ahead}")).await;
    assert_eq!(status, 410, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("there is no event")
    );
    let mut made_up = SocketClient::connect_with(
        &stack.api[0],
        "websocket",
        json!({"auth": {"lastSeq": ahead}}),
    )
    .await;
    let (name, _) = made_up.next_event(WAIT).await;
    assert_eq!(name, "resync");
    stack.send(0, MARKER, "after resync").await;
    let (name, data) = made_up.next_event(WAIT).await;
    assert_eq!(
        (name.as_str(), data["body"].as_str()),
        ("newMessage", Some("after resync"))
    );
}

#[tokio::test]
async fn the_event_log_is_served_over_rest() {
    let stack = spawn_stack(StackConfig::new()).await;
    stack.load_samples().await;
    let (status, all) = stack.get(0, "/api/events").await;
    assert_eq!(status, 200);
    let all = all.as_array().unwrap().clone();
    assert_eq!(
        all.len(),
        7,
        "the stack's first message, 4 messages and 2 status updates: {all:?}"
    );
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(
        all.iter()
            .all(|e| e["event"] == "newMessage" || e["event"] == "statusUpdate")
    );
    assert!(all[0]["data"]["messageId"].is_string());

    let (_, page) = stack
        .get(0, &format!("/api/events?after={}&limit=2", seqs[1]))
        .await;
    assert_eq!(page, json!(all[2..4]));
    let (_, none) = stack
        .get(0, &format!("/api/events?after={}", seqs[seqs.len() - 1]))
        .await;
    assert_eq!(none, json!([]));
    for bad in ["after=-1", "after=x", "limit=0", "limit=1001"] {
        let (status, body) = stack.get(0, &format!("/api/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn subscribing_with_only_invalid_ids_changes_nothing() {
    let stack = spawn_stack(StackConfig::new()).await;
    let mut client = SocketClient::connect(&stack.api[0], "websocket").await;
    let subscribed = client
        .emit_with_ack("subscribe", json!(["not-a-conversation", "conv_x"]))
        .await;
    assert_eq!(subscribed, json!(["*"]), "still everything");
    stack.send(0, MARKER, "still here").await;
    let (_, data) = client.next_event(WAIT).await;
    assert_eq!(data["body"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slower_than_the_events_catches_up_and_misses_none() {
    // Room for one packet per socket: a burst of events overflows every
    // client's buffer, which must then be caught up from the log.
    let stack = spawn_stack(StackConfig::new().api_args(["--socket-buffer=1"])).await;
    let mut clients = vec![
        SocketClient::connect(&stack.api[0], "polling").await,
        SocketClient::connect(&stack.api[0], "websocket").await,
    ];
    let customer = "4470000001";
    let messages: Vec<Value> = (0..300)
        .map(|n| {
            json!({"from": customer, "id": format!("wamid.burst.{n}"), "timestamp": "1754500000",
                   "type": "text", "text": {"body": n.to_string()}})
        })
        .collect();
    let burst = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": "15550000000"},
        "contacts": [{"wa_id": customer, "profile": {"name": "Burst"}}],
        "messages": messages
    }}]}]});
    stack.post_webhook(burst.to_string().as_bytes()).await;
    stack.drained().await;
    stack
        .send(0, &format!("conv_{customer}"), "after the burst")
        .await;

    for client in &mut clients {
        let events = client.events_until_marker("after the burst").await;
        let mut ids: Vec<String> = events
            .iter()
            .map(|(_, data)| data["messageId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut expected: Vec<String> = (0..300).map(|n| format!("wamid.burst.{n}")).collect();
        expected.sort();
        assert_eq!(ids, expected, "every event once");
        let seqs = test_support::increasing_seqs(&events);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "none skipped");
    }
    let (_, metrics) = stack.get_text(0, "/metrics").await;
    let catch_ups = metrics
        .lines()
        .find_map(|line| line.strip_prefix("socketio_catch_ups_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(catch_ups > 0, "the clients did fall behind:\n{metrics}");
}

/// A replica that cannot read the event log yet (NATS down at its start)
/// is not ready, and a client that connected to it anyway (and went live
/// after waiting 2 s) is told to resync once it can: it may have missed
/// events meanwhile.
#[tokio::test]
async fn a_client_connected_before_its_replica_follows_the_log_is_told_to_resync() {
    let mut nats = test_support::NatsServer::start().await;
    let namespace = test_support::unique_name("early");
    let bus = wa_broker_nats::NatsBroker::connect(
        &nats.url(),
        &namespace,
        "tests",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    bus.ensure_streams().await.unwrap();
    let earlier = wa_core::domain::Event::StatusUpdate(wa_core::domain::StatusUpdate {
        message_id: "wamid.earlier".to_owned(),
        status: "delivered".into(),
        conversation_id: MARKER.to_owned(),
        phone_number_id: None,
        business_number: None,
        timestamp: chrono::Utc::now(),
        client_message_id: None,
        previous_message_id: None,
        errors: None,
    });
    wa_broker::EventBus::append(&bus, &[earlier]).await.unwrap();
    nats.stop();

    let config = StackConfig {
        namespace: namespace.clone(),
        nats: NatsSettings {
            url: nats.url(),
            ..NatsSettings::default()
        },
        ..StackConfig::new()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = spawn_api(&config, &shutdown).await;
    let _stop = shutdown.drop_guard();
    let ready = || async {
        reqwest::get(format!("{url}/readyz"))
            .await
            .map_or(0, |r| r.status().as_u16())
    };
    assert_eq!(ready().await, 503, "not ready without the event log");
    let mut early = SocketClient::connect(&url, "websocket").await;
    // A new socket waits 2 s for the replica to follow the log, then goes
    // live without it (a timeout of the product's to wait out, not a
    // synchronisation).
    tokio::time::sleep(Duration::from_secs(3)).await;

    nats.restart().await;
    let (name, data) = early.next_event(WAIT).await;
    assert_eq!(name, "resync", "{data}");
    assert!(data["reason"].as_str().unwrap().contains("not following"));
    test_support::wait_until("ready", WAIT, || async { ready().await == 200 }).await;
}
