use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::SocketClient;

use crate::helpers::{MARKER, NEHA, RAVI, spawn_stack};
use test_support::stack::StackConfig;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn clients_on_either_replica_get_every_event_exactly_once() {
    let stack = spawn_stack(StackConfig::new().api_replicas(2)).await;
    let mut polling = SocketClient::connect(&stack.api[0], "polling,websocket").await;
    let mut websocket = SocketClient::connect(&stack.api[1], "websocket").await;
    assert_eq!(
        polling.upgraded().await,
        "websocket",
        "the default transport upgrades from polling"
    );

    stack.load_samples().await;
    let sent = stack.send(1, NEHA, "Sent from the API").await;
    let (_, read) = stack
        .post(0, &format!("/api/conversations/{RAVI}/read"), json!({}))
        .await;
    assert_eq!(read["updated"], 1);
    stack.send(0, MARKER, "marker").await;

    for client in [&mut polling, &mut websocket] {
        let events = client.events_until_marker("marker").await;
        let new_messages: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "newMessage")
            .map(|(_, d)| d)
            .collect();
        let ids: BTreeSet<&str> = new_messages
            .iter()
            .map(|m| m["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(
            new_messages.len(),
            5,
            "4 webhook messages + 1 sent, no repeats: {new_messages:?}"
        );
        assert_eq!(ids.len(), 5);
        assert!(ids.contains(sent["messageId"].as_str().unwrap()));
        let mut sent_event = (*new_messages
            .iter()
            .find(|m| m["messageId"] == sent["messageId"])
            .unwrap())
        .clone();
        let seq = sent_event.as_object_mut().unwrap().remove("seq");
        assert!(seq.is_some_and(|s| s.is_u64()), "events carry their seq");
        assert_eq!(
            sent_event, sent,
            "the event carries the same object as REST, plus its seq"
        );
        test_support::increasing_seqs(&events);

        let mut updates: Vec<(String, String)> = events
            .iter()
            .filter(|(n, _)| n == "statusUpdate")
            .map(|(_, d)| {
                (
                    d["conversationId"].as_str().unwrap().to_owned(),
                    d["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        updates.sort();
        let expected = [(RAVI, "read"), (RAVI, "read"), (NEHA, "delivered")];
        assert_eq!(
            updates,
            expected.map(|(c, s)| (c.to_owned(), s.to_owned())),
            "one per applied change"
        );
        let update = events.iter().find(|(n, _)| n == "statusUpdate").unwrap();
        for key in ["messageId", "status", "conversationId", "timestamp"] {
            assert!(update.1[key].is_string(), "statusUpdate has {key}");
        }
    }
}

#[tokio::test]
async fn a_client_can_narrow_its_stream_to_some_conversations() {
    let stack = spawn_stack(StackConfig::new()).await;
    let mut client = SocketClient::connect(&stack.api[0], "websocket").await;
    let subscribed = client
        .emit_with_ack("subscribe", json!([RAVI, MARKER]))
        .await;
    assert_eq!(subscribed.as_array().map(Vec::len), Some(2), "{subscribed}");

    stack.load_samples().await;
    stack.send(0, NEHA, "not for this client").await;
    stack.send(0, MARKER, "marker").await;
    let events = client.events_until_marker("marker").await;
    assert!(
        events.iter().all(|(_, d)| d["conversationId"] == RAVI),
        "only Ravi's events: {events:?}"
    );
    assert_eq!(events.iter().filter(|(n, _)| n == "newMessage").count(), 2);
    assert_eq!(
        events.iter().filter(|(n, _)| n == "statusUpdate").count(),
        1
    );

    let remaining = client.emit_with_ack("unsubscribe", json!([RAVI])).await;
    assert_eq!(remaining, json!([MARKER]));
    stack.send(0, RAVI, "after unsubscribing").await;
    stack.send(0, MARKER, "second marker").await;
    assert!(client.events_until_marker("second marker").await.is_empty());

    assert_eq!(
        client.emit_with_ack("subscribe", json!("*")).await,
        json!(["*"])
    );
    stack.send(0, NEHA, "everything again").await;
    let (_, data) = client.next_event(WAIT).await;
    assert_eq!(data["body"], "everything again");
}
