//! Live events of several business numbers: a token scoped to a number
//! gets that number's events only, on its socket (live, and resuming with
//! `lastSeq`) and from `GET /api/events`; an unscoped token gets them all;
//! a socket may subscribe to a number as to a conversation.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::SocketClient;
use test_support::graph::PHONE_NUMBER_ID;
use test_support::stack::StackConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Stack, spawn_api, spawn_stack};

const WAIT: Duration = Duration::from_secs(30);
/// The stack's second business number (the first, the home number, is
/// the one of the first webhook).
const SECOND: &str = "106540352242923";
const ADMIN: &str = "admin-token-0123456789abcdef";
const SALES: &str = "sales-token-0123456789abcdef";
const FRONT_DESK: &str = "front-desk-token-0123456789abcdef";
const CUSTOMER: &str = "447700900555";

fn home_conversation() -> String {
    format!("conv_{CUSTOMER}")
}

fn sales_conversation() -> String {
    format!("conv_{CUSTOMER}_{SECOND}")
}

/// The customer's text `id` (also its body) to business number `number`.
fn said(number: &str, id: &str) -> Vec<u8> {
    let display = format!("1555{}", &number[number.len() - 7..]);
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "metadata": {"display_phone_number": display, "phone_number_id": number},
        "contacts": [{"wa_id": CUSTOMER, "profile": {"name": "Ada"}}],
        "messages": [{"from": CUSTOMER, "id": id, "timestamp": "1754500000", "type": "text", "text": {"body": id}}]
    }}]}]})
    .to_string()
    .into_bytes()
}

/// The stack, plus an api-gateway of its own with tokens: `ADMIN`
/// (unscoped), `SALES` (the second number) and `FRONT_DESK` (the home
/// number). The stack's own api-gateway has none (its helpers send no
/// token).
struct Scoped {
    stack: Stack,
    api: String,
    _stop: tokio_util::sync::DropGuard,
}

async fn spawn_scoped() -> Scoped {
    let tokens: PathBuf = std::env::temp_dir().join(test_support::unique_name("tokens"));
    std::fs::write(
        &tokens,
        format!("{ADMIN}\n{SALES} numbers={SECOND}\n{FRONT_DESK} numbers={PHONE_NUMBER_ID}\n"),
    )
    .unwrap();
    let config = StackConfig::new();
    let stack = spawn_stack(config.clone()).await;
    let shutdown = CancellationToken::new();
    let api = spawn_api(
        &config.api_args([format!("--api-tokens-file={}", tokens.display())]),
        &shutdown,
    )
    .await;
    test_support::wait_until("the scoped api-gateway to be ready", WAIT, || async {
        reqwest::get(format!("{api}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    Scoped {
        stack,
        api,
        _stop: shutdown.drop_guard(),
    }
}

impl Scoped {
    async fn socket(&self, options: Value) -> SocketClient {
        SocketClient::connect_with(&self.api, "websocket", options).await
    }

    /// `GET path` with `token`: status, body and the `Next-After` header.
    async fn get(&self, token: &str, path: &str) -> (u16, Value, Option<u64>) {
        let response = self
            .stack
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let next_after = response
            .headers()
            .get("next-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        (status, response.json().await.unwrap(), next_after)
    }

    /// The whole log as `token` sees it, `limit` events read per page,
    /// following `Next-After`; and how many pages listed nothing.
    async fn log(&self, token: &str, limit: usize) -> (Vec<Value>, usize) {
        let (mut events, mut empty_pages, mut after) = (Vec::new(), 0, 0);
        loop {
            let (status, page, next_after) = self
                .get(token, &format!("/api/events?after={after}&limit={limit}"))
                .await;
            assert_eq!(status, 200, "{page}");
            let next_after = next_after.expect("every page says where the next starts");
            let page = page.as_array().unwrap().clone();
            if next_after == after {
                assert!(page.is_empty(), "the end of the log: {page:?}");
                return (events, empty_pages);
            }
            assert!(next_after > after);
            if page.is_empty() {
                empty_pages += 1;
            }
            events.extend(page);
            after = next_after;
        }
    }
}

/// `(event, messageId, status)` of each socket event, to compare streams.
fn keys(events: &[(String, Value)]) -> Vec<(u64, String, String, String)> {
    events
        .iter()
        .map(|(name, data)| {
            (
                data["seq"].as_u64().unwrap(),
                name.clone(),
                data["conversationId"].as_str().unwrap().to_owned(),
                format!("{}:{}", data["messageId"], data["status"]),
            )
        })
        .collect()
}

/// The same keys from `GET /api/events` entries.
fn log_keys(events: &[Value]) -> Vec<(u64, String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["event"].as_str().unwrap().to_owned(),
                e["data"]["conversationId"].as_str().unwrap().to_owned(),
                format!("{}:{}", e["data"]["messageId"], e["data"]["status"]),
            )
        })
        .collect()
}

fn conversations(events: &[(String, Value)]) -> BTreeSet<String> {
    events
        .iter()
        .map(|(_, data)| data["conversationId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_a_number_gets_only_its_events_live_on_resume_and_from_the_log() {
    let scoped = spawn_scoped().await;
    let stack = &scoped.stack;
    let mut admin = scoped.socket(json!({"auth": {"token": ADMIN}})).await;
    let mut sales = scoped.socket(json!({"auth": {"token": SALES}})).await;
    let mut front_desk = scoped.socket(json!({"auth": {"token": FRONT_DESK}})).await;
    // A scoped socket cannot subscribe to another number, nor to one of
    // its conversations: nothing changes.
    for other in [
        json!(format!("number:{PHONE_NUMBER_ID}")),
        json!({"phoneNumberId": PHONE_NUMBER_ID}),
        json!({"conversationId": home_conversation()}),
        json!([home_conversation()]),
    ] {
        let subscribed = sales.emit_with_ack("subscribe", other.clone()).await;
        assert_eq!(subscribed, json!(["*"]), "{other}");
    }

    // The first webhook's number becomes the home number.
    stack
        .post_webhook(&said(PHONE_NUMBER_ID, "wamid.home.1"))
        .await;
    stack.post_webhook(&said(SECOND, "wamid.sales.1")).await;
    stack.drained().await;
    for conversation in [home_conversation(), sales_conversation()] {
        let (status, read) = stack
            .post(
                0,
                &format!("/api/conversations/{conversation}/read"),
                json!({}),
            )
            .await;
        assert_eq!((status, &read["updated"]), (200, &json!(1)), "{read}");
    }
    stack
        .post_webhook(&said(PHONE_NUMBER_ID, "wamid.home.marker"))
        .await;
    stack
        .post_webhook(&said(SECOND, "wamid.sales.marker"))
        .await;

    let everything = admin.events_until_marker("wamid.sales.marker").await;
    let of_sales = sales.events_until_marker("wamid.sales.marker").await;
    let of_home = front_desk.events_until_marker("wamid.home.marker").await;
    assert_eq!(
        conversations(&everything),
        BTreeSet::from([home_conversation(), sales_conversation()]),
        "an unscoped token gets every number's events"
    );
    let expected_sales: Vec<_> = keys(&everything)
        .into_iter()
        .filter(|(_, _, conversation, _)| *conversation == sales_conversation())
        .collect();
    assert_eq!(
        expected_sales.len(),
        2,
        "the message and its read: {everything:?}"
    );
    assert_eq!(
        keys(&of_sales),
        expected_sales,
        "only its number's, once each"
    );
    assert_eq!(
        conversations(&of_home),
        BTreeSet::from([home_conversation()]),
        "the home number's token gets the home number's events only"
    );
    assert_eq!(of_home.len(), 2, "{of_home:?}");
    for (_, data) in &of_sales {
        assert_eq!(data["phoneNumberId"], SECOND, "{data}");
    }

    // Resuming from the start of the log: its number's events only, then
    // live ones.
    let mut resumed = scoped
        .socket(json!({"auth": {"token": SALES, "lastSeq": 0}}))
        .await;
    let replayed = resumed.events_until_marker("wamid.sales.marker").await;
    assert_eq!(keys(&replayed), expected_sales);
    stack
        .post_webhook(&said(PHONE_NUMBER_ID, "wamid.home.2"))
        .await;
    stack.post_webhook(&said(SECOND, "wamid.sales.2")).await;
    let (name, data) = resumed.next_event(WAIT).await;
    assert_eq!(
        (name.as_str(), data["messageId"].as_str()),
        ("newMessage", Some("wamid.sales.2")),
        "live after the replay, without the home number's message"
    );
    // Resuming from the middle: only what followed, of its number.
    let after = expected_sales[0].0;
    let mut from_middle = scoped
        .socket(json!({"auth": {"token": SALES, "lastSeq": after}}))
        .await;
    let replayed = from_middle.events_until_marker("wamid.sales.marker").await;
    assert_eq!(keys(&replayed), expected_sales[1..]);

    // The log over REST: all of it for the unscoped token, its number's
    // for the scoped one, paging past the events it may not see.
    test_support::wait_until("the last message in the log", WAIT, || async {
        let (_, log, _) = scoped.get(ADMIN, "/api/events?limit=1000").await;
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["messageId"] == "wamid.sales.2")
    })
    .await;
    let (all, _) = scoped.log(ADMIN, 1000).await;
    let (of_sales, _) = scoped.log(SALES, 1000).await;
    let of_sales_keys = log_keys(&of_sales);
    assert_eq!(
        of_sales_keys,
        log_keys(&all)
            .into_iter()
            .filter(|(_, _, conversation, _)| *conversation == sales_conversation())
            .collect::<Vec<_>>()
    );
    assert_eq!(of_sales_keys.len(), 4, "{of_sales:?}");
    let (paged, empty_pages) = scoped.log(SALES, 1).await;
    assert_eq!(log_keys(&paged), of_sales_keys, "page by page, the same");
    assert!(
        empty_pages > 0,
        "pages of other numbers' events list nothing, and Next-After moves past them"
    );
    let (status, _, _) = scoped.get(SALES, "/api/events?after=1000000").await;
    assert_eq!(status, 410, "beyond the log, whatever the scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_subscribes_to_a_number_as_to_a_conversation() {
    let scoped = spawn_scoped().await;
    let stack = &scoped.stack;
    let mut by_number = scoped.socket(json!({"auth": {"token": ADMIN}})).await;
    let subscribed = by_number
        .emit_with_ack("subscribe", json!({"phoneNumberId": SECOND}))
        .await;
    assert_eq!(subscribed, json!([format!("number:{SECOND}")]));
    // A number and one of its conversations, from the start: each event
    // once.
    let mut both = scoped
        .socket(json!({"auth": {"token": ADMIN,
            "subscribe": [format!("number:{SECOND}"), sales_conversation()]}}))
        .await;
    // Within its scope, a scoped socket may narrow to its number too.
    let mut sales = scoped.socket(json!({"auth": {"token": SALES}})).await;
    let subscribed = sales
        .emit_with_ack(
            "subscribe",
            json!({"phoneNumberId": [SECOND, PHONE_NUMBER_ID]}),
        )
        .await;
    assert_eq!(subscribed, json!([format!("number:{SECOND}")]));
    // Unsubscribing from the number: nothing left.
    let mut unsubscribed = scoped.socket(json!({"auth": {"token": ADMIN}})).await;
    unsubscribed
        .emit_with_ack("subscribe", json!(format!("number:{SECOND}")))
        .await;
    let left = unsubscribed
        .emit_with_ack("unsubscribe", json!({"phoneNumberId": SECOND}))
        .await;
    assert_eq!(left, json!([]));

    stack
        .post_webhook(&said(PHONE_NUMBER_ID, "wamid.home.1"))
        .await;
    stack.post_webhook(&said(SECOND, "wamid.sales.1")).await;
    stack
        .post_webhook(&said(PHONE_NUMBER_ID, "wamid.home.2"))
        .await;
    stack
        .post_webhook(&said(SECOND, "wamid.sales.marker"))
        .await;
    for client in [&mut by_number, &mut both, &mut sales] {
        let events = client.events_until_marker("wamid.sales.marker").await;
        let ids: Vec<&str> = events
            .iter()
            .map(|(_, data)| data["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["wamid.sales.1"], "its number's events, once");
    }
    // Back to everything the token may see: the next event is the next
    // one stored (the socket that had unsubscribed got none before).
    for client in [&mut by_number, &mut unsubscribed] {
        let subscribed = client.emit_with_ack("subscribe", json!("*")).await;
        assert_eq!(subscribed, json!(["*"]));
    }
    stack
        .post_webhook(&said(PHONE_NUMBER_ID, "wamid.home.marker"))
        .await;
    for client in [&mut by_number, &mut unsubscribed] {
        let (_, data) = client.next_event(WAIT).await;
        assert_eq!(data["body"], "wamid.home.marker");
    }
}

/// An event of `conversation_id` naming no number, as events stored
/// before numbers existed do.
fn numberless_status(conversation_id: &str, message_id: &str) -> wa_core::domain::Event {
    wa_core::domain::Event::StatusUpdate(wa_core::domain::StatusUpdate {
        message_id: message_id.to_owned(),
        status: "delivered".into(),
        conversation_id: conversation_id.to_owned(),
        phone_number_id: None,
        business_number: None,
        timestamp: chrono::Utc::now(),
        client_message_id: None,
        previous_message_id: None,
        errors: None,
    })
}

/// Events that name no number (stored before numbers existed) belong to
/// the home number by their conversation id: the api-gateway reads the
/// home number to tell (in process, on SQLite and the embedded log, to
/// write such events to the log directly).
#[tokio::test]
async fn numberless_events_of_the_home_numbers_conversations_reach_its_tokens() {
    use std::sync::Arc;
    use wa_broker::EventBus;
    use wa_store::Store;

    let dir = std::env::temp_dir().join(test_support::unique_name("numberless"));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("{ADMIN}\n{SALES} numbers={SECOND}\n{FRONT_DESK} numbers={PHONE_NUMBER_ID}\n"),
    )
    .unwrap();
    let store = wa_store_sqlite::SqliteStore::open(&dir.join("store.sqlite3")).unwrap();
    store.prepare().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let events = Arc::new(
        wa_broker_embedded::EmbeddedEvents::open(&dir.join("events.sqlite3"))
            .await
            .unwrap(),
    );
    events
        .append(&[numberless_status(&home_conversation(), "wamid.old")])
        .await
        .unwrap();
    assert_eq!(
        store.home_number(Some(PHONE_NUMBER_ID)).await.unwrap(),
        Some(PHONE_NUMBER_ID.to_owned())
    );

    let config = <api_gateway::Config as clap::Parser>::parse_from([
        "api-gateway".to_owned(),
        "--host=127.0.0.1".to_owned(),
        format!("--api-tokens-file={}", tokens.display()),
    ]);
    let mut state = api_gateway::ApiState::new(store, events.clone(), None);
    state.realtime = state
        .realtime
        .clone()
        .with_numbers(state.processor.numbers().clone());
    let access = api_gateway::Access::new(&config.api, &config.limits, &config.host).unwrap();
    // Ready once it follows the event log (the one check here).
    let following = state
        .realtime
        .readiness(Arc::new(|| Box::pin(async { Ok(()) })));
    let ops = wa_service::http::ops_routes(following);
    let api = api_gateway::api_router(state, ops, &config.api, &access).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(api.serve(listener, shutdown));
    test_support::wait_until("the api-gateway to follow the log", WAIT, || async {
        let ready = reqwest::get(format!("{url}/readyz")).await;
        ready.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let mut front_desk = SocketClient::connect_with(
        &url,
        "websocket",
        json!({"auth": {"token": FRONT_DESK, "lastSeq": 0}}),
    )
    .await;
    let mut sales = SocketClient::connect_with(
        &url,
        "websocket",
        json!({"auth": {"token": SALES, "lastSeq": 0}}),
    )
    .await;
    let (_, old) = front_desk.next_event(WAIT).await;
    assert_eq!(old["messageId"], "wamid.old", "replayed: the home number's");
    events
        .append(&[
            numberless_status(&sales_conversation(), "wamid.sales"),
            numberless_status(&home_conversation(), "wamid.new"),
        ])
        .await
        .unwrap();
    let (_, new) = front_desk.next_event(WAIT).await;
    assert_eq!(
        new["messageId"], "wamid.new",
        "live: the home number's only"
    );
    let (_, first) = sales.next_event(WAIT).await;
    assert_eq!(
        first["messageId"], "wamid.sales",
        "none of the home number's"
    );

    let response = reqwest::Client::new()
        .get(format!("{url}/api/events"))
        .bearer_auth(FRONT_DESK)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let listed: Vec<Value> = response.json().await.unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|e| e["data"]["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["wamid.old", "wamid.new"]);
    std::fs::remove_dir_all(&dir).ok();
}
