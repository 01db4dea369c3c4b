//! Several business numbers in one deployment, over REST: the same
//! customer writing to two numbers is two conversations, each listed,
//! counted and answered through its own number; a token scoped to a
//! number sees and sends through nothing else.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::graph::{
    FakeGraph, PHONE_NUMBER_ID, SECOND_NUMBER_TOKEN, SECOND_PHONE_NUMBER_ID as SECOND, TOKEN,
    VERSION,
};
use test_support::stack::StackConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Stack, graph_args, spawn_api, spawn_stack};

const WAIT: Duration = Duration::from_secs(30);
/// A number webhooks come for that no access token serves.
const THIRD: &str = "106540352242999";
const DISPLAY: &str = "15550783881";
const SECOND_DISPLAY: &str = "15550783882";
const CUSTOMER: &str = "447700900111";

/// The fake Graph API's settings, with tokens of their own for the default
/// number and [`SECOND`] and none for anything else (no
/// `WHATSAPP_ACCESS_TOKEN`).
fn per_number_graph_args(graph: &FakeGraph) -> Vec<String> {
    graph_args(graph)
        .into_iter()
        .filter(|arg| !arg.starts_with("--whatsapp-access-token="))
        .chain([format!(
            "--whatsapp-number-tokens={PHONE_NUMBER_ID}={TOKEN},{SECOND}={TOKEN}"
        )])
        .collect()
}

fn config(graph: &FakeGraph, replicas: usize) -> StackConfig {
    let args = per_number_graph_args(graph);
    StackConfig::new()
        .api_replicas(replicas)
        .api_args(args.clone())
        .processor_args(args)
}

/// A customer's text to business number `number`, sent just now.
fn inbound(customer: &str, id: &str, number: &str, display: &str, text: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": number},
        "contacts": [{"wa_id": customer, "profile": {"name": "Customer"}}],
        "messages": [{"from": customer, "id": id, "type": "text", "text": {"body": text},
            "timestamp": chrono::Utc::now().timestamp().to_string()}]
    }}]}]})
    .to_string()
    .into_bytes()
}

fn status_webhook(customer: &str, wamid: &str, number: &str, status: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": SECOND_DISPLAY, "phone_number_id": number},
        "statuses": [{"id": wamid, "status": status, "recipient_id": customer,
            "timestamp": chrono::Utc::now().timestamp().to_string()}]
    }}]}]})
    .to_string()
    .into_bytes()
}

/// The customer writes to the default number and to [`SECOND`].
async fn customer_writes_to_both(stack: &Stack) {
    stack
        .post_webhook(&inbound(
            CUSTOMER,
            "wamid.in.first",
            PHONE_NUMBER_ID,
            DISPLAY,
            "hello first number",
        ))
        .await;
    stack.drained().await;
    stack
        .post_webhook(&inbound(
            CUSTOMER,
            "wamid.in.second",
            SECOND,
            SECOND_DISPLAY,
            "hello second number",
        ))
        .await;
    stack.drained().await;
}

fn messages_path(number: &str) -> String {
    format!("/{VERSION}/{number}/messages")
}

/// The conversation's messages, once `done` holds for them.
async fn messages_when(
    stack: &Stack,
    conversation: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = format!("/api/conversations/{conversation}/messages");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, messages) = stack.get(0, &path).await;
        assert_eq!(status, 200, "{messages}");
        let messages = messages.as_array().cloned().unwrap_or_default();
        if done(&messages) {
            return messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(conversations: &Value) -> Vec<&str> {
    conversations
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["conversationId"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_writing_to_two_numbers_is_two_conversations_each_answered_through_its_number()
{
    let graph = FakeGraph::start().await;
    let stack = spawn_stack(config(&graph, 2)).await;
    customer_writes_to_both(&stack).await;
    let first = format!("conv_{CUSTOMER}");
    let second = format!("conv_{CUSTOMER}_{SECOND}");

    // Both replicas list both, each with its number.
    for replica in 0..2 {
        let (status, list) = stack.get(replica, "/api/conversations").await;
        assert_eq!(status, 200, "{list}");
        let listed = ids(&list);
        assert!(
            listed.contains(&first.as_str()) && listed.contains(&second.as_str()),
            "{list}"
        );
        let of = |id: &str| {
            list.as_array()
                .into_iter()
                .flatten()
                .find(|c| c["conversationId"] == id)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(of(&first)["phoneNumberId"], PHONE_NUMBER_ID);
        assert_eq!(of(&second)["phoneNumberId"], SECOND);
        assert_eq!(of(&second)["businessNumber"], SECOND_DISPLAY);
    }
    let (_, narrowed) = stack
        .get(1, &format!("/api/conversations?phoneNumberId={SECOND}"))
        .await;
    assert_eq!(ids(&narrowed), [second.as_str()]);
    let (status, _) = stack.get(0, "/api/conversations?phoneNumberId=abc").await;
    assert_eq!(status, 400);
    let (status, _) = stack.get(0, "/api/stats?phoneNumberId=12x").await;
    assert_eq!(status, 400);

    // Numbers with their counts; stats narrowed to one.
    let (status, numbers) = stack.get(1, "/api/numbers").await;
    assert_eq!(status, 200, "{numbers}");
    let number = |id: &str| {
        numbers
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["phoneNumberId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} is listed: {numbers}"))
    };
    assert_eq!(
        number(SECOND),
        json!({"phoneNumberId": SECOND, "businessNumber": SECOND_DISPLAY,
               "conversations": 1, "unreadCount": 1})
    );
    let home = number(PHONE_NUMBER_ID);
    assert_eq!(home["businessNumber"], DISPLAY);
    // Its customer's, and the stack's own first conversation.
    assert_eq!(home["conversations"], 2, "{home}");
    assert_eq!(home["unreadCount"], 1, "{home}");
    let (_, stats) = stack
        .get(0, &format!("/api/stats?phoneNumberId={SECOND}"))
        .await;
    assert_eq!(
        (
            &stats["totalMessages"],
            &stats["totalConversations"],
            &stats["inbound"],
            &stats["phoneNumberId"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(SECOND)),
        "{stats}"
    );
    let (_, all) = stack.get(0, "/api/stats").await;
    assert!(all["totalConversations"].as_i64() >= Some(3), "{all}");
    assert!(all.get("phoneNumberId").is_none(), "{all}");

    // Replies go out through each conversation's own number.
    let to_second = reply(&stack, 0, &second, "from the second number").await;
    assert_eq!(to_second["phoneNumberId"], SECOND);
    assert_eq!(to_second["businessNumber"], SECOND_DISPLAY);
    let to_first = reply(&stack, 1, &first, "from the first number").await;
    assert_eq!(to_first["phoneNumberId"], PHONE_NUMBER_ID);
    let sent_to_second = to_second["clientMessageId"].as_str().unwrap().to_owned();
    graph
        .wait_for("both replies sent", WAIT, |requests| {
            requests.iter().filter(|r| r.wamid.is_some()).count() >= 3
        })
        .await;
    let send_of = |text: &str| {
        graph
            .sends()
            .into_iter()
            .find(|r| r.body["text"]["body"] == text)
            .unwrap_or_else(|| panic!("{text:?} was sent: {:?}", graph.sends()))
    };
    let second_send = send_of("from the second number");
    assert_eq!(second_send.path, messages_path(SECOND));
    assert_eq!(second_send.body["to"], CUSTOMER);
    assert_eq!(
        send_of("from the first number").path,
        messages_path(PHONE_NUMBER_ID)
    );

    // Meta's statuses for the second number's send land on its message.
    let wamid = second_send.wamid.clone().unwrap();
    let sent = messages_when(&stack, &second, "the reply sent", |messages| {
        messages
            .iter()
            .any(|m| m["clientMessageId"] == sent_to_second.as_str() && m["messageId"] == wamid)
    })
    .await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    stack
        .post_webhook(&status_webhook(CUSTOMER, &wamid, SECOND, "delivered"))
        .await;
    stack.drained().await;
    messages_when(&stack, &second, "the reply delivered", |messages| {
        messages
            .iter()
            .any(|m| m["messageId"] == wamid && m["status"] == "delivered")
    })
    .await;
    let first_messages =
        messages_when(&stack, &first, "the first conversation", |m| m.len() == 2).await;
    assert!(
        first_messages.iter().all(|m| m["status"] != "delivered"),
        "{first_messages:?}"
    );

    // The read receipt goes through the number the customer wrote to.
    let (status, read) = stack
        .post(0, &format!("/api/conversations/{second}/read"), json!({}))
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["readReceipt"], true, "{read}");
    let receipt = graph
        .requests()
        .into_iter()
        .find(|r| r.body["status"] == "read" && r.body["message_id"] == "wamid.in.second")
        .expect("a read receipt");
    assert_eq!(receipt.path, messages_path(SECOND));

    // A first message to a new customer, through the second number.
    let newcomer = "447700900222";
    let (status, opened) = stack
        .post(
            1,
            "/api/messages",
            json!({"to": newcomer, "phoneNumberId": SECOND,
                   "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status}: {opened}");
    let opened_id = format!("conv_{newcomer}_{SECOND}");
    assert_eq!(opened["conversationId"], opened_id.as_str());
    assert_eq!(opened["phoneNumberId"], SECOND);
    graph
        .wait_for("the template sent", WAIT, |requests| {
            requests
                .iter()
                .any(|r| r.body["to"] == newcomer && r.wamid.is_some())
        })
        .await;
    let template = graph
        .sends()
        .into_iter()
        .find(|r| r.body["to"] == newcomer)
        .unwrap();
    assert_eq!(template.path, messages_path(SECOND));
    // Without phoneNumberId: the default number, whose ids are conv_<wa_id>.
    let (status, default) = stack
        .post(
            0,
            "/api/messages",
            json!({"to": "447700900333",
                   "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status}: {default}");
    assert_eq!(default["conversationId"], "conv_447700900333");
    // Both named: they must agree.
    let (status, refused) = stack
        .post(
            0,
            "/api/messages",
            json!({"conversationId": first, "phoneNumberId": SECOND, "message": "which?"}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    let (status, _) = stack
        .post(
            0,
            "/api/messages",
            json!({"to": "447700900444", "phoneNumberId": "x1",
                   "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_no_token_serves_refuses_replies_before_storing_them() {
    let graph = FakeGraph::start().await;
    let stack = spawn_stack(config(&graph, 1)).await;
    // The default number is the one webhooks came for first (home).
    customer_writes_to_both(&stack).await;
    stack
        .post_webhook(&inbound(
            CUSTOMER,
            "wamid.in.third",
            THIRD,
            "15550783883",
            "hello third number",
        ))
        .await;
    stack.drained().await;
    let third = format!("conv_{CUSTOMER}_{THIRD}");
    let path = format!("/api/conversations/{third}/messages");
    let (_, before) = stack.get(0, &path).await;
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");

    let key = "numbers-no-token-key";
    let response = stack
        .http
        .post(format!("{}/api/messages", stack.api[0]))
        .header("Idempotency-Key", key)
        .json(&json!({"conversationId": third, "message": "anyone?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap_or_default().contains(THIRD),
        "{error}"
    );
    let (_, after) = stack.get(0, &path).await;
    assert_eq!(after, before, "nothing stored");
    // The key was not used up: it sends another message elsewhere (a
    // 503 from the replica-set stand-in is retried with it, as `post` does).
    let mut status = 503;
    for _ in 0..100 {
        status = stack
            .http
            .post(format!("{}/api/messages", stack.api[0]))
            .header("Idempotency-Key", key)
            .json(&json!({"conversationId": crate::helpers::MARKER,
                   "template": {"name": "again", "language": {"code": "en"}}}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status == 201 || status == 200, "{status}");
    // Marking it read is done here; WhatsApp cannot be told.
    let (status, read) = stack
        .post(0, &format!("/api/conversations/{third}/read"), json!({}))
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(
        (&read["updated"], &read["readReceipt"]),
        (&json!(1), &json!(false))
    );
    assert!(
        graph.requests().iter().all(|r| !r.path.contains(THIRD)),
        "nothing went out through the third number"
    );
}

/// An api-gateway of `stack`'s deployment that asks for tokens: `ALL`
/// sees everything, `SCOPED` only [`SECOND`]'s.
const ALL: &str = "all-numbers-token-0123456789";
const SCOPED: &str = "second-number-token-0123456789";

async fn guarded_api(config: &StackConfig, shutdown: &CancellationToken) -> String {
    let file = std::env::temp_dir().join(test_support::unique_name("tokens"));
    std::fs::write(&file, format!("{ALL}\n{SCOPED} numbers={SECOND}\n")).unwrap();
    let config = config
        .clone()
        .api_args([format!("--api-tokens-file={}", file.display())]);
    let url = spawn_api(&config, shutdown).await;
    let http = reqwest::Client::new();
    test_support::wait_until("the guarded api-gateway", WAIT, || async {
        http.get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    url
}

/// A request with `token`: its status and JSON body. A 503 (the
/// replica-set stand-in refusing a write while another holds its lock) is
/// retried with one Idempotency-Key, as a careful client does.
async fn call(token: &str, request: reqwest::RequestBuilder) -> (u16, Value) {
    let request = request.bearer_auth(token).header(
        "Idempotency-Key",
        format!("numbers-{}", uuid::Uuid::now_v7()),
    );
    for _ in 0..100 {
        let response = request.try_clone().unwrap().send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != 503 {
            return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("503 a hundred times");
}

/// `POST /api/messages` of a text, stored (201, or 200 when a retried
/// attempt found it stored by the first).
async fn reply(stack: &Stack, replica: usize, conversation: &str, text: &str) -> Value {
    let (status, sent) = stack
        .post(
            replica,
            "/api/messages",
            json!({"conversationId": conversation, "message": text}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status}: {sent}");
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_a_number_sees_and_sends_through_nothing_else() {
    // The second number has a token of its own: only it reaches its media.
    let graph = FakeGraph::start()
        .await
        .with_number_token(SECOND, SECOND_NUMBER_TOKEN);
    graph.add_media_for(PHONE_NUMBER_ID, "1001", b"first's photo", "image/jpeg");
    graph.add_media_for(SECOND, "1002", b"second's photo", "image/jpeg");
    let media = std::env::temp_dir().join(test_support::unique_name("media"));
    let mut args = graph_args(&graph);
    args.push(format!(
        "--whatsapp-number-tokens={SECOND}={SECOND_NUMBER_TOKEN}"
    ));
    let config = StackConfig::new()
        .api_args(args.clone())
        .api_args([
            format!("--media-cache-dir={}", media.display()),
            "--media-allowed-hosts=127.0.0.1".to_owned(),
            "--media-allow-private-addresses".to_owned(),
        ])
        .processor_args(args);
    let stack = spawn_stack(config.clone()).await;
    customer_writes_to_both(&stack).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let api = guarded_api(&config, &shutdown).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{api}{path}"));
    let post = |path: &str, body: Value| http.post(format!("{api}{path}")).json(&body);
    let first = format!("conv_{CUSTOMER}");
    let second = format!("conv_{CUSTOMER}_{SECOND}");

    let (status, _) = call("not-a-token-at-all-0123", get("/api/numbers")).await;
    assert_eq!(status, 401);
    let (_, all) = call(ALL, get("/api/conversations")).await;
    assert!(ids(&all).contains(&first.as_str()), "{all}");
    assert!(ids(&all).contains(&second.as_str()), "{all}");

    // Listings: its number's only.
    let (status, list) = call(SCOPED, get("/api/conversations")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(ids(&list), [second.as_str()]);
    let (_, list) = call(
        SCOPED,
        get(&format!(
            "/api/conversations?phoneNumberId={PHONE_NUMBER_ID}"
        )),
    )
    .await;
    assert_eq!(list, json!([]));
    let (_, numbers) = call(SCOPED, get("/api/numbers")).await;
    let listed: Vec<&Value> = numbers
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| &n["phoneNumberId"])
        .collect();
    assert_eq!(listed, [SECOND], "{numbers}");
    let (_, stats) = call(SCOPED, get("/api/stats")).await;
    assert_eq!(
        (&stats["totalMessages"], &stats["totalConversations"]),
        (&json!(1), &json!(1)),
        "{stats}"
    );
    let (_, stats) = call(
        SCOPED,
        get(&format!("/api/stats?phoneNumberId={PHONE_NUMBER_ID}")),
    )
    .await;
    assert_eq!(stats["totalMessages"], 0, "{stats}");

    // The other number's conversation: as if it did not exist.
    let (status, _) = call(SCOPED, get(&format!("/api/conversations/{first}/messages"))).await;
    assert_eq!(status, 404);
    let (status, messages) = call(
        SCOPED,
        get(&format!("/api/conversations/{second}/messages")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(messages.as_array().map(Vec::len), Some(1), "{messages}");
    let (status, _) = call(
        SCOPED,
        post(&format!("/api/conversations/{first}/read"), json!({})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        SCOPED,
        post(
            "/api/messages",
            json!({"conversationId": first, "message": "not mine"}),
        ),
    )
    .await;
    assert_eq!(status, 404);
    let (status, refused) = call(
        SCOPED,
        post(
            "/api/messages",
            json!({"to": "447700900555", "phoneNumberId": PHONE_NUMBER_ID,
                   "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
        ),
    )
    .await;
    assert_eq!(status, 404, "{refused}");
    let (status, _) = call(
        SCOPED,
        get(&format!(
            "/api/media/1234567890?phoneNumberId={PHONE_NUMBER_ID}"
        )),
    )
    .await;
    assert_eq!(status, 404);

    // Search: its number's messages only.
    let (status, found) = call(SCOPED, get("/api/search?q=hello")).await;
    assert_eq!(status, 200, "{found}");
    let hits: Vec<&Value> = found["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| &m["conversationId"])
        .collect();
    assert_eq!(hits, [&json!(second)], "{found}");
    let (_, found) = call(
        SCOPED,
        get(&format!("/api/search?q=hello&conversationId={first}")),
    )
    .await;
    assert_eq!(found["results"], json!([]), "{found}");
    let (_, found) = call(ALL, get("/api/search?q=hello")).await;
    assert_eq!(
        found["results"].as_array().map(Vec::len),
        Some(2),
        "{found}"
    );

    // Sending through its own number works.
    let (status, sent) = call(
        SCOPED,
        post(
            "/api/messages",
            json!({"conversationId": second, "message": "mine"}),
        ),
    )
    .await;
    assert!(status == 201 || status == 200, "{status}: {sent}");
    // A new customer without phoneNumberId: its own number, not the default.
    let (status, opened) = call(
        SCOPED,
        post(
            "/api/messages",
            json!({"to": "447700900666",
                   "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
        ),
    )
    .await;
    assert!(status == 201 || status == 200, "{status}: {opened}");
    assert_eq!(
        opened["conversationId"],
        format!("conv_447700900666_{SECOND}")
    );
}
