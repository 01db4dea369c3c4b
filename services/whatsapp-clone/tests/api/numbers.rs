//! Several business numbers on the all-in-one (SQLite, embedded broker),
//! as clients see them: a customer writing to two numbers has two
//! conversations, each answered from its own number; a token scoped to a
//! number sees nothing of the others by any route (REST, the socket, its
//! resume, the event log); a number with no access token cannot send; and
//! data stored before numbers existed keeps its ids and is adopted by the
//! default number.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::SocketClient;
use test_support::graph::{FakeGraph, PHONE_NUMBER_ID, SECOND_PHONE_NUMBER_ID, TOKEN, VERSION};

use crate::helpers::{Server, embedded_config, now_secs, spawn, temp_dir, webhook};

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "admin-token-0123456789abcdef";
const SALES: &str = "sales-token-0123456789abcdef";
/// A number WhatsApp has no token of ours for.
const THIRD: &str = "106540352242999";
const CUSTOMER: &str = "447700900555";

fn display(number: &str) -> String {
    format!("1555{}", &number[number.len() - 7..])
}

/// The customer's text `id` to `number` (`None`: a webhook without
/// metadata, as stored before numbers existed).
fn said(number: Option<&str>, id: &str) -> String {
    let mut value = json!({"contacts": [{"wa_id": CUSTOMER, "profile": {"name": "Ada"}}],
        "messages": [{"from": CUSTOMER, "id": id, "timestamp": now_secs(), "type": "text", "text": {"body": id}}]});
    if let Some(number) = number {
        value["metadata"] =
            json!({"display_phone_number": display(number), "phone_number_id": number});
    }
    webhook(value)
}

struct Client {
    http: reqwest::Client,
    url: String,
}

/// The status and JSON body (`null` when none) of a request's response.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// The `phoneNumberId`s of a `/api/numbers` answer.
fn number_ids(numbers: &Value) -> Vec<&str> {
    numbers
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["phoneNumberId"].as_str().unwrap())
        .collect()
}

impl Client {
    fn new(url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    async fn post_webhook(&self, body: String) {
        let response = self
            .http
            .post(format!("{}/webhook", self.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        answer(
            self.http
                .get(format!("{}{path}", self.url))
                .bearer_auth(token),
        )
        .await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        answer(
            self.http
                .post(format!("{}{path}", self.url))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// Waits until `conversation` holds `n` messages (admin's view).
    async fn wait_for_messages(&self, conversation: &str, n: usize) {
        let path = format!("/api/conversations/{conversation}/messages");
        test_support::wait_until(&format!("{n} messages in {conversation}"), WAIT, || async {
            self.get(ADMIN, &path)
                .await
                .1
                .as_array()
                .is_some_and(|m| m.len() == n)
        })
        .await;
    }

    async fn conversation_ids(&self, token: &str, query: &str) -> Vec<String> {
        let (status, list) = self.get(token, &format!("/api/conversations{query}")).await;
        assert_eq!(status, 200, "{list}");
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conversationId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }
}

fn home_conversation() -> String {
    format!("conv_{CUSTOMER}")
}

fn sales_conversation() -> String {
    format!("conv_{CUSTOMER}_{SECOND_PHONE_NUMBER_ID}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_numbers_are_answered_from_their_own_and_a_scoped_token_sees_only_its_own() {
    let graph = FakeGraph::start().await;
    let dir = temp_dir();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("{ADMIN}\n# the sales team\n{SALES} numbers={SECOND_PHONE_NUMBER_ID}\n"),
    )
    .unwrap();
    let mut config = embedded_config(&dir);
    config.api.api_tokens_file = Some(tokens);
    // Each number its own token; THIRD none (no token serves every number).
    config.graph.whatsapp_number_tokens = Some(format!(
        "{PHONE_NUMBER_ID}={TOKEN},{SECOND_PHONE_NUMBER_ID}={TOKEN}"
    ));
    config.graph.whatsapp_phone_number_id = Some(PHONE_NUMBER_ID.to_owned());
    config.graph.graph_api_url = graph.url();
    let app = spawn(config).await;
    let client = Client::new(&app.url);
    let mut sales_socket =
        SocketClient::connect_with(&client.url, "websocket", json!({"auth": {"token": SALES}}))
            .await;

    client
        .post_webhook(said(Some(PHONE_NUMBER_ID), "wamid.home.1"))
        .await;
    client.wait_for_messages(&home_conversation(), 1).await;
    client
        .post_webhook(said(Some(SECOND_PHONE_NUMBER_ID), "wamid.sales.1"))
        .await;
    client.wait_for_messages(&sales_conversation(), 1).await;

    // Two conversations, each with its number.
    assert_eq!(
        client.conversation_ids(ADMIN, "").await,
        [home_conversation(), sales_conversation()]
    );
    assert_eq!(
        client
            .conversation_ids(ADMIN, &format!("?phoneNumberId={SECOND_PHONE_NUMBER_ID}"))
            .await,
        [sales_conversation()]
    );
    let (_, numbers) = client.get(ADMIN, "/api/numbers").await;
    let listed = number_ids(&numbers);
    assert!(
        listed.contains(&PHONE_NUMBER_ID) && listed.contains(&SECOND_PHONE_NUMBER_ID),
        "{numbers}"
    );

    // Each conversation answered from its own number.
    for conversation in [home_conversation(), sales_conversation()] {
        let (status, sent) = client
            .post(
                ADMIN,
                "/api/messages",
                json!({"conversationId": conversation, "message": format!("answer in {conversation}")}),
            )
            .await;
        assert_eq!(status, 201, "{sent}");
        assert_eq!(sent["conversationId"], conversation.as_str());
    }
    graph
        .wait_for("two answers", WAIT, |requests| {
            requests
                .iter()
                .filter(|r| r.path.ends_with("/messages") && r.wamid.is_some())
                .count()
                >= 2
        })
        .await;
    let sends = graph.sends();
    let paths: Vec<(String, String)> = sends
        .iter()
        .map(|s| {
            (
                s.path.clone(),
                s.body["text"]["body"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        paths.contains(&(
            format!("/{VERSION}/{PHONE_NUMBER_ID}/messages"),
            format!("answer in {}", home_conversation())
        )),
        "{paths:?}"
    );
    assert!(
        paths.contains(&(
            format!("/{VERSION}/{SECOND_PHONE_NUMBER_ID}/messages"),
            format!("answer in {}", sales_conversation())
        )),
        "{paths:?}"
    );

    // A status for the sales answer lands on it.
    let sales_wamid = sends
        .iter()
        .find(|s| s.path.contains(SECOND_PHONE_NUMBER_ID))
        .and_then(|s| s.wamid.clone())
        .unwrap();
    client
        .post_webhook(webhook(json!({
            "metadata": {"display_phone_number": display(SECOND_PHONE_NUMBER_ID), "phone_number_id": SECOND_PHONE_NUMBER_ID},
            "statuses": [{"id": sales_wamid, "status": "read", "timestamp": now_secs(), "recipient_id": CUSTOMER}]})))
        .await;
    let messages_path = format!("/api/conversations/{}/messages", sales_conversation());
    test_support::wait_until("the sales answer read", WAIT, || async {
        let (_, messages) = client.get(ADMIN, &messages_path).await;
        messages.as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["messageId"] == sales_wamid.as_str() && m["status"] == "read")
        })
    })
    .await;

    // The scoped token: only its number, by every route.
    assert_eq!(
        client.conversation_ids(SALES, "").await,
        [sales_conversation()]
    );
    assert!(
        client
            .conversation_ids(SALES, &format!("?phoneNumberId={PHONE_NUMBER_ID}"))
            .await
            .is_empty()
    );
    let home = home_conversation();
    for path in [
        format!("/api/conversations/{home}/messages"),
        "/api/messages/wamid.home.1".to_owned(),
    ] {
        let (status, body) = client.get(SALES, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for (path, body) in [
        (format!("/api/conversations/{home}/read"), json!({})),
        (
            "/api/messages".to_owned(),
            json!({"conversationId": home, "message": "not mine"}),
        ),
        (
            "/api/messages".to_owned(),
            json!({"to": CUSTOMER, "phoneNumberId": PHONE_NUMBER_ID,
                "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
        ),
    ] {
        let (status, answer) = client.post(SALES, &path, body).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    // The metrics count every number: not for a scoped token.
    let (status, _) = client.get(SALES, "/metrics").await;
    assert_eq!(status, 403);
    // The home number's conversation under a suffixed id is no conversation.
    let (status, body) = client
        .post(
            ADMIN,
            "/api/messages",
            json!({"conversationId": format!("conv_{CUSTOMER}_{PHONE_NUMBER_ID}"), "message": "twin"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, stats) = client.get(SALES, "/api/stats").await;
    assert_eq!(stats["totalConversations"], 1, "{stats}");
    assert_eq!(stats["totalMessages"], 2, "{stats}");
    let (_, numbers) = client.get(SALES, "/api/numbers").await;
    let listed = number_ids(&numbers);
    assert_eq!(listed, [SECOND_PHONE_NUMBER_ID]);
    let (_, found) = client.get(SALES, "/api/search?q=wamid").await;
    let found: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conversationId"].as_str().unwrap())
        .collect();
    assert!(
        !found.is_empty() && found.iter().all(|c| *c == sales_conversation()),
        "{found:?}"
    );
    let (_, log) = client.get(SALES, "/api/events?limit=1000").await;
    let logged: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["conversationId"].as_str().unwrap())
        .collect();
    assert!(
        !logged.is_empty() && logged.iter().all(|c| *c == sales_conversation()),
        "{logged:?}"
    );

    // Its socket heard only its number, live and on resume.
    let marker = "sales marker";
    let (status, _) = client
        .post(
            SALES,
            "/api/messages",
            json!({"conversationId": sales_conversation(), "message": marker}),
        )
        .await;
    assert_eq!(status, 201);
    let heard = sales_socket.events_until_marker(marker).await;
    assert!(!heard.is_empty());
    for (_, data) in &heard {
        assert_eq!(
            data["conversationId"],
            sales_conversation().as_str(),
            "{data}"
        );
    }
    let mut resumed = SocketClient::connect_with(
        &client.url,
        "websocket",
        json!({"auth": {"token": SALES, "lastSeq": 0}}),
    )
    .await;
    let replayed = resumed.events_until_marker(marker).await;
    assert!(!replayed.is_empty());
    for (_, data) in &replayed {
        assert_eq!(
            data["conversationId"],
            sales_conversation().as_str(),
            "{data}"
        );
    }

    // A number with no token: the answer is refused before it is stored.
    client
        .post_webhook(said(Some(THIRD), "wamid.third.1"))
        .await;
    let third = format!("conv_{CUSTOMER}_{THIRD}");
    client.wait_for_messages(&third, 1).await;
    let (status, refused) = client
        .post(
            ADMIN,
            "/api/messages",
            json!({"conversationId": third, "message": "cannot go"}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains(THIRD),
        "{refused}"
    );
    client.wait_for_messages(&third, 1).await;
}

/// The real binary: data stored before numbers existed keeps its ids and
/// joins the default number once the deployment knows it (a restart with
/// `WHATSAPP_PHONE_NUMBER_ID`); other numbers get their own conversations,
/// and a token scoped to the default number sees only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_number_data_is_adopted_in_place_by_the_default_number() {
    let dir = temp_dir();
    let home_only = "home-only-token-0123456789abcdef";
    std::fs::write(
        dir.join("tokens"),
        format!("{ADMIN}\n{home_only} numbers={PHONE_NUMBER_ID}\n"),
    )
    .unwrap();
    let tokens = dir.join("tokens").display().to_string();
    let env = [("RUST_LOG", "warn"), ("API_TOKENS_FILE", tokens.as_str())];
    let port = test_support::free_port();
    let before = Server::start_with(&dir, port, &env, None).await;
    let client = Client::new(&before.url);
    client.post_webhook(said(None, "wamid.old.1")).await;
    client.wait_for_messages(&home_conversation(), 1).await;
    let (_, list) = client.get(ADMIN, "/api/conversations").await;
    assert!(list[0].get("phoneNumberId").is_none(), "{list}");
    assert!(before.terminate().await.is_some());

    let env = [
        ("RUST_LOG", "warn"),
        ("API_TOKENS_FILE", tokens.as_str()),
        ("WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID),
    ];
    let after = Server::start_with(&dir, port, &env, None).await;
    let client = Client::new(&after.url);
    test_support::wait_until("the default number to adopt the data", WAIT, || async {
        let (_, list) = client.get(ADMIN, "/api/conversations").await;
        list[0]["phoneNumberId"] == PHONE_NUMBER_ID
    })
    .await;
    client
        .post_webhook(said(Some(PHONE_NUMBER_ID), "wamid.new.1"))
        .await;
    client
        .post_webhook(said(Some(SECOND_PHONE_NUMBER_ID), "wamid.new.2"))
        .await;
    client.wait_for_messages(&home_conversation(), 2).await;
    client.wait_for_messages(&sales_conversation(), 1).await;
    let (_, numbers) = client.get(ADMIN, "/api/numbers").await;
    let home = numbers
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["phoneNumberId"] == PHONE_NUMBER_ID)
        .cloned()
        .unwrap();
    assert_eq!(
        (home["conversations"].as_i64(), home["unreadCount"].as_i64()),
        (Some(1), Some(2)),
        "{numbers}"
    );
    // The old conversation is the default number's for a scoped token too.
    assert_eq!(
        client.conversation_ids(home_only, "").await,
        [home_conversation()]
    );
    let (status, old) = client
        .get(
            home_only,
            &format!("/api/conversations/{}/messages", home_conversation()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(old.as_array().map(Vec::len), Some(2), "{old}");
    let (status, _) = client
        .get(
            home_only,
            &format!("/api/conversations/{}/messages", sales_conversation()),
        )
        .await;
    assert_eq!(status, 404);
}

/// Before any webhook, a refused send records nothing (no home number, no
/// number listed), and a template to `conv_<wa_id>` records the default
/// number as home: a later webhook of another number gets its own
/// conversation, not that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_number_is_recorded_only_by_what_is_stored() {
    let graph = FakeGraph::start().await;
    let mut config = embedded_config(&temp_dir());
    config.graph.whatsapp_number_tokens = Some(format!("{PHONE_NUMBER_ID}={TOKEN}"));
    config.graph.whatsapp_phone_number_id = Some(PHONE_NUMBER_ID.to_owned());
    config.graph.graph_api_url = graph.url();
    let app = spawn(config).await;
    let client = Client::new(&app.url);
    let template = json!({"name": "hello_world", "language": {"code": "en_US"}});
    let (status, refused) = client
        .post(
            ADMIN,
            "/api/messages",
            json!({"to": CUSTOMER, "phoneNumberId": THIRD, "template": template}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let (status, sent) = client
        .post(
            ADMIN,
            "/api/messages",
            json!({"conversationId": home_conversation(), "template": template}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["phoneNumberId"], PHONE_NUMBER_ID);
    client
        .post_webhook(said(Some(SECOND_PHONE_NUMBER_ID), "wamid.second.1"))
        .await;
    client.wait_for_messages(&sales_conversation(), 1).await;
    client.wait_for_messages(&home_conversation(), 1).await;
    let (_, numbers) = client.get(ADMIN, "/api/numbers").await;
    let listed = number_ids(&numbers);
    assert!(!listed.contains(&THIRD), "{numbers}");
    assert!(
        listed.contains(&PHONE_NUMBER_ID) && listed.contains(&SECOND_PHONE_NUMBER_ID),
        "{numbers}"
    );
}
