//! The sender survives `kill -9` and SIGTERM: queued sends are neither
//! lost nor sent twice, and a customer gets them in the order they were
//! accepted, through Graph API outages, crashes and replicas; against a
//! fake Graph API, with the processor in its own process.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mongodb::bson::doc;
use test_support::Mongo;
use test_support::graph::{
    FakeGraph, PHONE_NUMBER_ID, Reply, SECOND_NUMBER_TOKEN, SECOND_PHONE_NUMBER_ID, TOKEN,
};
use wa_core::domain::{BUSINESS_USER_NAME, Direction, Message, PENDING, QueuedSend};
use wa_engine::processing::Processor;
use wa_store::Store;
use wa_store_mongo::MongoStore;

use crate::helpers::{Pipeline, spawn_stack};
use test_support::stack::StackConfig;

const CUSTOMER: &str = "447700900555";
const SENDS: usize = 30;

async fn start_processor(p: &Pipeline, graph: &FakeGraph) -> test_support::KillOnDrop {
    start_processor_with(p, graph, 1).await
}

async fn start_processor_with(
    p: &Pipeline,
    graph: &FakeGraph,
    graph_timeout_secs: u64,
) -> test_support::KillOnDrop {
    let graph_env = graph.env();
    let mut env: Vec<(&str, String)> = graph_env
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    env.extend([
        ("GRAPH_TIMEOUT_SECS", graph_timeout_secs.to_string()),
        ("SEND_RATE", "100".to_owned()),
        ("NATS_URL", test_support::nats_url()),
        ("NATS_NAMESPACE", p.namespace.clone()),
        ("MONGODB_URI", p.mongo.uri(&p.database)),
    ]);
    let (child, _) = test_support::start_binary(env!("CARGO_BIN_EXE_processor"), &env).await;
    child
}

/// What `POST /api/messages` stores and queues.
fn queued(n: usize) -> (QueuedSend, Message) {
    queued_to(CUSTOMER, &format!("local.kill{n:04}"), n)
}

/// Message `n` to `customer`, as `POST /api/messages` stores and queues it.
fn queued_to(customer: &str, id: &str, n: usize) -> (QueuedSend, Message) {
    let id = id.to_owned();
    let now = Utc::now();
    let text = format!("queued message {n}");
    let message = Message {
        id: id.clone(),
        message_id: id.clone(),
        client_message_id: Some(id.clone()),
        conversation_id: format!("conv_{customer}"),
        wa_id: customer.to_owned(),
        from: "15550783881".to_owned(),
        to: customer.to_owned(),
        timestamp: now,
        kind: "text".to_owned(),
        body: text.clone(),
        status: PENDING.into(),
        user_name: BUSINESS_USER_NAME.to_owned(),
        direction: Direction::Outbound,
        contact_name: None,
        phone_number_id: None,
        business_number: None,
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
        phone_number_id: None,
        request: serde_json::json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": customer, "type": "text", "text": {"body": text}, "biz_opaque_callback_data": id}),
        due: now,
        queued_at: Some(now),
        attempts: 0,
        wamid: None,
        last_error: None,
        held: false,
    };
    (send, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilling_the_processor_while_sends_are_queued_loses_and_doubles_none() {
    let p = spawn_stack(StackConfig::new().processors(0)).await;
    let graph = FakeGraph::start().await;
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect(&p.mongo.uri(&p.database), "test")
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
    let first = start_processor(&p, &graph).await;
    graph
        .wait_for("13 sends", Duration::from_secs(30), |r| r.len() >= 13)
        .await;
    first.kill();
    let accepted_before = graph.sends().iter().filter(|r| r.wamid.is_some()).count();
    assert_eq!(accepted_before, 12);

    // Two replicas share the queue from now on.
    let _second = start_processor(&p, &graph).await;
    let _third = start_processor(&p, &graph).await;
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
    let mut tracked = graph.sent_ids(true);
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

/// Queues `per_conversation` messages to each of `conversations` customers,
/// interleaved (message `n` goes to customer `n % conversations`); returns
/// the local ids in the order they were accepted.
async fn queue_interleaved(
    processor: &Processor,
    conversations: usize,
    per_conversation: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..conversations * per_conversation {
        let customer = format!("4477009{:05}", n % conversations);
        let id = format!("local.order{n:04}");
        let (send, message) = queued_to(&customer, &id, n);
        processor.send(Some(&send), &message).await.unwrap();
        ids.push(id);
    }
    ids
}

/// The local ids of the sends WhatsApp received, per customer, in the order
/// they arrived; `accepted_only`: only those WhatsApp accepted.
fn arrivals(
    graph: &FakeGraph,
    accepted_only: bool,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut per_customer = std::collections::BTreeMap::<String, Vec<String>>::new();
    for request in graph.sends() {
        if accepted_only && request.wamid.is_none() {
            continue;
        }
        per_customer
            .entry(request.body["to"].as_str().unwrap().to_owned())
            .or_default()
            .push(
                request.body["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
    }
    per_customer
}

async fn open_store(p: &Pipeline) -> (Arc<dyn Store>, Processor) {
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect(&p.mongo.uri(&p.database), "test")
            .await
            .unwrap(),
    );
    store.prepare().await.unwrap();
    (store.clone(), Processor::new(store))
}

/// Waits until every queued message is sent; past 120 s, fails naming the
/// sends still queued (due time, held, attempts, last error).
async fn wait_all_sent(p: &Pipeline, total: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sent = test_support::count(&p.db, "processed_messages", doc! {"status": "sent"}).await;
        let queued = test_support::count(&p.db, "sends", doc! {}).await;
        if sent == total as u64 && queued == 0 {
            return;
        }
        if std::time::Instant::now() > deadline {
            use futures::TryStreamExt;
            let left: Vec<mongodb::bson::Document> =
                p.db.collection::<mongodb::bson::Document>("sends")
                    .find(doc! {})
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
            let now = chrono::Utc::now().timestamp_millis();
            let described: Vec<String> = left
                .iter()
                .map(|d| {
                    format!(
                        "{} due {:?} ms from now, held {:?}, send {}",
                        d.get_str("_id").unwrap_or("?"),
                        d.get_i64("due").map(|due| due - now),
                        d.get_bool("held"),
                        d.get_str("send").unwrap_or("?"),
                    )
                })
                .collect();
            panic!(
                "{sent} of {total} sent after 120 s; still queued:\n{}",
                described.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Through 20 s of Graph API 500s, a `kill -9` of the sender holding a
/// conversation's first send (its request unanswered), and two replicas
/// taking over: every customer gets every message once, and WhatsApp
/// receives each conversation's messages in the order they were accepted;
/// a later message is not even tried before the earlier ones went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_reach_whatsapp_in_order_per_conversation_through_an_outage_a_kill_and_replicas() {
    const CONVERSATIONS: usize = 10;
    const PER_CONVERSATION: usize = 20;
    // The standalone server: on the replica-set stand-in (which refuses a
    // write while another replica's transaction is open) not every send
    // went out within 120 s.
    let p = spawn_stack(StackConfig::new().mongo(Mongo::Default).processors(0)).await;
    let graph = FakeGraph::start().await;
    let (_store, processor) = open_store(&p).await;
    let ids = queue_interleaved(&processor, CONVERSATIONS, PER_CONVERSATION).await;

    // The first request is never answered: its sender is killed holding it.
    graph.script([Reply::NoAnswer]);
    graph.outage(Duration::from_secs(20));
    let first = start_processor_with(&p, &graph, 5).await;
    graph
        .wait_for("sends during the outage", Duration::from_secs(30), |r| {
            r.len() >= 15
        })
        .await;
    first.kill();
    let _second = start_processor_with(&p, &graph, 5).await;
    let _third = start_processor_with(&p, &graph, 5).await;
    wait_all_sent(&p, ids.len()).await;

    let attempts = arrivals(&graph, false);
    let accepted = arrivals(&graph, true);
    assert_eq!(accepted.len(), CONVERSATIONS);
    for (customer, accepted) in &accepted {
        let expected: Vec<&String> = ids
            .iter()
            .enumerate()
            .filter(|(n, _)| format!("4477009{:05}", n % CONVERSATIONS) == *customer)
            .map(|(_, id)| id)
            .collect();
        let accepted: Vec<&String> = accepted.iter().collect();
        assert_eq!(
            accepted, expected,
            "accepted once each, in order, for {customer}"
        );
        // Retries repeat a message; none is tried before an earlier one.
        let tried = &attempts[customer];
        assert!(
            tried.windows(2).all(|w| w[0] <= w[1]),
            "{customer} got a message before an earlier one: {tried:?}"
        );
    }
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}

/// SIGTERM while 40 sends wait on a Graph API that answers in 3 s: the
/// stopping processor starts no new send and waits for the answers in
/// flight, so after a restart none goes out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_sends_wait_on_a_slow_graph_api_sends_none_twice() {
    let p = spawn_stack(StackConfig::new().processors(0)).await;
    let graph = FakeGraph::start().await;
    let (_store, processor) = open_store(&p).await;
    let ids = queue_interleaved(&processor, 20, 2).await;
    graph.delay_sends(Duration::from_secs(3));
    let first = start_processor_with(&p, &graph, 10).await;
    graph
        .wait_for("sends in flight", Duration::from_secs(30), |r| r.len() >= 8)
        .await;
    let stopped = test_support::time_to_exit_after_sigterm(first).await;
    let in_flight = graph.sends().len();
    assert!(
        stopped.is_some(),
        "the processor did not exit after SIGTERM"
    );
    assert!(
        in_flight < ids.len(),
        "all were sent before the stop: {in_flight}"
    );
    graph.delay_sends(Duration::ZERO);
    let _again = start_processor_with(&p, &graph, 10).await;
    wait_all_sent(&p, ids.len()).await;
    let sent = graph.sent_ids(false);
    let distinct: std::collections::BTreeSet<&String> = sent.iter().collect();
    assert_eq!(sent.len(), ids.len(), "sent twice: {sent:?}");
    assert_eq!(distinct.len(), ids.len());
}

/// A number no token serves (the fake would serve it with [`TOKEN`] only
/// if the processor had `WHATSAPP_ACCESS_TOKEN`, which it has not here).
const UNSERVED_NUMBER: &str = "106540352242924";

/// Message `id` to `customer` through business number `number` (`None`:
/// queued before numbers existed), as `POST /api/messages` queues it.
fn queued_through(customer: &str, id: &str, number: Option<&str>) -> (QueuedSend, Message) {
    let (mut send, mut message) = queued_to(customer, id, 0);
    // The home number keeps `conv_<wa_id>`; the others get their suffix.
    if let Some(number) = number.filter(|&n| n != PHONE_NUMBER_ID) {
        message.conversation_id = format!("conv_{customer}_{number}");
        send.conversation_id = message.conversation_id.clone();
    }
    message.phone_number_id = number.map(str::to_owned);
    send.phone_number_id = number.map(str::to_owned);
    (send, message)
}

/// Each queued send goes out through its conversation's own number, with
/// the token that serves it (`WHATSAPP_NUMBER_TOKENS`, no global token
/// here); one queued before numbers existed goes through the default
/// number; one for a number no token serves fails at once, saying why,
/// and nothing is asked of WhatsApp for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_send_goes_out_through_its_own_number_with_that_number_s_token() {
    let p = spawn_stack(StackConfig::new().processors(0)).await;
    let graph = FakeGraph::start()
        .await
        .with_number_token(SECOND_PHONE_NUMBER_ID, SECOND_NUMBER_TOKEN);
    let (store, processor) = open_store(&p).await;
    let sends = [
        ("local.home", Some(PHONE_NUMBER_ID)),
        ("local.legacy", None),
        ("local.second", Some(SECOND_PHONE_NUMBER_ID)),
        ("local.unserved", Some(UNSERVED_NUMBER)),
    ];
    for (id, number) in sends {
        let (send, message) = queued_through(CUSTOMER, id, number);
        processor.send(Some(&send), &message).await.unwrap();
    }

    let graph_env = graph.env();
    let mut env: Vec<(&str, String)> = graph_env
        .iter()
        .filter(|(name, _)| name != "WHATSAPP_ACCESS_TOKEN")
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    env.extend([
        (
            "WHATSAPP_NUMBER_TOKENS",
            format!("{PHONE_NUMBER_ID}={TOKEN}, {SECOND_PHONE_NUMBER_ID}={SECOND_NUMBER_TOKEN}"),
        ),
        ("GRAPH_TIMEOUT_SECS", "5".to_owned()),
        ("NATS_URL", test_support::nats_url()),
        ("NATS_NAMESPACE", p.namespace.clone()),
        ("MONGODB_URI", p.mongo.uri(&p.database)),
    ]);
    let (_processor, _) = test_support::start_binary(env!("CARGO_BIN_EXE_processor"), &env).await;
    test_support::wait_until(
        "every send to be finished",
        Duration::from_secs(60),
        || async { test_support::count(&p.db, "sends", doc! {}).await == 0 },
    )
    .await;

    let bearer = |token: &str| Some(format!("Bearer {token}"));
    let mut arrived: Vec<(String, Option<String>, Option<String>)> = graph
        .sends()
        .iter()
        .map(|r| {
            (
                r.body["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                r.phone_number_id().map(str::to_owned),
                r.authorization.clone(),
            )
        })
        .collect();
    arrived.sort();
    assert_eq!(
        arrived,
        [
            ("local.home", PHONE_NUMBER_ID, TOKEN),
            ("local.legacy", PHONE_NUMBER_ID, TOKEN),
            ("local.second", SECOND_PHONE_NUMBER_ID, SECOND_NUMBER_TOKEN),
        ]
        .map(|(id, number, token)| (id.to_owned(), Some(number.to_owned()), bearer(token))),
        "each through its number with its token, once; nothing for the unserved number"
    );
    assert!(graph.sends().iter().all(|r| r.wamid.is_some()));
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
    for (id, _) in &sends[..3] {
        let stored = store.message(id).await.unwrap().unwrap();
        assert_eq!(stored.status, "sent", "{id}");
    }
    let failed = store.message("local.unserved").await.unwrap().unwrap();
    assert_eq!(failed.status, "failed");
    let errors = failed.errors.unwrap().to_string();
    assert!(
        errors.contains(UNSERVED_NUMBER) && errors.contains("WHATSAPP_NUMBER_TOKENS"),
        "{errors}"
    );
    assert!(
        !errors.contains(TOKEN) && !errors.contains(SECOND_NUMBER_TOKEN),
        "{errors}"
    );
}
