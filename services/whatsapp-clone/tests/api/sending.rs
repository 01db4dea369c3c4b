//! Sending on the embedded store: one message per idempotency key under
//! concurrency, nothing sent twice across a SIGTERM, and a status webhook
//! naming our message (`biz_opaque_callback_data`) stands for an answer
//! its sender never stored.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::graph::{FakeGraph, PHONE_NUMBER_ID, Reply, TOKEN};

use crate::helpers::{Server, embedded_config, get_json, now_secs, spawn, temp_dir, webhook};

const WAIT: Duration = Duration::from_secs(30);

async fn post(http: &reqwest::Client, url: &str, body: String) {
    let response = http
        .post(format!("{url}/webhook"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A customer's message just now (it opens the 24-hour window); waits until stored.
async fn customer_wrote(http: &reqwest::Client, url: &str, customer: &str) {
    let inbound = webhook(
        json!({"metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"wa_id": customer, "profile": {"name": "Ada"}}],
        "messages": [{"from": customer, "id": format!("wamid.in.{customer}"), "timestamp": now_secs(), "type": "text", "text": {"body": "hi"}}]}),
    );
    post(http, url, inbound).await;
    let messages = format!("{url}/api/conversations/conv_{customer}/messages");
    test_support::wait_until("the customer's message", WAIT, || async {
        get_json(&messages)
            .await
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
}

fn template(customer: &str) -> Value {
    json!({"conversationId": format!("conv_{customer}"),
        "template": {"name": "hello_world", "language": {"code": "en_US"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_store_one_message_on_sqlite() {
    let graph = FakeGraph::start().await;
    let mut config = embedded_config(&temp_dir());
    config.graph.whatsapp_access_token = Some(TOKEN.to_owned());
    config.graph.whatsapp_phone_number_id = Some(PHONE_NUMBER_ID.to_owned());
    config.graph.graph_api_url = graph.url();
    let app = spawn(config).await;
    let http = reqwest::Client::new();
    let customer = "447700900301";
    customer_wrote(&http, &app.url, customer).await;
    let post_all = |key: &'static str, bodies: Vec<Value>| {
        let requests = bodies.into_iter().map(|body| {
            let request = http
                .post(format!("{}/api/messages", app.url))
                .header("Idempotency-Key", key)
                .json(&body);
            async move {
                let response = request.send().await.unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap(),
                )
            }
        });
        futures::future::join_all(requests)
    };
    let count = |answers: &[(u16, Value)], status: u16| {
        answers.iter().filter(|(s, _)| *s == status).count()
    };
    let conversation = format!("conv_{customer}");

    let same = json!({"conversationId": conversation, "message": "Your table is ready"});
    let answers = post_all("table-1", vec![same; 20]).await;
    assert_eq!(
        (count(&answers, 201), count(&answers, 200)),
        (1, 19),
        "{answers:?}"
    );
    let ids: BTreeSet<String> = answers.iter().map(|(_, m)| m["_id"].to_string()).collect();
    assert_eq!(ids.len(), 1);

    let different: Vec<Value> = (0..20)
        .map(|n| json!({"conversationId": conversation, "message": format!("table {n}")}))
        .collect();
    let answers = post_all("table-2", different).await;
    assert_eq!(
        (count(&answers, 201), count(&answers, 422)),
        (1, 19),
        "{answers:?}"
    );
    let stored = answers
        .iter()
        .find(|(s, _)| *s == 201)
        .map(|(_, m)| m["body"].clone())
        .unwrap();

    graph
        .wait_for("both sends", WAIT, |r| {
            r.iter().filter(|r| r.wamid.is_some()).count() >= 2
        })
        .await;
    let messages = get_json(&format!(
        "{}/api/conversations/{conversation}/messages",
        app.url
    ))
    .await;
    assert_eq!(messages.as_array().unwrap().len(), 3, "{messages}");
    // The second one's pending send is in the queue once: one request each.
    test_support::wait_until("both sent", WAIT, || async {
        let messages = get_json(&format!(
            "{}/api/conversations/{conversation}/messages",
            app.url
        ))
        .await;
        messages
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["status"] == "sent")
            .count()
            == 2
    })
    .await;
    let sends = graph.sends();
    assert_eq!(sends.len(), 2, "{sends:#?}");
    assert!(
        sends.iter().any(|r| r.body["text"]["body"] == stored),
        "{sends:#?}"
    );
}

/// SIGTERM while 40 templates wait on a Graph API that answers in 3 s: no
/// new send starts, those in flight are answered and stored, and after a
/// restart on the same data none goes out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_sends_wait_on_a_slow_graph_api_sends_none_twice() {
    let graph = FakeGraph::start().await;
    let dir = temp_dir();
    let env: Vec<(String, String)> = graph
        .env()
        .into_iter()
        .chain([
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            ("GRAPH_TIMEOUT_SECS".to_owned(), "10".to_owned()),
            ("SEND_RATE".to_owned(), "100".to_owned()),
        ])
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let port = test_support::free_port();
    graph.delay_sends(Duration::from_secs(3));
    let server = Server::start_with(&dir, port, &env, None).await;
    let http = reqwest::Client::new();
    let customers: Vec<String> = (0..20).map(|n| format!("4477009004{n:02}")).collect();
    for round in 0..2 {
        for customer in &customers {
            let response = http
                .post(format!("{}/api/messages", server.url))
                .header("Idempotency-Key", format!("{customer}-{round}"))
                .json(&template(customer))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
    }
    graph
        .wait_for("sends in flight", WAIT, |r| r.len() >= 8)
        .await;
    let exited = server.terminate().await;
    assert!(exited.is_some(), "did not exit after SIGTERM");
    let before_restart = graph.sends().len();
    assert!(before_restart < 40, "all went out before the stop");
    graph.delay_sends(Duration::ZERO);
    let server = Server::start_with(&dir, port, &env, None).await;
    graph
        .wait_for("every template", Duration::from_secs(60), |r| r.len() >= 40)
        .await;
    test_support::wait_until("every template sent", WAIT, || async {
        get_json(&format!("{}/api/stats", server.url)).await["statusBreakdown"]["sent"] == 40
    })
    .await;
    let sent = graph.sent_ids(false);
    let distinct: BTreeSet<&String> = sent.iter().collect();
    assert_eq!(
        (sent.len(), distinct.len()),
        (40, 40),
        "sent twice: {sent:?}"
    );
}

/// The sender's request is never answered (as if it was killed after Meta
/// accepted the message), and Meta's status webhook for the message's
/// wamid carries our id in `biz_opaque_callback_data`: the message takes
/// that wamid and status, and its send finishes without going out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_naming_our_message_stands_for_the_answer_its_sender_never_stored() {
    let graph = FakeGraph::start().await;
    let mut config = embedded_config(&temp_dir());
    config.graph.whatsapp_access_token = Some(TOKEN.to_owned());
    config.graph.whatsapp_phone_number_id = Some(PHONE_NUMBER_ID.to_owned());
    config.graph.graph_api_url = graph.url();
    config.graph.graph_timeout_secs = 2;
    let app = spawn(config).await;
    let http = reqwest::Client::new();
    let customer = "447700900302";
    customer_wrote(&http, &app.url, customer).await;
    graph.script([Reply::NoAnswer]);
    let conversation = format!("conv_{customer}");
    let send = |text: &str| {
        http.post(format!("{}/api/messages", app.url))
            .json(&json!({"conversationId": conversation, "message": text}))
            .send()
    };
    let first: Value = send("first").await.unwrap().json().await.unwrap();
    let local = first["_id"].as_str().unwrap().to_owned();
    graph
        .wait_for("the unanswered send", WAIT, |r| !r.is_empty())
        .await;

    let wamid = "wamid.HBgMNDQ3NzAwOTAwMzAyFQIAERgSQUJDREVGMDEyMzQ1Njc4OQA=";
    let delivered = webhook(
        json!({"metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "statuses": [{"id": wamid, "status": "delivered", "recipient_id": customer, "timestamp": now_secs(),
            "biz_opaque_callback_data": local}]}),
    );
    post(&http, &app.url, delivered).await;
    // A second message is queued behind the first: once it is sent, the
    // first one's send has finished.
    send("second").await.unwrap();
    let messages_url = format!("{}/api/conversations/{conversation}/messages", app.url);
    test_support::wait_until("the second message sent", WAIT, || async {
        get_json(&messages_url)
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["body"] == "second" && m["status"] == "sent")
    })
    .await;
    let messages = get_json(&messages_url).await;
    let first = messages
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["_id"] == local.as_str())
        .unwrap();
    assert_eq!(first["messageId"], wamid, "{first}");
    assert_eq!(first["status"], "delivered", "{first}");
    let sends = graph.sends();
    let bodies: Vec<&Value> = sends.iter().map(|r| &r.body["text"]["body"]).collect();
    assert_eq!(
        bodies,
        [&json!("first"), &json!("second")],
        "the first went out once"
    );
}

/// A long queue in one conversation goes out in order without pausing for
/// a lease between the rounds that share it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_in_one_conversation_goes_out_in_order_without_pauses() {
    let graph = FakeGraph::start().await;
    let mut config = embedded_config(&temp_dir());
    config.graph.whatsapp_access_token = Some(TOKEN.to_owned());
    config.graph.whatsapp_phone_number_id = Some(PHONE_NUMBER_ID.to_owned());
    config.graph.graph_api_url = graph.url();
    config.graph.graph_timeout_secs = 10;
    config.graph.send_rate = 100;
    let app = spawn(config).await;
    let http = reqwest::Client::new();
    let customer = "447700900303";
    customer_wrote(&http, &app.url, customer).await;
    // Queued while WhatsApp is down, so they are all waiting at once.
    graph.outage(Duration::from_secs(1));
    for n in 0..60 {
        let response = http
            .post(format!("{}/api/messages", app.url))
            .json(&json!({"conversationId": format!("conv_{customer}"), "message": format!("line {n:02}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    graph
        .wait_for("60 accepted sends", Duration::from_secs(60), |r| {
            r.iter().filter(|r| r.wamid.is_some()).count() >= 60
        })
        .await;
    let accepted: Vec<String> = graph
        .sends()
        .iter()
        .filter(|r| r.wamid.is_some())
        .map(|r| r.body["text"]["body"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..60).map(|n| format!("line {n:02}")).collect();
    assert_eq!(accepted, expected);
    let times = graph.send_times();
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_secs(8),
        "a pause of {longest:?} between two sends"
    );
}
