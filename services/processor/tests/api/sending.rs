//! The sender survives `kill -9`: queued sends are neither lost nor sent
//! twice, against a fake Graph API, with the processor in its own process.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mongodb::bson::doc;
use shared::domain::{BUSINESS_USER_NAME, Direction, Message, PENDING, QueuedSend};
use shared::processing::Processor;
use shared::store::Store;
use shared::store::mongo::MongoStore;
use test_support::graph::{FakeGraph, Reply};

use crate::helpers::{Pipeline, spawn_gateway_only};

const CUSTOMER: &str = "447700900555";
const SENDS: usize = 30;

fn start_processor(p: &Pipeline, graph: &FakeGraph) -> test_support::KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_processor"))
        .envs(graph.env())
        .env("GRAPH_TIMEOUT_SECS", "1")
        .env("NATS_URL", test_support::nats_url())
        .env("NATS_NAMESPACE", &p.namespace)
        .env("MONGODB_URI", test_support::mongodb_uri(&p.database))
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    test_support::KillOnDrop::new(child)
}

/// What `POST /api/messages` stores and queues.
fn queued(n: usize) -> (QueuedSend, Message) {
    let id = format!("local.kill{n:04}");
    let now = Utc::now();
    let text = format!("queued message {n}");
    let message = Message {
        id: id.clone(),
        message_id: id.clone(),
        client_message_id: Some(id.clone()),
        conversation_id: format!("conv_{CUSTOMER}"),
        wa_id: CUSTOMER.to_owned(),
        from: "15550783881".to_owned(),
        to: CUSTOMER.to_owned(),
        timestamp: now,
        kind: "text".to_owned(),
        body: text.clone(),
        status: PENDING.to_owned(),
        user_name: BUSINESS_USER_NAME.to_owned(),
        direction: Direction::Outbound,
        contact_name: None,
        phone_number_id: None,
        content: Some(serde_json::json!({"body": text})),
        context: None,
        referral: None,
        errors: None,
        status_timestamps: [(PENDING.to_owned(), now)].into(),
        media_url: None,
    };
    let send = QueuedSend {
        id: id.clone(),
        conversation_id: message.conversation_id.clone(),
        request: serde_json::json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": CUSTOMER, "type": "text", "text": {"body": text}, "biz_opaque_callback_data": id}),
        due: now,
        queued_at: Some(now),
        attempts: 0,
        wamid: None,
        last_error: None,
    };
    (send, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_the_processor_while_sends_are_queued_loses_and_doubles_none() {
    let p = spawn_gateway_only().await;
    let graph = FakeGraph::start().await;
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect(&test_support::mongodb_uri(&p.database), "test")
            .await
            .unwrap(),
    );
    store.prepare().await.unwrap();
    let processor = Processor::new(store.clone());
    for n in 0..SENDS {
        let (send, message) = queued(n);
        processor.send(Some(&send), &message).await.unwrap();
    }
    // The 13th send gets no answer: the processor is killed while it waits
    // for it, after 12 were accepted (one conversation: sent one by one).
    graph.script(std::iter::repeat_n(Reply::Accept, 12).chain([Reply::NoAnswer]));
    let first = start_processor(&p, &graph);
    graph
        .wait_for("13 sends", Duration::from_secs(30), |r| r.len() >= 13)
        .await;
    first.kill();
    let accepted_before = graph.sends().iter().filter(|r| r.wamid.is_some()).count();
    assert_eq!(accepted_before, 12);

    // Two replicas share the queue from now on.
    let _second = start_processor(&p, &graph);
    let _third = start_processor(&p, &graph);
    test_support::wait_until(
        "every queued message to be sent",
        Duration::from_secs(60),
        || async {
            test_support::count(&p.db, "processed_messages", doc! {"status": "sent"}).await
                == SENDS as u64
                && test_support::count(&p.db, "sends", doc! {}).await == 0
        },
    )
    .await;

    // Each message went to WhatsApp and was accepted exactly once, and took
    // the id WhatsApp gave it.
    let accepted: Vec<_> = graph
        .sends()
        .into_iter()
        .filter(|r| r.wamid.is_some())
        .collect();
    let mut tracked: Vec<String> = accepted
        .iter()
        .map(|r| {
            r.body["biz_opaque_callback_data"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    tracked.sort();
    let expected: Vec<String> = (0..SENDS).map(|n| format!("local.kill{n:04}")).collect();
    assert_eq!(tracked, expected, "every message accepted once");
    for request in &accepted {
        let local = request.body["biz_opaque_callback_data"].as_str().unwrap();
        let stored = store.message(local).await.unwrap().unwrap();
        assert_eq!(Some(&stored.message_id), request.wamid.as_ref());
        assert_eq!(stored.status, "sent");
    }
    let conversation = p.conversation(&format!("conv_{CUSTOMER}")).await;
    assert_eq!(
        test_support::int(&conversation, "messageCount"),
        SENDS as i64
    );
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}
