//! Sending through WhatsApp, against a fake Graph API that checks every
//! request the way Meta documents it: the send, its retries and failures,
//! the wamid and later statuses, read receipts, media, idempotency and the
//! 24-hour window.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::SocketClient;
use test_support::graph::{FakeGraph, PHONE_NUMBER_ID, Recorded, Reply, TOKEN};

use test_support::Mongo;

use crate::helpers::{RAVI, Stack, graph_args, spawn_stack};
use test_support::stack::StackConfig;

const WAIT: Duration = Duration::from_secs(30);

async fn stack_with(graph: &FakeGraph, replicas: usize) -> Stack {
    stack_in(Mongo::ReplicaSet, graph, replicas).await
}

async fn stack_in(mongo: Mongo, graph: &FakeGraph, replicas: usize) -> Stack {
    let args = graph_args(graph);
    let media = std::env::temp_dir().join(test_support::unique_name("media"));
    let mut api_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let media_arg = format!("--media-cache-dir={}", media.display());
    api_args.push(&media_arg);
    // The fake's media URLs are on 127.0.0.1, over http.
    api_args.extend([
        "--media-allowed-hosts=127.0.0.1",
        "--media-allow-private-addresses",
    ]);
    let stack = spawn_stack(
        StackConfig::new()
            .mongo(mongo)
            .api_replicas(replicas)
            .api_args(api_args)
            .processor_args(args),
    )
    .await;
    // The stack's own first message goes out before a test scripts replies.
    let marker = crate::helpers::MARKER
        .trim_start_matches("conv_")
        .to_owned();
    graph
        .wait_for("the stack's first message", WAIT, |r| {
            r.iter()
                .any(|r| r.body["to"] == marker.as_str() && r.wamid.is_some())
        })
        .await;
    stack
}

/// A customer's message sent just now: it opens the 24-hour window.
fn inbound_now(customer: &str, id: &str, kind: Value) -> Vec<u8> {
    let mut message = json!({"from": customer, "id": id,
        "timestamp": chrono::Utc::now().timestamp().to_string()});
    if let Value::Object(fields) = kind {
        message.as_object_mut().unwrap().extend(fields);
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"wa_id": customer, "profile": {"name": "Customer"}}],
        "messages": [message]
    }}]}]})
    .to_string()
    .into_bytes()
}

fn status_webhook(customer: &str, wamid: &str, status: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "statuses": [{"id": wamid, "status": status, "recipient_id": customer,
            "timestamp": chrono::Utc::now().timestamp().to_string()}]
    }}]}]})
    .to_string()
    .into_bytes()
}

/// A customer who wrote just now.
async fn customer_wrote(stack: &Stack, customer: &str) -> String {
    let id = format!("wamid.in.{customer}.{}", uuid::Uuid::now_v7().simple());
    stack
        .post_webhook(&inbound_now(
            customer,
            &id,
            json!({"type": "text", "text": {"body": "hello?"}}),
        ))
        .await;
    stack.drained().await;
    id
}

/// The next `statusUpdate` the client receives.
async fn next_status(client: &mut SocketClient) -> Value {
    loop {
        let (name, data) = client.next_event(WAIT).await;
        if name == "statusUpdate" {
            return data;
        }
    }
}

fn sends_to(graph: &FakeGraph, customer: &str) -> Vec<Recorded> {
    graph
        .sends()
        .into_iter()
        .filter(|r| r.body["to"] == customer)
        .collect()
}

/// The conversation's message with this `clientMessageId`, once `done`
/// holds for it.
async fn message_when(
    stack: &Stack,
    conversation: &str,
    client_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, messages) = stack
            .get(0, &format!("/api/conversations/{conversation}/messages"))
            .await;
        let message = messages
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["clientMessageId"] == client_id)
            .cloned();
        match message {
            Some(m) if done(&m) => return m,
            other => assert!(
                std::time::Instant::now() < deadline,
                "the message did not change as expected: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_goes_to_whatsapp_once_takes_its_wamid_and_later_statuses_reach_clients() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 2).await;
    let customer = "447700900101";
    let conversation = format!("conv_{customer}");
    customer_wrote(&stack, customer).await;
    let mut client = SocketClient::connect(&stack.api[1], "websocket").await;

    let (status, sent) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": conversation, "message": "Your order has shipped"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["status"], "pending");
    let local = sent["messageId"].as_str().unwrap().to_owned();
    let client_id = sent["clientMessageId"].as_str().unwrap().to_owned();
    assert!(local.starts_with("local."), "{local}");

    let done = message_when(&stack, &conversation, &client_id, |m| m["status"] == "sent").await;
    let requests = sends_to(&graph, customer);
    assert_eq!(requests.len(), 1, "exactly one request: {requests:#?}");
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        (
            "POST",
            format!("/v23.0/{PHONE_NUMBER_ID}/messages").as_str()
        )
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        request.body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": customer,
               "type": "text", "text": {"body": "Your order has shipped"},
               "biz_opaque_callback_data": local})
    );
    let wamid = request.wamid.clone().unwrap();
    assert_eq!(done["messageId"], wamid, "the message takes WhatsApp's id");

    let update = next_status(&mut client).await;
    assert_eq!(
        (
            &update["messageId"],
            &update["status"],
            &update["previousMessageId"]
        ),
        (&json!(wamid), &json!("sent"), &json!(local))
    );

    // Meta's later statuses for that wamid apply to it.
    stack
        .post_webhook(&status_webhook(customer, &wamid, "delivered"))
        .await;
    stack
        .post_webhook(&status_webhook(customer, &wamid, "read"))
        .await;
    let read = message_when(&stack, &conversation, &client_id, |m| m["status"] == "read").await;
    assert_eq!(read["messageId"], wamid);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let update = next_status(&mut client).await;
        assert_eq!(update["messageId"], wamid);
        seen.push(update["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["delivered", "read"]);
    let (_, list) = stack.get(0, "/api/conversations").await;
    let summary = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversationId"] == conversation)
        .unwrap();
    assert_eq!(
        (&summary["lastMessageId"], &summary["lastMessageStatus"]),
        (&json!(wamid), &json!("read"))
    );
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_a_graph_500_are_retried_and_the_message_ends_sent() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    let customer = "447700900102";
    customer_wrote(&stack, customer).await;
    // Meta's throttling (130429, HTTP 429 and 400) and a server error.
    graph.script([
        Reply::RateLimit130429,
        Reply::RateLimit130429Status400,
        Reply::ServerError,
    ]);
    let (status, sent) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": format!("conv_{customer}"), "message": "retry me"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let client_id = sent["clientMessageId"].as_str().unwrap();
    let done = message_when(&stack, &format!("conv_{customer}"), client_id, |m| {
        m["status"] == "sent"
    })
    .await;
    let requests = sends_to(&graph, customer);
    let answers: Vec<u16> = requests.iter().map(|r| r.answer_status).collect();
    assert_eq!(answers, [429, 400, 500, 200], "retried each time");
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    assert_eq!(done["messageId"], json!(requests[3].wamid));
    assert!(done.get("errors").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_the_message_with_whatsapps_error() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    let customer = "447700900103";
    customer_wrote(&stack, customer).await;
    let mut client = SocketClient::connect(&stack.api[0], "websocket").await;
    graph.script([Reply::ReEngagement131047]);
    let (_, sent) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": format!("conv_{customer}"), "message": "too late"}),
        )
        .await;
    let client_id = sent["clientMessageId"].as_str().unwrap();
    let failed = message_when(&stack, &format!("conv_{customer}"), client_id, |m| {
        m["status"] == "failed"
    })
    .await;
    assert_eq!(failed["errors"][0]["code"], 131047, "{failed}");
    assert!(
        failed["errors"][0]["title"]
            .as_str()
            .unwrap()
            .contains("Re-engagement"),
        "{failed}"
    );
    assert_eq!(sends_to(&graph, customer).len(), 1, "not retried");
    let update = loop {
        let update = next_status(&mut client).await;
        if update["status"] == "failed" {
            break update;
        }
    };
    assert_eq!(update["errors"][0]["code"], 131047);
    assert_eq!(update["clientMessageId"], client_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_or_an_undeliverable_number_fails_the_message() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    let customer = "447700900108";
    customer_wrote(&stack, customer).await;
    graph.script([Reply::ExpiredToken190, Reply::Undeliverable131026]);
    let mut failed = Vec::new();
    for text in ["first", "second"] {
        let (_, sent) = stack
            .post(
                0,
                "/api/messages",
                json!({"conversationId": format!("conv_{customer}"), "message": text}),
            )
            .await;
        let client_id = sent["clientMessageId"].as_str().unwrap().to_owned();
        let message = message_when(&stack, &format!("conv_{customer}"), &client_id, |m| {
            m["status"] == "failed"
        })
        .await;
        failed.push(message["errors"][0]["code"].as_i64().unwrap());
    }
    assert_eq!(failed, [190, 131026]);
    assert_eq!(sends_to(&graph, customer).len(), 2, "neither retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_conversation_marks_its_newest_message_read_at_whatsapp() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    let customer = "447700900104";
    customer_wrote(&stack, customer).await;
    let newest = customer_wrote(&stack, customer).await;
    let (status, read) = stack
        .post(
            0,
            &format!("/api/conversations/conv_{customer}/read"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(
        (&read["updated"], &read["readReceipt"]),
        (&json!(2), &json!(true))
    );
    assert_eq!(graph.reads(), [newest]);
    // Nothing new to read: WhatsApp is not told again.
    let (_, again) = stack
        .post(
            0,
            &format!("/api/conversations/conv_{customer}/read"),
            json!({}),
        )
        .await;
    assert_eq!(again["readReceipt"], false);
    assert_eq!(graph.reads().len(), 1);
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_media_are_served_with_their_type_and_downloaded_once() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    let bytes: Vec<u8> = (0..50_000u32).map(|n| (n % 251) as u8).collect();
    graph.add_media("1049270186254541", &bytes, "image/jpeg");
    let customer = "447700900105";
    stack
        .post_webhook(&inbound_now(
            customer,
            "wamid.photo.1",
            json!({"type": "image", "image": {"id": "1049270186254541", "mime_type": "image/jpeg",
                    "sha256": "abc", "caption": "the damage"}}),
        ))
        .await;
    stack.drained().await;
    let (_, messages) = stack
        .get(0, &format!("/api/conversations/conv_{customer}/messages"))
        .await;
    assert_eq!(messages[0]["mediaUrl"], "/api/media/1049270186254541");

    for _ in 0..2 {
        let response = stack
            .http
            .get(format!("{}/api/media/1049270186254541", stack.api[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/jpeg");
        assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
    assert_eq!(
        graph.downloads("1049270186254541"),
        1,
        "the second came from the cache"
    );
    let (status, error) = stack.get(0, "/api/media/404404404").await;
    assert_eq!(status, 404, "{error}");
    let (status, error) = stack.get(0, "/api/media/..%2Fetc").await;
    assert_eq!(status, 400, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_file_is_sent_by_its_id() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    let customer = "447700900106";
    customer_wrote(&stack, customer).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"%PDF-1.4 invoice".to_vec())
            .file_name("invoice.pdf")
            .mime_str("application/pdf")
            .unwrap(),
    );
    let response = stack
        .http
        .post(format!("{}/api/media", stack.api[0]))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uploads = graph.uploads();
    assert_eq!(
        (
            uploads[0].0.as_str(),
            uploads[0].1.as_str(),
            uploads[0].3.as_slice()
        ),
        (
            id.as_str(),
            "application/pdf",
            b"%PDF-1.4 invoice".as_slice()
        )
    );
    let (status, sent) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": format!("conv_{customer}"),
                   "document": {"id": id, "caption": "Your invoice", "filename": "invoice.pdf"}}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    graph
        .wait_for("the document", WAIT, |r| {
            r.iter()
                .any(|r| r.body["to"] == customer && r.wamid.is_some())
        })
        .await;
    let request = sends_to(&graph, customer).remove(0);
    assert_eq!(
        request.body["document"],
        json!({"id": id, "caption": "Your invoice", "filename": "invoice.pdf"})
    );
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_first_message_and_sends_once() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 2).await;
    let customer = "447700900107";
    customer_wrote(&stack, customer).await;
    let post = |replica: usize, body: Value| {
        let http = stack.http.clone();
        let url = format!("{}/api/messages", stack.api[replica]);
        async move {
            let response = http
                .post(url)
                .header("Idempotency-Key", "order-4711-confirmation")
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let body =
        json!({"conversationId": format!("conv_{customer}"), "message": "Order 4711 confirmed"});
    let (first_status, first) = post(0, body.clone()).await;
    assert_eq!(first_status, 201, "{first}");
    let (again_status, again) = post(1, body.clone()).await;
    assert_eq!(again_status, 200, "{again}");
    assert_eq!(again["_id"], first["_id"]);
    assert_eq!(again["clientMessageId"], "order-4711-confirmation");
    let (other_status, other) = post(
        0,
        json!({"conversationId": format!("conv_{customer}"), "message": "something else"}),
    )
    .await;
    assert_eq!(other_status, 422, "{other}");

    message_when(
        &stack,
        &format!("conv_{customer}"),
        "order-4711-confirmation",
        |m| m["status"] == "sent",
    )
    .await;
    // Retried after it was sent: still the one message, not sent again.
    let (_, late) = post(0, body).await;
    assert_eq!(late["status"], "sent");
    assert_eq!(sends_to(&graph, customer).len(), 1);
    let (_, messages) = stack
        .get(0, &format!("/api/conversations/conv_{customer}/messages"))
        .await;
    assert_eq!(messages.as_array().unwrap().len(), 2, "{messages}");
}

/// 20 POSTs at once with one key, spread over two replicas: with the same
/// body, one 201, 19 × 200 with that message, one Graph request; with
/// different bodies, one 201 and 19 × 422, and WhatsApp gets the text that
/// was stored. On a standalone server (no transactions) and a replica set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_store_and_send_one_message() {
    one_message_per_key_under_concurrency(Mongo::Default).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_store_and_send_one_message_on_a_replica_set()
{
    one_message_per_key_under_concurrency(Mongo::ReplicaSet).await;
}

async fn one_message_per_key_under_concurrency(mongo: Mongo) {
    let graph = FakeGraph::start().await;
    let stack = stack_in(mongo, &graph, 2).await;
    let customer = "447700900108";
    customer_wrote(&stack, customer).await;
    let conversation = format!("conv_{customer}");
    // 503s retried: a request that got one may have been stored after all,
    // and its retry is then a repeat (200), so "one 201" holds only
    // without them.
    let retried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let post_all = |key: &'static str, bodies: Vec<Value>| {
        let requests = bodies.into_iter().enumerate().map(|(n, body)| {
            let retried = retried.clone();
            let http = stack.http.clone();
            let url = format!("{}/api/messages", stack.api[n % 2]);
            async move {
                // A 503 means "not stored, retry" (the stand-in's replica
                // set refuses writes while another transaction holds its
                // lock): retried as a client would, keeping the key.
                for _ in 0..100 {
                    let response = http
                        .post(&url)
                        .header("Idempotency-Key", key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let answer = response.json::<Value>().await.unwrap();
                    if status != 503 {
                        return (status, answer);
                    }
                    retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("503 a hundred times");
            }
        });
        futures::future::join_all(requests)
    };
    let statuses = |answers: &[(u16, Value)], status: u16| {
        answers.iter().filter(|(s, _)| *s == status).count()
    };

    let same = json!({"conversationId": conversation, "message": "Your parcel left Pune"});
    let answers = post_all("parcel-1", vec![same; 20]).await;
    let created = statuses(&answers, 201);
    assert_eq!(created + statuses(&answers, 200), 20, "{answers:?}");
    let no_503 = retried.load(std::sync::atomic::Ordering::Relaxed) == 0;
    assert!(created == 1 || (created == 0 && !no_503), "{answers:?}");
    let ids: std::collections::BTreeSet<String> =
        answers.iter().map(|(_, m)| m["_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "one message: {ids:?}");

    let different: Vec<Value> = (0..20)
        .map(|n| json!({"conversationId": conversation, "message": format!("variant {n}")}))
        .collect();
    let answers = post_all("parcel-2", different).await;
    let no_503 = retried.load(std::sync::atomic::Ordering::Relaxed) == 0;
    let created = statuses(&answers, 201);
    assert!(created == 1 || (created == 0 && !no_503), "{answers:?}");
    assert_eq!(created + statuses(&answers, 200), 1, "{answers:?}");
    assert_eq!(statuses(&answers, 422), 19, "{answers:?}");
    let stored = answers
        .iter()
        .find(|(s, _)| *s == 201 || *s == 200)
        .map(|(_, m)| m["body"].clone())
        .unwrap();

    message_when(&stack, &conversation, "parcel-2", |m| m["status"] == "sent").await;
    message_when(&stack, &conversation, "parcel-1", |m| m["status"] == "sent").await;
    let sends = sends_to(&graph, customer);
    assert_eq!(sends.len(), 2, "one Graph request per key: {sends:#?}");
    assert!(
        sends.iter().any(|r| r.body["text"]["body"] == stored),
        "WhatsApp got another text than the one stored ({stored}): {sends:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_window_only_templates_go_and_first_messages_need_one() {
    let graph = FakeGraph::start().await;
    let stack = stack_with(&graph, 1).await;
    // The samples' customers last wrote long ago, to the default number
    // (the stack's marker conversation made it the home number).
    stack
        .load_samples_from(test_support::graph::PHONE_NUMBER_ID)
        .await;
    let (_, list) = stack.get(0, "/api/conversations").await;
    let ravi = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversationId"] == RAVI)
        .unwrap()
        .clone();
    let closes: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(ravi["windowExpiresAt"].clone()).unwrap();
    assert!(closes < chrono::Utc::now(), "{ravi}");
    let (status, error) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": RAVI, "message": "hi"}),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    assert!(error["error"].as_str().unwrap().contains("24-hour"));
    let template = json!({"name": "order_update", "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "4711"}]}]});
    let (status, sent) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": RAVI, "template": template}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");

    // A customer never written to: a free-form message is refused, a
    // template opens the conversation.
    let (status, error) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": "conv_447700900999", "message": "hi"}),
        )
        .await;
    assert_eq!(status, 404, "{error}");
    let (status, error) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": "conv_12", "template": template}),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    let (status, opened) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": "conv_447700900999", "template": template}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    graph
        .wait_for("both templates", WAIT, |r| {
            ["919937320320", "447700900999"]
                .iter()
                .all(|to| r.iter().any(|r| r.body["to"] == *to && r.wamid.is_some()))
        })
        .await;
    let request = sends_to(&graph, "447700900999").remove(0);
    assert_eq!(request.body["type"], "template");
    assert_eq!(request.body["template"], template);
    let (_, list) = stack.get(0, "/api/conversations").await;
    let new = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversationId"] == "conv_447700900999")
        .unwrap()
        .clone();
    assert_eq!(new["userName"], "+447700900999", "{new}");
    assert!(new["windowExpiresAt"].is_null(), "{new}");
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
}
