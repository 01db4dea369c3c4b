//! Several business numbers, on every store (the in-memory reference,
//! SQLite, MongoDB standalone and as a replica set): a customer writing to
//! two numbers has two conversations; the first number keeps the original
//! ids; lists, stats, numbers and search narrow by number; statuses land on
//! their number's message; data stored before numbers existed is adopted
//! by the default number in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use wa_core::domain::{Event, Page};
use wa_engine::processing::Processor;
use wa_store::memory::MemoryStore;
use wa_store::{SearchScope, Store};

mod common;
use common::items;

/// The first number a webhook came for (home), and a second one.
const SUPPORT: &str = "106540352242922";
const SUPPORT_DISPLAY: &str = "15550783881";
const SALES: &str = "106540352242923";
const SALES_DISPLAY: &str = "15550783882";
const CUSTOMER: &str = "919937320320";

async fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

async fn mongo() -> Arc<dyn Store> {
    common::mongo(test_support::Mongo::Default, "numbers").await
}

async fn mongo_replica_set() -> Arc<dyn Store> {
    common::mongo(test_support::Mongo::ReplicaSet, "numbers").await
}

async fn sqlite() -> Arc<dyn Store> {
    common::sqlite("numbers").await
}

/// A webhook `value` for a number (`None`: no metadata, as data stored
/// before numbers existed looks).
fn envelope(number: Option<(&str, &str)>, value: serde_json::Value) -> Vec<u8> {
    let mut value = value;
    if let Some((id, display)) = number {
        value["metadata"] =
            serde_json::json!({"display_phone_number": display, "phone_number_id": id});
    }
    value["messaging_product"] = "whatsapp".into();
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
        "changes": [{"field": "messages", "value": value}]}]})
    .to_string()
    .into_bytes()
}

/// The customer's text `id` to a number at `seconds`.
fn said(number: Option<(&str, &str)>, id: &str, text: &str, seconds: i64) -> Vec<u8> {
    envelope(
        number,
        serde_json::json!({
            "contacts": [{"wa_id": CUSTOMER, "profile": {"name": "Ravi"}}],
            "messages": [{"from": CUSTOMER, "id": id, "timestamp": (1_754_400_000 + seconds).to_string(),
                "type": "text", "text": {"body": text}}]}),
    )
}

/// The business's own message `id` to the customer, sent from a number
/// (as WhatsApp echoes it), at `seconds`.
fn answered(number: (&str, &str), id: &str, text: &str, seconds: i64) -> Vec<u8> {
    envelope(
        Some(number),
        serde_json::json!({
            "contacts": [{"wa_id": CUSTOMER}],
            "messages": [{"from": number.1, "id": id, "timestamp": (1_754_400_000 + seconds).to_string(),
                "type": "text", "text": {"body": text}}]}),
    )
}

fn status(number: (&str, &str), id: &str, status: &str, seconds: i64) -> Vec<u8> {
    envelope(
        Some(number),
        serde_json::json!({"statuses": [{"id": id, "status": status,
            "timestamp": (1_754_400_000 + seconds).to_string(), "recipient_id": CUSTOMER}]}),
    )
}

async fn feed(processor: &Processor, bodies: &[Vec<u8>]) -> Vec<Event> {
    let mut events = Vec::new();
    for body in bodies {
        events.extend(
            processor
                .process(items(std::slice::from_ref(body)))
                .await
                .unwrap(),
        );
    }
    events
}

fn page() -> Page {
    Page {
        limit: 100,
        before: None,
        before_id: None,
    }
}

fn only(number: &str) -> Vec<String> {
    vec![number.to_owned()]
}

async fn listed(store: &Arc<dyn Store>, numbers: Option<&[String]>) -> Vec<String> {
    let mut ids: Vec<String> = store
        .conversations(page(), numbers)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    ids.sort();
    ids
}

const HOME_CONVERSATION: &str = "conv_919937320320";
const SALES_CONVERSATION: &str = "conv_919937320320_106540352242923";

/// One customer, two numbers: two conversations, each with its number,
/// listed, counted and searched apart.
async fn a_customer_writing_to_two_numbers_has_two_conversations(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let support = (SUPPORT, SUPPORT_DISPLAY);
    let sales = (SALES, SALES_DISPLAY);
    let events = feed(
        &processor,
        &[
            said(Some(support), "wamid.a1", "my order is late", 1),
            said(Some(sales), "wamid.b1", "price of the blue lamp", 2),
            said(Some(sales), "wamid.b2", "and the red lamp", 3),
        ],
    )
    .await;
    assert_eq!(
        store.home_number(None).await.unwrap().as_deref(),
        Some(SUPPORT)
    );
    let conversations: Vec<&str> = events.iter().map(Event::conversation_id).collect();
    assert_eq!(
        conversations,
        [HOME_CONVERSATION, SALES_CONVERSATION, SALES_CONVERSATION]
    );

    assert_eq!(
        listed(&store, None).await,
        [HOME_CONVERSATION, SALES_CONVERSATION]
    );
    assert_eq!(
        listed(&store, Some(&only(SUPPORT))).await,
        [HOME_CONVERSATION]
    );
    assert_eq!(
        listed(&store, Some(&only(SALES))).await,
        [SALES_CONVERSATION]
    );
    assert!(listed(&store, Some(&only("999"))).await.is_empty());
    assert_eq!(
        listed(&store, Some(&[SUPPORT.to_owned(), SALES.to_owned()])).await,
        [HOME_CONVERSATION, SALES_CONVERSATION]
    );

    let sales_summary = store
        .conversation(SALES_CONVERSATION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sales_summary.phone_number_id.as_deref(), Some(SALES));
    assert_eq!(
        sales_summary.business_number.as_deref(),
        Some(SALES_DISPLAY)
    );
    assert_eq!(
        (sales_summary.message_count, sales_summary.unread_count),
        (2, 2)
    );
    let home_summary = store
        .conversation(HOME_CONVERSATION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(home_summary.phone_number_id.as_deref(), Some(SUPPORT));
    assert_eq!(
        (home_summary.message_count, home_summary.unread_count),
        (1, 1)
    );

    let messages = store.messages(SALES_CONVERSATION, page()).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert!(
        messages
            .iter()
            .all(|m| m.phone_number_id.as_deref() == Some(SALES)
                && m.business_number.as_deref() == Some(SALES_DISPLAY))
    );

    let all = store.stats(None).await.unwrap();
    assert_eq!((all.total_messages, all.total_conversations), (3, 2));
    let of_sales = store.stats(Some(&only(SALES))).await.unwrap();
    assert_eq!(
        (of_sales.total_messages, of_sales.total_conversations),
        (2, 1)
    );
    assert_eq!(of_sales.status_breakdown["received"], 2);
    let of_support = store.stats(Some(&only(SUPPORT))).await.unwrap();
    assert_eq!(
        (of_support.total_messages, of_support.total_conversations),
        (1, 1)
    );

    let mut numbers = store.numbers().await.unwrap();
    numbers.sort_by(|a, b| a.phone_number_id.cmp(&b.phone_number_id));
    let summary: Vec<(&str, Option<&str>, i64, i64)> = numbers
        .iter()
        .map(|n| {
            (
                n.phone_number_id.as_str(),
                n.business_number.as_deref(),
                n.conversations,
                n.unread_count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (SUPPORT, Some(SUPPORT_DISPLAY), 1, 1),
            (SALES, Some(SALES_DISPLAY), 1, 2)
        ]
    );

    let query = wa_core::search::Query::parse("lamp").unwrap();
    let scope = SearchScope {
        numbers: Some(only(SUPPORT)),
        ..SearchScope::default()
    };
    assert!(
        store
            .search(&query, &scope, 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let scope = SearchScope {
        numbers: Some(only(SALES)),
        ..SearchScope::default()
    };
    assert_eq!(
        store
            .search(&query, &scope, 10)
            .await
            .unwrap()
            .messages
            .len(),
        2
    );

    // Reading one number's conversation leaves the other's unread.
    processor
        .mark_read(SALES_CONVERSATION, chrono::Utc::now())
        .await
        .unwrap();
    let numbers = store.numbers().await.unwrap();
    let unread = |id: &str| {
        numbers
            .iter()
            .find(|n| n.phone_number_id == id)
            .unwrap()
            .unread_count
    };
    assert_eq!((unread(SUPPORT), unread(SALES)), (1, 0));
}

/// The business's messages from each number, and their statuses: each
/// status lands on its number's message and conversation.
async fn statuses_land_on_their_numbers_message(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let support = (SUPPORT, SUPPORT_DISPLAY);
    let sales = (SALES, SALES_DISPLAY);
    feed(
        &processor,
        &[
            said(Some(support), "wamid.a1", "hello support", 1),
            answered(sales, "wamid.out.sales", "hello from sales", 2),
            answered(support, "wamid.out.support", "hello from support", 3),
        ],
    )
    .await;
    let events = feed(
        &processor,
        &[
            status(sales, "wamid.out.sales", "read", 10),
            status(support, "wamid.out.support", "delivered", 11),
        ],
    )
    .await;
    let updates: Vec<(String, String, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StatusUpdate(s) => Some((
                s.message_id.clone(),
                s.status.to_string(),
                s.conversation_id.clone(),
            )),
            _ => None,
        })
        .collect();
    assert!(updates.contains(&(
        "wamid.out.sales".to_owned(),
        "read".to_owned(),
        SALES_CONVERSATION.to_owned()
    )));
    assert!(updates.contains(&(
        "wamid.out.support".to_owned(),
        "delivered".to_owned(),
        HOME_CONVERSATION.to_owned()
    )));
    let sales_message = store.message("wamid.out.sales").await.unwrap().unwrap();
    assert_eq!(sales_message.status, "read");
    assert_eq!(sales_message.conversation_id, SALES_CONVERSATION);
    let support_message = store.message("wamid.out.support").await.unwrap().unwrap();
    assert_eq!(support_message.status, "delivered");
    let summary = store
        .conversation(SALES_CONVERSATION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.last_message_status, "read");
    let of_sales = store.stats(Some(&only(SALES))).await.unwrap();
    assert_eq!(of_sales.status_breakdown["read"], 1);
    assert_eq!(of_sales.outbound, 1);
}

/// Concurrent claims of the home number agree on one.
async fn the_home_number_is_recorded_once(store: Arc<dyn Store>) {
    let claims = futures::future::join_all((0..8).map(|n| {
        let store = store.clone();
        async move { store.home_number(Some(&format!("{n}"))).await.unwrap() }
    }))
    .await;
    let first = claims[0].clone();
    assert!(first.is_some());
    assert!(claims.iter().all(|c| *c == first), "{claims:?}");
    assert_eq!(store.home_number(Some("99")).await.unwrap(), first);
}

/// Data stored before numbers existed (webhooks without metadata) keeps
/// its ids and is adopted by the default number; new webhooks for that
/// number join the same conversation, another number's get their own.
async fn data_from_before_numbers_is_adopted_by_the_default_number(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    feed(
        &processor,
        &[
            said(None, "wamid.old1", "an old question", 1),
            said(None, "wamid.old2", "another old question", 2),
        ],
    )
    .await;
    assert_eq!(listed(&store, None).await, [HOME_CONVERSATION]);
    let before = store
        .conversation(HOME_CONVERSATION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.phone_number_id, None);

    let home = store.adopt_numbers(Some(SUPPORT)).await.unwrap();
    assert_eq!(home.as_deref(), Some(SUPPORT));
    // Again: nothing changes.
    assert_eq!(
        store.adopt_numbers(Some(SALES)).await.unwrap().as_deref(),
        Some(SUPPORT)
    );
    let after = store
        .conversation(HOME_CONVERSATION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.phone_number_id.as_deref(), Some(SUPPORT));
    assert_eq!(after.message_count, 2);
    assert!(
        store
            .messages(HOME_CONVERSATION, page())
            .await
            .unwrap()
            .iter()
            .all(|m| m.phone_number_id.as_deref() == Some(SUPPORT))
    );
    assert_eq!(
        listed(&store, Some(&only(SUPPORT))).await,
        [HOME_CONVERSATION]
    );
    let of_support = store.stats(Some(&only(SUPPORT))).await.unwrap();
    assert_eq!(
        (of_support.total_messages, of_support.total_conversations),
        (2, 1)
    );

    // A fresh processor (a restart) routes new webhooks by the home number.
    let processor = Processor::new(store.clone());
    feed(
        &processor,
        &[
            said(
                Some((SUPPORT, SUPPORT_DISPLAY)),
                "wamid.new1",
                "a new question",
                3,
            ),
            said(
                Some((SALES, SALES_DISPLAY)),
                "wamid.new2",
                "a sales question",
                4,
            ),
        ],
    )
    .await;
    assert_eq!(
        listed(&store, None).await,
        [HOME_CONVERSATION, SALES_CONVERSATION]
    );
    let home = store
        .conversation(HOME_CONVERSATION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((home.message_count, home.unread_count), (3, 3));
    let of_support = store.stats(Some(&only(SUPPORT))).await.unwrap();
    assert_eq!(of_support.total_messages, 3);
    let numbers = store.numbers().await.unwrap();
    let support = numbers
        .iter()
        .find(|n| n.phone_number_id == SUPPORT)
        .unwrap();
    assert_eq!((support.conversations, support.unread_count), (1, 3));
}

/// A media object is found by its id, with the conversation of its
/// message (what the API checks a scoped token against).
async fn a_media_is_found_with_its_conversation(store: Arc<dyn Store>) {
    let processor = Processor::new(store.clone());
    let image = |number: (&str, &str), id: &str, media: &str, seconds: i64| {
        envelope(
            Some(number),
            serde_json::json!({
                "contacts": [{"wa_id": CUSTOMER, "profile": {"name": "Ravi"}}],
                "messages": [{"from": CUSTOMER, "id": id, "timestamp": (1_754_400_000 + seconds).to_string(),
                    "type": "image", "image": {"id": media, "mime_type": "image/jpeg"}}]}),
        )
    };
    feed(
        &processor,
        &[
            image((SUPPORT, SUPPORT_DISPLAY), "wamid.i1", "1111", 1),
            image((SALES, SALES_DISPLAY), "wamid.i2", "2222", 2),
            said(Some((SALES, SALES_DISPLAY)), "wamid.t1", "no media here", 3),
        ],
    )
    .await;
    assert_eq!(
        store.media_conversation("1111").await.unwrap().as_deref(),
        Some(HOME_CONVERSATION)
    );
    assert_eq!(
        store.media_conversation("2222").await.unwrap().as_deref(),
        Some(SALES_CONVERSATION)
    );
    assert_eq!(store.media_conversation("3333").await.unwrap(), None);
}

macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod in_memory {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::memory().await).await } )*
        }
        mod on_sqlite {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::sqlite().await).await } )*
        }
        mod on_mongodb {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::mongo().await).await } )*
        }
        mod on_mongodb_replica_set {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::mongo_replica_set().await).await } )*
        }
    };
}

on_every_store!(
    a_customer_writing_to_two_numbers_has_two_conversations,
    statuses_land_on_their_numbers_message,
    the_home_number_is_recorded_once,
    data_from_before_numbers_is_adopted_by_the_default_number,
    a_media_is_found_with_its_conversation,
);
