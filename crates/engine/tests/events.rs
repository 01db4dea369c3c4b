//! Every stored change has its event, once: committed with the change in
//! the store's outbox, relayed to the event log, whatever fails in between
//! (fault injection on the real stores and logs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use wa_broker::EventBus;
use wa_broker_embedded::EmbeddedEvents;
use wa_broker_nats::NatsBroker;
use wa_core::domain::{Event, Message};
use wa_engine::processing::Processor;
use wa_engine::relay::Relay;
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

mod common;
use common::items;

async fn mongo_and_nats() -> (Arc<MongoStore>, Arc<dyn EventBus>) {
    let name = test_support::unique_name("events");
    let store = MongoStore::connect(&test_support::mongodb_uri(&name), "tests")
        .await
        .unwrap();
    store.prepare().await.unwrap();
    let bus = event_log(&test_support::nats_url(), &name).await;
    (Arc::new(store), Arc::new(bus))
}

/// A broker on `url` with its streams, in namespace `name`.
async fn event_log(url: &str, name: &str) -> NatsBroker {
    let bus = NatsBroker::connect(url, name, "tests", Duration::from_secs(5))
        .await
        .unwrap();
    bus.ensure_streams().await.unwrap();
    bus
}

async fn sqlite_and_embedded() -> (Arc<dyn Store>, Arc<dyn EventBus>) {
    let dir = std::env::temp_dir().join(test_support::unique_name("events"));
    let store = SqliteStore::open(&dir.join("store.sqlite3")).unwrap();
    store.prepare().await.unwrap();
    let bus = EmbeddedEvents::open(&dir.join("events.sqlite3"))
        .await
        .unwrap();
    (Arc::new(store), Arc::new(bus))
}

fn bodies() -> Vec<Vec<u8>> {
    test_support::all_webhook_files()
        .into_iter()
        .map(|(_, body)| body)
        .collect()
}

/// The ids of the events in the log, each once, in `seq` order.
async fn logged(bus: &Arc<dyn EventBus>) -> Vec<String> {
    let events = bus.read(0, 10_000).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq increases");
    let ids: Vec<String> = events.iter().map(|e| e.event.id()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");
    ids
}

/// A writer that died after its commit, before relaying: the sweeper
/// relays its events, and the writer relaying them late adds nothing.
async fn committed_but_not_relayed(store: Arc<dyn Store>, bus: Arc<dyn EventBus>) {
    let processor = Processor::new(store.clone());
    let events = processor.process(items(&bodies())).await.unwrap();
    assert!(!events.is_empty());
    assert!(logged(&bus).await.is_empty(), "nothing relayed yet");

    let relay = Relay::new(store.clone(), bus.clone()).with_sweep_age(Duration::ZERO);
    assert_eq!(
        relay.sweep().await,
        events.len(),
        "the sweeper finds them all"
    );
    let expected: Vec<String> = events.iter().map(Event::id).collect();
    assert_eq!(
        logged(&bus).await,
        expected,
        "all of them, in the order planned"
    );
    relay.relay(&events).await;
    assert_eq!(logged(&bus).await, expected, "the late relay adds nothing");
    assert_eq!(relay.sweep().await, 0, "the outbox is empty");

    // Redelivered: nothing new to announce.
    let again = processor.process(items(&bodies())).await.unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn mongodb_and_jetstream_committed_but_not_relayed() {
    let (store, bus) = mongo_and_nats().await;
    committed_but_not_relayed(store, bus).await;
}

#[tokio::test]
async fn sqlite_and_embedded_log_committed_but_not_relayed() {
    let (store, bus) = sqlite_and_embedded().await;
    committed_but_not_relayed(store, bus).await;
}

/// A batch stopped after each step of its change set (MongoDB without
/// transactions), then redelivered and relayed, with the sweeper running
/// too: every change announced once.
#[tokio::test]
async fn a_batch_stopped_midway_announces_every_change_once() {
    for steps in 1..=3 {
        let (mongo, bus) = mongo_and_nats().await;
        let store: Arc<dyn Store> = mongo.clone();
        let processor = Processor::new(store.clone());
        let relay = Relay::new(store.clone(), bus.clone()).with_sweep_age(Duration::ZERO);
        mongo.stop_next_change_set_after(steps);
        assert!(processor.process(items(&bodies())).await.is_err());
        relay.sweep().await;
        let events = processor.process(items(&bodies())).await.unwrap();
        relay.relay(&events).await;
        relay.sweep().await;

        let logged: BTreeSet<String> = logged(&bus).await.into_iter().collect();
        // What an uninterrupted run announces.
        let (clean_store, _) = mongo_and_nats().await;
        let clean: Arc<dyn Store> = clean_store;
        let expected: BTreeSet<String> = Processor::new(clean)
            .process(items(&bodies()))
            .await
            .unwrap()
            .iter()
            .map(Event::id)
            .collect();
        assert_eq!(logged, expected, "stopped after {steps} steps");
    }
}

/// A message too large for a NATS message (a default server takes 1 MB) is
/// still announced, without its WhatsApp objects and with its body cut:
/// the log never sticks at an event it can't take.
#[tokio::test]
async fn a_message_too_large_for_nats_is_announced_slimmed() {
    let nats = test_support::NatsServer::start_with_default_max_payload().await;
    let bus = event_log(&nats.url(), &test_support::unique_name("large")).await;
    let huge = Message::outbound_text(
        "wamid.huge".to_owned(),
        "447700000000",
        "15550000000".to_owned(),
        "x".repeat(2 * 1024 * 1024),
        Utc::now(),
    );
    let small = Message::outbound_text(
        "wamid.small".to_owned(),
        "447700000000",
        "15550000000".to_owned(),
        "hello".to_owned(),
        Utc::now(),
    );
    let events = [huge, small.clone()].map(|m| Event::NewMessage(Box::new(m)));
    bus.append(&events).await.unwrap();

    let logged = bus.read(0, 10).await.unwrap();
    assert_eq!(logged.len(), 2, "both announced, in order");
    let Event::NewMessage(slim) = &logged[0].event else {
        panic!("{:?}", logged[0].event);
    };
    assert_eq!(slim.message_id, "wamid.huge");
    assert!(slim.body.starts_with("xxxx") && slim.body.chars().count() <= 4097);
    assert_eq!(slim.content, None);
    assert_eq!(logged[1].event, Event::NewMessage(Box::new(small)));
}

/// A `delivered` status event for `message_id`.
fn delivered(message_id: &str) -> Event {
    Event::StatusUpdate(wa_core::domain::StatusUpdate {
        message_id: message_id.to_owned(),
        status: "delivered".into(),
        conversation_id: "conv_447700000000".to_owned(),
        phone_number_id: None,
        business_number: None,
        timestamp: Utc::now(),
        client_message_id: None,
        previous_message_id: None,
        errors: None,
    })
}

/// A batch of more events than async-nats lets wait for their
/// acknowledgements (5,000) is appended whole, in order.
#[tokio::test]
async fn a_batch_of_many_thousand_events_is_appended_whole() {
    let (_, bus) = mongo_and_nats().await;
    let events: Vec<Event> = (0..12_000)
        .map(|n| delivered(&format!("wamid.many.{n}")))
        .collect();
    tokio::time::timeout(Duration::from_secs(60), bus.append(&events))
        .await
        .expect("the append finishes")
        .unwrap();
    let mut logged = Vec::new();
    while logged.len() < events.len() {
        let after = logged
            .last()
            .map_or(0, |e: &wa_core::domain::Sequenced| e.seq);
        let page = bus.read(after, 1_000).await.unwrap();
        assert!(
            !page.is_empty(),
            "{} of {} read",
            logged.len(),
            events.len()
        );
        logged.extend(page);
    }
    let ids: Vec<String> = logged.iter().map(|e| e.event.id()).collect();
    let sent: Vec<String> = events.iter().map(Event::id).collect();
    assert_eq!(ids, sent);
}

/// Events deleted from the log by hand are read past (the reader moves to
/// the next one kept), and a reader after the last kept one gets nothing,
/// not an error: "nothing was delivered" is only trusted once the stream's
/// leader confirms it (a replica catching up also delivers nothing).
#[tokio::test]
async fn events_deleted_by_hand_are_read_past() {
    let name = test_support::unique_name("deleted");
    let bus = event_log(&test_support::nats_url(), &name).await;
    let events: Vec<Event> = (1..=6)
        .map(|n| delivered(&format!("wamid.deleted.{n}")))
        .collect();
    bus.append(&events).await.unwrap();
    let js = test_support::jetstream_context().await;
    let stream = js
        .get_stream(wa_broker_nats::Names::new(&name).events_stream())
        .await
        .unwrap();
    for seq in [2, 3, 5, 6] {
        assert!(stream.delete_message(seq).await.unwrap());
    }
    let seqs =
        |page: Vec<wa_core::domain::Sequenced>| page.iter().map(|e| e.seq).collect::<Vec<_>>();

    // What the reader asks the leader when a consumer delivered nothing:
    // the next event kept (nats-server 2.9 knows `next_by_subj`).
    let next = stream
        .raw_message_builder()
        .sequence(2)
        .next_by_subject(wa_broker_nats::Names::new(&name).events())
        .send()
        .await
        .unwrap();
    assert_eq!(next.sequence, 4);

    assert_eq!(seqs(bus.read(1, 10).await.unwrap()), [4]);
    assert_eq!(seqs(bus.read(1, 1).await.unwrap()), [4]);
    assert_eq!(seqs(bus.read(0, 10).await.unwrap()), [1, 4]);
    assert!(
        bus.read(4, 10).await.unwrap().is_empty(),
        "5 and 6 are gone"
    );
}
