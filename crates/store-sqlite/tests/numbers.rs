//! Several business numbers on SQLite: a store written before numbers
//! existed migrates in place (ids unchanged) and is adopted by the home
//! number; two numbers' conversations are listed, counted and searched
//! apart; the home number is recorded once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use wa_core::domain::{Direction, Message, Page, Status};
use wa_core::numbers::{first_number, route};
use wa_core::plan::{Batch, plan_batch};
use wa_core::search::Query;
use wa_store::{SearchScope, Store};
use wa_store_sqlite::SqliteStore;

const HOME: &str = "106540352242922";
const HOME_DISPLAY: &str = "15550783881";
const SALES: &str = "106540352242923";
const SALES_DISPLAY: &str = "15550783882";

fn temp_store_path(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join(test_support::unique_name(name))
        .join("store.sqlite3")
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_754_400_000 + seconds, 0).unwrap()
}

/// A customer's text to a number (`None`: as stored before numbers).
fn inbound(
    id: &str,
    wa_id: &str,
    number: Option<(&str, &str)>,
    text: &str,
    seconds: i64,
) -> Message {
    Message {
        id: id.to_owned(),
        message_id: id.to_owned(),
        client_message_id: None,
        conversation_id: format!("conv_{wa_id}"),
        wa_id: wa_id.to_owned(),
        from: wa_id.to_owned(),
        to: number.map_or(String::new(), |(_, display)| display.to_owned()),
        timestamp: at(seconds),
        kind: "text".to_owned(),
        body: text.to_owned(),
        status: Status::Received,
        user_name: "Ravi".to_owned(),
        direction: Direction::Inbound,
        contact_name: Some("Ravi".to_owned()),
        phone_number_id: number.map(|(id, _)| id.to_owned()),
        business_number: number.map(|(_, display)| display.to_owned()),
        content: Some(serde_json::json!({"body": text})),
        context: None,
        referral: None,
        errors: None,
        status_timestamps: BTreeMap::from([("received".to_owned(), at(seconds))]),
        media_url: None,
    }
}

/// Stores webhook messages as the processor does: routed by the home
/// number (recorded by the first), numbers noted, planned and applied.
async fn store_messages(store: &SqliteStore, mut messages: Vec<Message>) {
    let home = store
        .home_number(first_number(&messages, &[]))
        .await
        .unwrap();
    route(&mut messages, &mut [], home.as_deref());
    let noted: Vec<(String, Option<String>)> = messages
        .iter()
        .filter_map(|m| Some((m.phone_number_id.clone()?, m.business_number.clone())))
        .collect();
    store.note_numbers(&noted).await.unwrap();
    let batch = Batch {
        messages,
        ..Batch::default()
    };
    let known = store.load(&batch.lookup()).await.unwrap();
    store.apply(&plan_batch(&batch, &known)).await.unwrap();
}

fn page(limit: i64) -> Page {
    Page {
        limit,
        before: None,
        before_id: None,
    }
}

fn only(number: &str) -> Vec<String> {
    vec![number.to_owned()]
}

async fn listed(store: &SqliteStore, limit: i64, numbers: Option<&[String]>) -> Vec<String> {
    store
        .conversations(page(limit), numbers)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.conversation_id)
        .collect()
}

async fn searched(store: &SqliteStore, q: &str, numbers: Option<Vec<String>>) -> Vec<String> {
    let scope = SearchScope {
        numbers,
        ..SearchScope::default()
    };
    store
        .search(&Query::parse(q).unwrap(), &scope, 50)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect()
}

async fn opened(path: &Path) -> SqliteStore {
    let store = SqliteStore::open(path).unwrap();
    store.prepare().await.unwrap();
    store
}

/// Two numbers, three customers: each number's conversations, stats,
/// unread counts and search hits are its own; a page over both numbers is
/// newest first and at most a page.
#[tokio::test]
async fn two_numbers_are_listed_counted_and_searched_apart() {
    let path = temp_store_path("numbers-two");
    let store = opened(&path).await;
    let home = Some((HOME, HOME_DISPLAY));
    let sales = Some((SALES, SALES_DISPLAY));
    store_messages(
        &store,
        vec![
            inbound("wamid.1", "4471", home, "where is my lamp", 1),
            inbound("wamid.2", "4471", sales, "price of the blue lamp", 2),
            inbound("wamid.3", "4472", sales, "and the red lamp", 3),
            inbound("wamid.4", "4473", home, "thanks", 4),
        ],
    )
    .await;
    assert_eq!(
        store.home_number(Some(SALES)).await.unwrap().as_deref(),
        Some(HOME)
    );

    let sales_ids = ["conv_4472_106540352242923", "conv_4471_106540352242923"];
    assert_eq!(listed(&store, 10, Some(&only(SALES))).await, sales_ids);
    assert_eq!(
        listed(&store, 10, Some(&only(HOME))).await,
        ["conv_4473", "conv_4471"]
    );
    let both = [HOME.to_owned(), SALES.to_owned(), HOME.to_owned()];
    assert_eq!(
        listed(&store, 3, Some(&both)).await,
        [
            "conv_4473",
            "conv_4472_106540352242923",
            "conv_4471_106540352242923"
        ]
    );
    assert_eq!(
        listed(&store, 3, Some(&both)).await,
        listed(&store, 3, None).await
    );
    assert!(listed(&store, 10, Some(&[])).await.is_empty());
    // The next page over both numbers meets the first.
    let last = store
        .conversations(page(2), Some(&both))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let next = Page {
        limit: 10,
        before: Some(last.last_timestamp),
        before_id: Some(last.last_message_id.clone()),
    };
    let rest: Vec<String> = store
        .conversations(next, Some(&both))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    assert_eq!(rest, ["conv_4471_106540352242923", "conv_4471"]);

    let summary = store
        .conversation("conv_4471_106540352242923")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.phone_number_id.as_deref(), Some(SALES));
    assert_eq!(summary.business_number.as_deref(), Some(SALES_DISPLAY));
    let message = store.message("wamid.2").await.unwrap().unwrap();
    assert_eq!(message.phone_number_id.as_deref(), Some(SALES));
    assert_eq!(message.business_number.as_deref(), Some(SALES_DISPLAY));

    let all = store.stats(None).await.unwrap();
    assert_eq!((all.total_messages, all.total_conversations), (4, 4));
    let of_sales = store.stats(Some(&only(SALES))).await.unwrap();
    assert_eq!(
        (of_sales.total_messages, of_sales.total_conversations),
        (2, 2)
    );
    assert_eq!(of_sales.status_breakdown["received"], 2);
    let of_home = store.stats(Some(&only(HOME))).await.unwrap();
    assert_eq!((of_home.total_messages, of_home.inbound), (2, 2));
    let of_both = store.stats(Some(&both)).await.unwrap();
    assert_eq!(
        (of_both.total_messages, of_both.total_conversations),
        (4, 4)
    );
    let of_none = store.stats(Some(&only("999"))).await.unwrap();
    assert_eq!(
        (of_none.total_messages, of_none.total_conversations),
        (0, 0)
    );

    let numbers: Vec<(String, Option<String>, i64, i64)> = store
        .numbers()
        .await
        .unwrap()
        .into_iter()
        .map(|n| {
            (
                n.phone_number_id,
                n.business_number,
                n.conversations,
                n.unread_count,
            )
        })
        .collect();
    assert_eq!(
        numbers,
        [
            (HOME.to_owned(), Some(HOME_DISPLAY.to_owned()), 2, 2),
            (SALES.to_owned(), Some(SALES_DISPLAY.to_owned()), 2, 2)
        ]
    );
    // A webhook without a display number keeps the one recorded.
    store
        .note_numbers(&[
            (SALES.to_owned(), None),
            (SALES.to_owned(), Some(String::new())),
        ])
        .await
        .unwrap();
    let numbers = store.numbers().await.unwrap();
    assert_eq!(numbers[1].business_number.as_deref(), Some(SALES_DISPLAY));

    assert_eq!(
        searched(&store, "lamp", Some(only(HOME))).await,
        ["wamid.1"]
    );
    assert_eq!(
        searched(&store, "lamp", Some(only(SALES))).await,
        ["wamid.3", "wamid.2"]
    );
    assert_eq!(
        searched(
            &store,
            "lamp",
            Some(vec![SALES.to_owned(), HOME.to_owned()])
        )
        .await,
        ["wamid.3", "wamid.2", "wamid.1"]
    );
    assert!(searched(&store, "lamp", Some(Vec::new())).await.is_empty());
    assert_eq!(searched(&store, "lamp", None).await.len(), 3);
    assert_counters_agree(&path);
}

/// Of concurrent claims with different candidates, one is recorded and
/// every caller gets it; later candidates change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_number_is_claimed_once() {
    let store = Arc::new(opened(&temp_store_path("numbers-home")).await);
    assert_eq!(store.home_number(None).await.unwrap(), None);
    let claims = futures::future::join_all((0..16).map(|n| {
        let store = store.clone();
        tokio::spawn(async move { store.home_number(Some(&format!("90{n}"))).await.unwrap() })
    }))
    .await;
    let claims: Vec<Option<String>> = claims.into_iter().map(Result::unwrap).collect();
    assert!(claims[0].is_some());
    assert!(claims.iter().all(|c| *c == claims[0]), "{claims:?}");
    assert_eq!(store.home_number(Some("1")).await.unwrap(), claims[0]);
    assert_eq!(store.home_number(None).await.unwrap(), claims[0]);
}

/// The schema of version 3 (before numbers), as that version created it.
const V3_SCHEMA: &str = "
    CREATE TABLE messages (
        id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, ts INTEGER NOT NULL,
        direction TEXT NOT NULL, status TEXT NOT NULL, status_rank INTEGER NOT NULL,
        contact_name TEXT, doc TEXT NOT NULL, message_id TEXT);
    CREATE INDEX messages_unread ON messages (conversation_id, direction, status);
    CREATE UNIQUE INDEX messages_by_message_id ON messages (message_id);
    CREATE INDEX messages_by_conversation_v3 ON messages (conversation_id, ts DESC, message_id DESC);
    CREATE TABLE summaries (
        id TEXT PRIMARY KEY, sort_key TEXT NOT NULL, last_message_id TEXT NOT NULL,
        last_status_rank INTEGER NOT NULL, name_key TEXT NOT NULL, user_name TEXT NOT NULL,
        last_body TEXT NOT NULL, last_ts INTEGER NOT NULL, last_status TEXT NOT NULL,
        last_direction TEXT NOT NULL, participants TEXT NOT NULL, message_count INTEGER NOT NULL,
        unread_count INTEGER NOT NULL, last_inbound_ts INTEGER);
    CREATE INDEX summaries_by_sort_key ON summaries (sort_key);
    CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
    CREATE TABLE pending_statuses (
        key TEXT PRIMARY KEY, message_id TEXT NOT NULL, doc TEXT NOT NULL, parked_at INTEGER NOT NULL);
    CREATE TABLE webhook_payloads (id TEXT PRIMARY KEY, body BLOB NOT NULL, received_at INTEGER NOT NULL);
    CREATE TABLE rejected_items (
        id TEXT PRIMARY KEY, payload_id TEXT NOT NULL, path TEXT NOT NULL, reason TEXT NOT NULL,
        item TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE TABLE outbox (id TEXT PRIMARY KEY, n INTEGER NOT NULL, event TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE TABLE sends (
        id TEXT PRIMARY KEY, due INTEGER NOT NULL, doc TEXT NOT NULL,
        conversation_id TEXT NOT NULL DEFAULT '', ord INTEGER NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, at INTEGER NOT NULL);
    PRAGMA user_version = 3;";

/// Old messages and conversations: more than one adoption step's worth
/// of each (a step is 1,000 rows), and one whose conversation id names no customer (it can
/// get no number and must not stop adoption).
const OLD_MESSAGES: i64 = 2_345;
const CUSTOMERS: i64 = 1_100;

/// Writes a version-3 store with data, as that version left it.
fn write_v3_store(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut db = rusqlite::Connection::open(path).unwrap();
    let t = db.transaction().unwrap();
    t.execute_batch(V3_SCHEMA).unwrap();
    let mut unread = 0;
    for n in 0..OLD_MESSAGES {
        let wa_id = format!("447{}", n % CUSTOMERS);
        let mut m = inbound(
            &format!("wamid.old{n:05}"),
            &wa_id,
            None,
            &format!("old question q{n:05}"),
            n,
        );
        if n == OLD_MESSAGES - 1 {
            m.conversation_id = "legacy".to_owned();
        }
        unread += 1;
        t.execute(
            "INSERT INTO messages (id, conversation_id, ts, direction, status, status_rank, doc, message_id)
             VALUES (?1, ?2, ?3, 'inbound', 'received', 0, ?4, ?1)",
            rusqlite::params![m.id, m.conversation_id, m.timestamp.timestamp_millis(), serde_json::to_string(&m).unwrap()],
        )
        .unwrap();
    }
    for c in 0..CUSTOMERS {
        let id = format!("conv_447{c}");
        let count = (OLD_MESSAGES - 1 - c).div_euclid(CUSTOMERS) + 1;
        t.execute(
            "INSERT INTO summaries VALUES (?1, ?2, 'wamid.x', 0, ?2, 'Ravi', 'old', ?3, 'received',
                'inbound', '[]', ?4, ?4, ?3)",
            rusqlite::params![
                id,
                format!("{:015}|{id}", c),
                at(c).timestamp_millis(),
                count
            ],
        )
        .unwrap();
    }
    for (name, n) in [
        ("conversations", CUSTOMERS),
        ("messages", OLD_MESSAGES),
        ("inbound", OLD_MESSAGES),
        ("unread", unread),
        ("status.received", OLD_MESSAGES),
        ("rejected", 1),
    ] {
        t.execute(
            "INSERT INTO counters (name, n) VALUES (?1, ?2)",
            rusqlite::params![name, n],
        )
        .unwrap();
    }
    let send = serde_json::json!({"id": "local.1", "conversationId": "conv_4470",
        "request": {"to": "4470"}, "due": "2025-08-05T13:20:00Z", "attempts": 0});
    t.execute(
        "INSERT INTO sends (id, due, doc, conversation_id, ord) VALUES ('local.1', 0, ?1, 'conv_4470', 0)",
        [send.to_string()],
    )
    .unwrap();
    t.commit().unwrap();
}

fn summary_rows(path: &Path) -> Vec<(i64, String, i64)> {
    let db = rusqlite::Connection::open(path).unwrap();
    db.prepare("SELECT rowid, id, message_count FROM summaries ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// A version-3 store with data: opened, it migrates in place (ids,
/// counters and conversations unchanged); adopted, everything of it gets
/// the default number, in more than one step, and is listed, counted and
/// searched as that number's; new webhooks of the number join its
/// conversations, another number's get their own.
#[tokio::test]
async fn an_old_store_migrates_in_place_and_is_adopted_by_the_home_number() {
    let path = temp_store_path("numbers-v3");
    write_v3_store(&path);
    let rows_before = summary_rows(&path);
    let store = opened(&path).await;
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    assert_eq!(
        summary_rows(&path),
        rows_before,
        "summaries kept as they were"
    );
    // Nothing tagged yet: no number counts any.
    assert_counters_agree(&path);
    let before = store.stats(None).await.unwrap();
    assert_eq!(
        (before.total_messages, before.total_conversations),
        (OLD_MESSAGES, CUSTOMERS)
    );
    let listed_before = listed(&store, 2_000, None).await;
    assert_eq!(listed_before.len(), 1_100);
    assert_eq!(listed_before[..2], ["conv_4471099", "conv_4471098"]);
    assert!(
        store
            .conversation("conv_4470")
            .await
            .unwrap()
            .unwrap()
            .phone_number_id
            .is_none()
    );
    assert_eq!(store.home_number(None).await.unwrap(), None);
    // Opening again changes nothing (the migration is done once).
    drop(store);
    let store = opened(&path).await;

    // No number on any stored message: the default becomes home.
    assert_eq!(
        store.adopt_numbers(Some(HOME)).await.unwrap().as_deref(),
        Some(HOME)
    );
    assert_eq!(
        store.home_number(Some(SALES)).await.unwrap().as_deref(),
        Some(HOME)
    );
    // Again, with another default: the recorded home stays.
    assert_eq!(
        store.adopt_numbers(Some(SALES)).await.unwrap().as_deref(),
        Some(HOME)
    );

    assert_eq!(summary_rows(&path), rows_before, "ids and counts unchanged");
    assert_counters_agree(&path);
    assert_eq!(listed(&store, 2_000, None).await, listed_before);
    assert_eq!(
        listed(&store, 2_000, Some(&only(HOME))).await,
        listed_before
    );
    assert!(listed(&store, 10, Some(&only(SALES))).await.is_empty());
    for c in 0..CUSTOMERS {
        let id = format!("conv_447{c}");
        let summary = store.conversation(&id).await.unwrap().unwrap();
        assert_eq!(summary.phone_number_id.as_deref(), Some(HOME));
        let messages = store.messages(&id, page(2_000)).await.unwrap();
        assert!(!messages.is_empty());
        assert!(
            messages
                .iter()
                .all(|m| m.phone_number_id.as_deref() == Some(HOME))
        );
    }
    let legacy = store.message("wamid.old02344").await.unwrap().unwrap();
    assert_eq!(legacy.phone_number_id, None, "no customer, no number");
    let first = store.message("wamid.old00000").await.unwrap().unwrap();
    assert_eq!(first.conversation_id, "conv_4470");

    let of_home = store.stats(Some(&only(HOME))).await.unwrap();
    assert_eq!(
        (
            of_home.total_messages,
            of_home.total_conversations,
            of_home.rejected_items
        ),
        (OLD_MESSAGES, CUSTOMERS, 1)
    );
    let of_sales = store.stats(Some(&only(SALES))).await.unwrap();
    assert_eq!(
        (of_sales.total_messages, of_sales.total_conversations),
        (0, 0)
    );
    let numbers = store.numbers().await.unwrap();
    assert_eq!(numbers.len(), 1);
    assert_eq!(
        (
            numbers[0].phone_number_id.as_str(),
            numbers[0].conversations,
            numbers[0].unread_count
        ),
        (HOME, CUSTOMERS, OLD_MESSAGES)
    );

    // Old messages are found as the home number's, from the first step's
    // and the last step's rows alike.
    assert_eq!(
        searched(&store, "question q00007", Some(only(HOME))).await,
        ["wamid.old00007"]
    );
    assert_eq!(
        searched(&store, "question q02300", Some(only(HOME))).await,
        ["wamid.old02300"]
    );
    assert!(
        searched(&store, "question q00007", Some(only(SALES)))
            .await
            .is_empty()
    );

    let sends = store.due_sends(Utc::now(), 10).await.unwrap();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].phone_number_id.as_deref(), Some(HOME));

    // New webhooks: the home number's join the old conversation.
    store_messages(
        &store,
        vec![
            inbound(
                "wamid.new1",
                "4470",
                Some((HOME, HOME_DISPLAY)),
                "a new question",
                9_000,
            ),
            inbound(
                "wamid.new2",
                "4470",
                Some((SALES, SALES_DISPLAY)),
                "a sales question",
                9_001,
            ),
        ],
    )
    .await;
    let old = store.conversation("conv_4470").await.unwrap().unwrap();
    assert_eq!(old.message_count, rows_before[0].2 + 1);
    assert_eq!(
        listed(&store, 10, Some(&only(SALES))).await,
        ["conv_4470_106540352242923"]
    );
    let of_home = store.stats(Some(&only(HOME))).await.unwrap();
    assert_eq!(of_home.total_messages, OLD_MESSAGES + 1);
    let all = store.stats(None).await.unwrap();
    assert_eq!(
        (all.total_messages, all.total_conversations),
        (OLD_MESSAGES + 2, CUSTOMERS + 1)
    );
    assert_counters_agree(&path);
    let numbers = store.numbers().await.unwrap();
    assert_eq!(
        numbers
            .iter()
            .map(|n| (n.phone_number_id.as_str(), n.conversations))
            .collect::<Vec<_>>(),
        [(HOME, CUSTOMERS), (SALES, 1)]
    );
}

/// With no default, the home number is the one found on a stored message.
#[tokio::test]
async fn without_a_default_the_number_of_a_stored_message_is_home() {
    let store = opened(&temp_store_path("numbers-found")).await;
    store_messages(&store, vec![inbound("wamid.a", "4470", None, "old", 1)]).await;
    // A message with a number, stored without recording a home number.
    let path_free = vec![inbound(
        "wamid.b",
        "4471",
        Some((SALES, SALES_DISPLAY)),
        "new",
        2,
    )];
    let batch = Batch {
        messages: path_free,
        ..Batch::default()
    };
    let known = store.load(&batch.lookup()).await.unwrap();
    store.apply(&plan_batch(&batch, &known)).await.unwrap();
    assert_eq!(
        store.adopt_numbers(None).await.unwrap().as_deref(),
        Some(SALES)
    );
    let adopted = store.conversation("conv_4470").await.unwrap().unwrap();
    assert_eq!(adopted.phone_number_id.as_deref(), Some(SALES));
}

/// The counters of summaries equal a count of the summaries: the total
/// of all of them, and each number's of those tagged with it.
fn assert_counters_agree(path: &Path) {
    let db = rusqlite::Connection::open(path).unwrap();
    let pairs = |sql: &str| -> BTreeMap<String, i64> {
        db.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let counted =
        pairs("SELECT number, n FROM number_counters WHERE name = 'conversations' AND n <> 0");
    let summaries = pairs(
        "SELECT phone_number_id, COUNT(*) FROM summaries
         WHERE phone_number_id IS NOT NULL GROUP BY phone_number_id",
    );
    assert_eq!(counted, summaries, "conversations counted per number");
    let total: i64 = db
        .query_row(
            "SELECT COALESCE((SELECT n FROM counters WHERE name = 'conversations'), 0)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let all: i64 = db
        .query_row("SELECT COUNT(*) FROM summaries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, all, "conversations counted in all");
}

/// A media message of a customer to a number: `kind` with a media object.
fn media(id: &str, wa_id: &str, number: (&str, &str), kind: &str, media_id: &str) -> Message {
    let mut m = inbound(id, wa_id, Some(number), "", 10);
    m.kind = kind.to_owned();
    m.content = Some(serde_json::json!({"id": media_id, "mime_type": "image/jpeg"}));
    m
}

/// The media of a message is found by its id, with the index; other ids
/// and what is not a media object's are not.
#[tokio::test]
async fn a_media_id_names_its_conversation() {
    let path = temp_store_path("numbers-media");
    let store = opened(&path).await;
    let mut text = inbound("wamid.t", "4473", Some((HOME, HOME_DISPLAY)), "hello", 1);
    // A text whose content happens to have an id: no media object.
    text.content = Some(serde_json::json!({"body": "hello", "id": "media.text"}));
    store_messages(
        &store,
        vec![
            media(
                "wamid.i",
                "4471",
                (HOME, HOME_DISPLAY),
                "image",
                "media.image",
            ),
            media(
                "wamid.d",
                "4472",
                (SALES, SALES_DISPLAY),
                "document",
                "media.doc",
            ),
            text,
        ],
    )
    .await;
    assert_eq!(
        store
            .media_conversation("media.image")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_4471")
    );
    assert_eq!(
        store
            .media_conversation("media.doc")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_4472_106540352242923")
    );
    assert_eq!(store.media_conversation("media.text").await.unwrap(), None);
    assert_eq!(store.media_conversation("media.none").await.unwrap(), None);
    assert_eq!(store.media_conversation("").await.unwrap(), None);

    let db = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = db
        .prepare(
            "EXPLAIN QUERY PLAN SELECT conversation_id FROM messages WHERE media_id = ?1
             ORDER BY rowid LIMIT 1",
        )
        .unwrap()
        .query_map(["media.image"], |r| r.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        plan.iter().any(|step| step.contains("messages_by_media")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

/// Media messages written straight into the store, beyond one fill step.
const OLD_IMAGES: i64 = 1_500;

/// Turns a store of this version back into one of version 4: no media
/// ids, no per-number counts of conversations.
fn downgrade_to_v4(path: &Path) {
    let mut db = rusqlite::Connection::open(path).unwrap();
    let t = db.transaction().unwrap();
    t.execute_batch(
        "DROP INDEX messages_by_media;
         ALTER TABLE messages DROP COLUMN media_id;
         DELETE FROM number_counters WHERE name = 'conversations';
         PRAGMA user_version = 4;",
    )
    .unwrap();
    // Images of the home number's first customer, as version 4 stored them.
    for n in 0..OLD_IMAGES {
        let m = media(
            &format!("wamid.img{n:05}"),
            "4471",
            (HOME, HOME_DISPLAY),
            if n % 2 == 0 { "image" } else { "sticker" },
            &format!("media.old{n:05}"),
        );
        t.execute(
            "INSERT INTO messages (id, conversation_id, ts, direction, status, status_rank, doc,
                message_id, phone_number_id)
             VALUES (?1, ?2, ?3, 'inbound', 'received', 0, ?4, ?1, ?5)",
            rusqlite::params![
                m.id,
                m.conversation_id,
                m.timestamp.timestamp_millis(),
                serde_json::to_string(&m).unwrap(),
                HOME
            ],
        )
        .unwrap();
    }
    t.commit().unwrap();
}

/// A version-4 store: opened, its messages get their media ids (in more
/// than one step) and its numbers their counts of conversations, once.
#[tokio::test]
async fn a_v4_store_gets_media_ids_and_counters() {
    let path = temp_store_path("numbers-v4");
    let store = opened(&path).await;
    store_messages(
        &store,
        vec![
            media(
                "wamid.i",
                "4471",
                (HOME, HOME_DISPLAY),
                "image",
                "media.image",
            ),
            inbound("wamid.2", "4472", Some((HOME, HOME_DISPLAY)), "hi", 2),
            media(
                "wamid.d",
                "4471",
                (SALES, SALES_DISPLAY),
                "document",
                "media.doc",
            ),
            inbound("wamid.4", "4473", Some((SALES, SALES_DISPLAY)), "hi", 4),
            inbound("wamid.5", "4474", Some((SALES, SALES_DISPLAY)), "hi", 5),
        ],
    )
    .await;
    drop(store);
    downgrade_to_v4(&path);

    let store = opened(&path).await;
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    assert_counters_agree(&path);
    let numbers: Vec<(String, i64)> = store
        .numbers()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.phone_number_id, n.conversations))
        .collect();
    assert_eq!(numbers, [(HOME.to_owned(), 2), (SALES.to_owned(), 3)]);
    let of_sales = store.stats(Some(&only(SALES))).await.unwrap();
    assert_eq!(of_sales.total_conversations, 3);
    let of_both = store
        .stats(Some(&[HOME.to_owned(), SALES.to_owned()]))
        .await
        .unwrap();
    assert_eq!(of_both.total_conversations, 5);

    assert_eq!(
        store
            .media_conversation("media.image")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_4471")
    );
    assert_eq!(
        store
            .media_conversation("media.doc")
            .await
            .unwrap()
            .as_deref(),
        Some("conv_4471_106540352242923")
    );
    for n in [0, 999, 1_000, OLD_IMAGES - 1] {
        assert_eq!(
            store
                .media_conversation(&format!("media.old{n:05}"))
                .await
                .unwrap()
                .as_deref(),
            Some("conv_4471"),
            "media.old{n:05}"
        );
    }
    let db = rusqlite::Connection::open(&path).unwrap();
    let filled: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE media_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(filled, OLD_IMAGES + 2);
    let pending: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM settings WHERE name LIKE 'media%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0, "the fill is done");

    // Opening again counts nothing twice.
    drop(store);
    let store = opened(&path).await;
    assert_counters_agree(&path);
    assert_eq!(store.numbers().await.unwrap()[1].conversations, 3);
}
