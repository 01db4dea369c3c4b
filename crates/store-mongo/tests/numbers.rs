//! Several business numbers on MongoDB: data stored before numbers existed
//! is adopted in place, numbers are listed and counted apart (their stats
//! documents created on first use), and the home number is claimed once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use wa_core::domain::{Direction, Message, Page, QueuedSend, Status};
use wa_core::numbers::{BusinessNumber, route};
use wa_core::plan::{self, Batch};
use wa_core::search::Query;
use wa_store::{ErrorKind, SearchScope, Store};
use wa_store_mongo::{CONVERSATIONS, MESSAGES, MongoStore, NUMBERS, SENDS, STATS};

const HOME: &str = "111";
const HOME_DISPLAY: &str = "15550001111";
const OTHER: &str = "222";
const OTHER_DISPLAY: &str = "15550002222";

async fn store(uri: &str) -> MongoStore {
    let store = MongoStore::connect(uri, "tests").await.unwrap();
    store.prepare().await.unwrap();
    store
}

fn standalone() -> String {
    test_support::mongodb_uri(&test_support::unique_name("numbers"))
}

fn replica_set() -> String {
    test_support::Mongo::ReplicaSet.uri(&test_support::unique_name("numbers"))
}

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap()
}

/// A customer's unread message to `number` (`None`: as stored before
/// numbers existed), routed as the processor routes it.
fn inbound(id: &str, wa_id: &str, number: Option<(&str, &str)>, second: i64) -> Message {
    let mut message = Message::outbound_text(
        id.to_owned(),
        wa_id,
        wa_id.to_owned(),
        format!("hello parcel {id}"),
        at(second),
    );
    message.direction = Direction::Inbound;
    message.status = Status::Received;
    message.user_name = format!("Customer {wa_id}");
    message.status_timestamps = BTreeMap::new();
    message.phone_number_id = number.map(|(n, _)| n.to_owned());
    message.business_number = number.map(|(_, d)| d.to_owned());
    message
}

/// Stores messages the way the processor does: routed to their number's
/// conversation, planned from what is stored, replanned on a conflict.
async fn store_messages(store: &MongoStore, home: Option<&str>, mut messages: Vec<Message>) {
    route(&mut messages, &mut [], home);
    let batch = Batch {
        messages,
        ..Batch::default()
    };
    for _ in 0..8 {
        let known = store.load(&batch.lookup()).await.unwrap();
        match store.apply(&plan::plan_batch(&batch, &known)).await {
            Ok(()) => return,
            Err(e) if e.kind == ErrorKind::Conflict => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the batch kept meeting conflicts");
}

fn page(limit: i64) -> Page {
    Page {
        limit,
        before: None,
        before_id: None,
    }
}

fn ids(list: &[wa_core::domain::Conversation]) -> Vec<&str> {
    list.iter().map(|c| c.conversation_id.as_str()).collect()
}

fn only(number: &str) -> Vec<String> {
    vec![number.to_owned()]
}

async fn untagged(store: &MongoStore, collection: &str) -> u64 {
    store
        .database()
        .collection::<Document>(collection)
        .count_documents(doc! {"phoneNumberId": {"$exists": false}})
        .await
        .unwrap()
}

/// Runs each scenario (taking the server's URI) on the standalone server
/// and on the replica set.
macro_rules! on_both_servers {
    ($($scenario:ident),* $(,)?) => {
        mod standalone {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::standalone()).await } )*
        }
        mod in_a_replica_set {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::replica_set()).await } )*
        }
    };
}

on_both_servers!(
    two_numbers_are_listed_and_counted_apart,
    the_home_number_is_claimed_once,
    a_media_objects_conversation_is_found_by_its_id,
    counters_follow_created_summaries,
);

#[tokio::test]
async fn an_old_database_adopts_the_home_number_in_place() {
    let store = store(&standalone()).await;
    // What a version without numbers stored: no number anywhere, ids
    // `conv_<wa_id>`, counters in the original stats documents.
    store_messages(
        &store,
        None,
        vec![
            inbound("wamid.a1", "4477", None, 1),
            inbound("wamid.a2", "4477", None, 2),
            inbound("wamid.b1", "4488", None, 3),
        ],
    )
    .await;
    let reply = Message::outbound_text(
        "local.r1".to_owned(),
        "4477",
        HOME_DISPLAY.to_owned(),
        "on its way".to_owned(),
        at(4),
    );
    let send = QueuedSend {
        id: reply.id.clone(),
        conversation_id: reply.conversation_id.clone(),
        phone_number_id: None,
        request: serde_json::json!({"to": "4477"}),
        due: at(4),
        queued_at: Some(at(4)),
        attempts: 0,
        wamid: None,
        last_error: None,
        held: false,
    };
    let lookup = Batch {
        messages: vec![reply.clone()],
        ..Batch::default()
    }
    .lookup();
    let known = store.load(&lookup).await.unwrap();
    store
        .apply(&plan::plan_send(&send, &reply, &known))
        .await
        .unwrap();
    for collection in [CONVERSATIONS, MESSAGES, SENDS] {
        assert!(untagged(&store, collection).await > 0, "{collection}");
    }
    let before = store.conversations(page(10), None).await.unwrap();
    let stats_before = store.stats(None).await.unwrap();
    assert_eq!(stats_before.total_messages, 4);
    assert_eq!(store.home_number(None).await.unwrap(), None);

    store
        .note_numbers(&[(HOME.to_owned(), Some(HOME_DISPLAY.to_owned()))])
        .await
        .unwrap();
    assert_eq!(
        store.adopt_numbers(Some(HOME)).await.unwrap().as_deref(),
        Some(HOME)
    );

    for collection in [CONVERSATIONS, MESSAGES, SENDS] {
        assert_eq!(untagged(&store, collection).await, 0, "{collection}");
    }
    assert_counters_agree(&store).await;
    let adopted = store
        .conversations(page(10), Some(&only(HOME)))
        .await
        .unwrap();
    assert_eq!(ids(&adopted), ["conv_4477", "conv_4488"]);
    assert_eq!(ids(&adopted), ids(&before));
    for conversation in &adopted {
        assert_eq!(conversation.phone_number_id.as_deref(), Some(HOME));
        assert_eq!(conversation.business_number.as_deref(), Some(HOME_DISPLAY));
    }
    let messages = store.messages("conv_4477", page(10)).await.unwrap();
    assert_eq!(messages.len(), 3);
    assert!(
        messages
            .iter()
            .all(|m| m.phone_number_id.as_deref() == Some(HOME))
    );
    let queued = store.first_send("conv_4477").await.unwrap().unwrap();
    assert_eq!(queued.phone_number_id.as_deref(), Some(HOME));
    assert_eq!(store.due_sends(at(5), 10).await.unwrap(), [queued]);

    // The original stats documents are the home number's.
    let mut home_stats = store.stats(Some(&only(HOME))).await.unwrap();
    assert_eq!(home_stats.total_messages, 4);
    assert_eq!(home_stats.total_conversations, 2);
    home_stats.phone_number_id = None;
    assert_eq!(home_stats, stats_before);
    let nothing = store.stats(Some(&only(OTHER))).await.unwrap();
    assert_eq!(
        (nothing.total_messages, nothing.total_conversations),
        (0, 0)
    );
    assert_eq!(
        store.numbers().await.unwrap(),
        [BusinessNumber {
            phone_number_id: HOME.to_owned(),
            business_number: Some(HOME_DISPLAY.to_owned()),
            conversations: 2,
            unread_count: 3,
        }]
    );

    // Again, with another default: nothing changes, home stays.
    assert_eq!(
        store.adopt_numbers(Some(OTHER)).await.unwrap().as_deref(),
        Some(HOME)
    );
    assert_eq!(
        ids(&store.conversations(page(10), None).await.unwrap()),
        ids(&before)
    );
    // A store starting afresh reads the recorded home.
    let restarted = MongoStore::from_client(store.database().client(), store.database().name());
    assert_eq!(
        restarted.adopt_numbers(None).await.unwrap().as_deref(),
        Some(HOME)
    );
}

/// Without a default, the number found on a stored message becomes home.
#[tokio::test]
async fn without_a_default_the_number_of_a_stored_message_is_home() {
    let store = store(&standalone()).await;
    store_messages(&store, None, vec![inbound("wamid.a1", "4477", None, 1)]).await;
    // Stored by a version that tagged messages but not summaries.
    store
        .database()
        .collection::<Document>(MESSAGES)
        .update_many(doc! {}, doc! {"$set": {"phoneNumberId": OTHER}})
        .await
        .unwrap();
    assert_eq!(
        store.adopt_numbers(None).await.unwrap().as_deref(),
        Some(OTHER)
    );
    let listed = store
        .conversations(page(10), Some(&only(OTHER)))
        .await
        .unwrap();
    assert_eq!(ids(&listed), ["conv_4477"]);
    assert_eq!(listed[0].business_number, None);
}

async fn two_numbers_are_listed_and_counted_apart(uri: String) {
    let store = store(&uri).await;
    let home = store.home_number(Some(HOME)).await.unwrap();
    assert_eq!(home.as_deref(), Some(HOME));
    store
        .note_numbers(&[
            (HOME.to_owned(), Some(HOME_DISPLAY.to_owned())),
            (OTHER.to_owned(), None),
        ])
        .await
        .unwrap();
    // A later webhook brings the other number's display number.
    store
        .note_numbers(&[(OTHER.to_owned(), Some(OTHER_DISPLAY.to_owned()))])
        .await
        .unwrap();
    let home_number = Some((HOME, HOME_DISPLAY));
    let other_number = Some((OTHER, OTHER_DISPLAY));
    store_messages(
        &store,
        home.as_deref(),
        vec![
            inbound("wamid.h1", "4477", home_number, 1),
            inbound("wamid.o1", "4477", other_number, 2),
            inbound("wamid.o2", "4488", other_number, 3),
            inbound("wamid.o3", "4488", other_number, 4),
        ],
    )
    .await;

    let all = store.conversations(page(10), None).await.unwrap();
    assert_eq!(ids(&all), ["conv_4488_222", "conv_4477_222", "conv_4477"]);
    let homes = store
        .conversations(page(10), Some(&only(HOME)))
        .await
        .unwrap();
    assert_eq!(ids(&homes), ["conv_4477"]);
    assert_eq!(homes[0].business_number.as_deref(), Some(HOME_DISPLAY));
    let others = store
        .conversations(page(10), Some(&only(OTHER)))
        .await
        .unwrap();
    assert_eq!(ids(&others), ["conv_4488_222", "conv_4477_222"]);
    assert!(
        others
            .iter()
            .all(|c| c.phone_number_id.as_deref() == Some(OTHER)
                && c.business_number.as_deref() == Some(OTHER_DISPLAY))
    );
    let both = [HOME.to_owned(), OTHER.to_owned()];
    let newest = store.conversations(page(2), Some(&both)).await.unwrap();
    assert_eq!(ids(&newest), ["conv_4488_222", "conv_4477_222"]);
    let next = Page {
        limit: 2,
        before: Some(newest[1].last_timestamp),
        before_id: Some(newest[1].last_message_id.clone()),
    };
    let rest = store.conversations(next, Some(&both)).await.unwrap();
    assert_eq!(ids(&rest), ["conv_4477"]);
    assert!(
        store
            .conversations(page(10), Some(&[]))
            .await
            .unwrap()
            .is_empty()
    );

    let message = store.message("wamid.o1").await.unwrap().unwrap();
    assert_eq!(message.phone_number_id.as_deref(), Some(OTHER));
    assert_eq!(message.business_number.as_deref(), Some(OTHER_DISPLAY));

    // Each number's counters in its own stats documents.
    let other_documents = store
        .database()
        .collection::<Document>(STATS)
        .count_documents(doc! {"_id": {"$regex": "^shard-[0-9]+-222$"}})
        .await
        .unwrap();
    assert!(other_documents >= 1);
    let home_stats = store.stats(Some(&only(HOME))).await.unwrap();
    assert_eq!(
        (home_stats.total_messages, home_stats.total_conversations),
        (1, 1)
    );
    let other_stats = store.stats(Some(&only(OTHER))).await.unwrap();
    assert_eq!(
        (other_stats.total_messages, other_stats.total_conversations),
        (3, 2)
    );
    let total = store.stats(None).await.unwrap();
    assert_eq!((total.total_messages, total.total_conversations), (4, 3));
    let both_stats = store.stats(Some(&both)).await.unwrap();
    assert_eq!(both_stats, total);

    assert_eq!(
        store.numbers().await.unwrap(),
        [
            BusinessNumber {
                phone_number_id: HOME.to_owned(),
                business_number: Some(HOME_DISPLAY.to_owned()),
                conversations: 1,
                unread_count: 1,
            },
            BusinessNumber {
                phone_number_id: OTHER.to_owned(),
                business_number: Some(OTHER_DISPLAY.to_owned()),
                conversations: 2,
                unread_count: 3,
            },
        ]
    );

    // Search narrowed to a number.
    let query = Query::parse("parcel").unwrap();
    let scope = SearchScope {
        numbers: Some(only(HOME)),
        ..SearchScope::default()
    };
    let hits = store.search(&query, &scope, 10).await.unwrap();
    let hit_ids: Vec<&str> = hits
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(hit_ids, ["wamid.h1"]);

    // Reading another number's conversation moves its counters; the same
    // plan applied again is refused by the guards and counts nothing twice.
    let lookup = wa_core::plan::Lookup::Unread {
        conversation_id: "conv_4488_222".to_owned(),
    };
    let known = store.load(&lookup).await.unwrap();
    let read = plan::plan_mark_read("conv_4488_222", at(10), &known);
    store.apply(&read).await.unwrap();
    let again = store.apply(&read).await;
    assert_eq!(again.map_err(|e| e.kind), Err(ErrorKind::Conflict));
    let numbers = store.numbers().await.unwrap();
    let unread: Vec<i64> = numbers.iter().map(|n| n.unread_count).collect();
    assert_eq!(unread, [1, 1]);
    let other_stats = store.stats(Some(&only(OTHER))).await.unwrap();
    assert_eq!(other_stats.status_breakdown.get("read"), Some(&2));
    assert_eq!(other_stats.total_messages, 3);
}

async fn the_home_number_is_claimed_once(uri: String) {
    store(&uri).await;
    // Separate stores (as separate processes): none knows it yet.
    let claims = (0..8).map(|n| {
        let uri = uri.clone();
        tokio::spawn(async move {
            let store = MongoStore::connect(&uri, "tests").await.unwrap();
            store.home_number(Some(&format!("90{n}"))).await.unwrap()
        })
    });
    let homes: Vec<Option<String>> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winner = homes[0].clone().unwrap();
    assert!(homes.iter().all(|h| h.as_deref() == Some(winner.as_str())));
    let later = store(&uri).await;
    assert_eq!(
        later.home_number(Some("999")).await.unwrap(),
        Some(winner.clone())
    );
    assert_eq!(
        later.adopt_numbers(Some("999")).await.unwrap(),
        Some(winner)
    );
}

/// Without transactions a change set can stop between steps: the retry
/// finds another number's counters by their journal and counts nothing
/// twice.
#[tokio::test]
async fn a_change_set_stopped_half_way_counts_another_numbers_message_once() {
    let store = store(&standalone()).await;
    store.home_number(Some(HOME)).await.unwrap();
    let mut messages = vec![inbound("wamid.o1", "4477", Some((OTHER, OTHER_DISPLAY)), 1)];
    route(&mut messages, &mut [], Some(HOME));
    let batch = Batch {
        messages,
        ..Batch::default()
    };
    // Stored, summary and stats counted; not settled.
    let known = store.load(&batch.lookup()).await.unwrap();
    store.stop_next_change_set_after(2);
    let stopped = store.apply(&plan::plan_batch(&batch, &known)).await;
    assert_eq!(stopped.map_err(|e| e.kind), Err(ErrorKind::Transient));
    let known = store.load(&batch.lookup()).await.unwrap();
    assert!(
        known.stats_journals.keys().any(|key| key.number == OTHER),
        "{:?}",
        known.stats_journals
    );
    store
        .apply(&plan::plan_batch(&batch, &known))
        .await
        .unwrap();
    let stats = store.stats(Some(&only(OTHER))).await.unwrap();
    assert_eq!((stats.total_messages, stats.total_conversations), (1, 1));
    let conversation = store.conversation("conv_4477_222").await.unwrap().unwrap();
    assert_eq!(
        (conversation.message_count, conversation.unread_count),
        (1, 1)
    );
    assert_eq!(store.stats(None).await.unwrap().total_messages, 1);
    assert_counters_agree(&store).await;
}

/// A customer's message of type `kind` whose content names `media_id`.
fn with_content(mut message: Message, kind: &str, media_id: &str) -> Message {
    message.kind = kind.to_owned();
    message.content = Some(serde_json::json!({"id": media_id, "mime_type": "image/jpeg"}));
    message
}

async fn a_media_objects_conversation_is_found_by_its_id(uri: String) {
    let store = store(&uri).await;
    store.home_number(Some(HOME)).await.unwrap();
    let other_number = Some((OTHER, OTHER_DISPLAY));
    store_messages(
        &store,
        Some(HOME),
        vec![
            with_content(inbound("wamid.i1", "4477", other_number, 1), "image", "m1"),
            with_content(
                inbound("wamid.d1", "4488", Some((HOME, HOME_DISPLAY)), 2),
                "document",
                "m2",
            ),
            // An id in the content of a message that is no media object.
            with_content(inbound("wamid.b1", "4499", other_number, 3), "button", "m3"),
            inbound("wamid.t1", "4499", other_number, 4),
        ],
    )
    .await;
    assert_eq!(
        store.media_conversation("m1").await.unwrap().as_deref(),
        Some("conv_4477_222")
    );
    assert_eq!(
        store.media_conversation("m2").await.unwrap().as_deref(),
        Some("conv_4488")
    );
    assert_eq!(store.media_conversation("m3").await.unwrap(), None);
    assert_eq!(store.media_conversation("unknown").await.unwrap(), None);
    // Served by an index of the media ids.
    let indexes: Vec<Document> = store
        .database()
        .collection::<Document>(MESSAGES)
        .list_indexes()
        .await
        .unwrap()
        .map_ok(|index| index.keys)
        .try_collect()
        .await
        .unwrap();
    assert!(
        indexes.iter().any(|keys| keys == &doc! {"content.id": 1}),
        "{indexes:?}"
    );
}

/// Each number's kept count of conversations against its summaries
/// counted (what the counter stands for).
async fn assert_counters_agree(store: &MongoStore) {
    let database = store.database();
    let numbers: Vec<Document> = database
        .collection::<Document>(NUMBERS)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut counted = BTreeMap::new();
    for number in &numbers {
        let id = number.get_str("_id").unwrap().to_owned();
        let kept = number.get("conversations").map_or(0, |n| match n {
            Bson::Int32(n) => i64::from(*n),
            Bson::Int64(n) => *n,
            other => panic!("not a count: {other}"),
        });
        counted.insert(id, kept);
    }
    let summaries: Vec<Document> = database
        .collection::<Document>(CONVERSATIONS)
        .find(doc! {"phoneNumberId": {"$exists": true}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut expected: BTreeMap<String, i64> = numbers
        .iter()
        .map(|n| (n.get_str("_id").unwrap().to_owned(), 0))
        .collect();
    for summary in &summaries {
        *expected
            .entry(summary.get_str("phoneNumberId").unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(counted, expected);
}

fn conversations_of(numbers: &[BusinessNumber]) -> Vec<(&str, i64)> {
    numbers
        .iter()
        .map(|n| (n.phone_number_id.as_str(), n.conversations))
        .collect()
}

async fn counters_follow_created_summaries(uri: String) {
    let store = store(&uri).await;
    store.home_number(Some(HOME)).await.unwrap();
    store
        .note_numbers(&[(HOME.to_owned(), None), (OTHER.to_owned(), None)])
        .await
        .unwrap();
    let home_number = Some((HOME, HOME_DISPLAY));
    let other_number = Some((OTHER, OTHER_DISPLAY));
    store_messages(
        &store,
        Some(HOME),
        vec![
            inbound("wamid.h1", "4477", home_number, 1),
            inbound("wamid.o1", "4477", other_number, 2),
            inbound("wamid.o2", "4488", other_number, 3),
        ],
    )
    .await;
    // More messages of known conversations count no conversation.
    store_messages(
        &store,
        Some(HOME),
        vec![
            inbound("wamid.h2", "4477", home_number, 4),
            inbound("wamid.o3", "4488", other_number, 5),
            inbound("wamid.o4", "4499", other_number, 6),
        ],
    )
    .await;
    assert_counters_agree(&store).await;
    assert_eq!(
        conversations_of(&store.numbers().await.unwrap()),
        [(HOME, 1), (OTHER, 3)]
    );
    assert_eq!(
        store
            .stats(Some(&only(OTHER)))
            .await
            .unwrap()
            .total_conversations,
        3
    );

    // Two writers planning the same new conversation: one creates it, the
    // other's creation is refused and replanned; counted once.
    let mut messages = vec![inbound("wamid.n1", "4455", other_number, 7)];
    route(&mut messages, &mut [], Some(HOME));
    let first = Batch {
        messages,
        ..Batch::default()
    };
    let mut messages = vec![inbound("wamid.n2", "4455", other_number, 8)];
    route(&mut messages, &mut [], Some(HOME));
    let second = Batch {
        messages,
        ..Batch::default()
    };
    let known_first = store.load(&first.lookup()).await.unwrap();
    let known_second = store.load(&second.lookup()).await.unwrap();
    store
        .apply(&plan::plan_batch(&first, &known_first))
        .await
        .unwrap();
    let refused = store.apply(&plan::plan_batch(&second, &known_second)).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Conflict));
    let known_second = store.load(&second.lookup()).await.unwrap();
    store
        .apply(&plan::plan_batch(&second, &known_second))
        .await
        .unwrap();
    assert_counters_agree(&store).await;
    assert_eq!(
        conversations_of(&store.numbers().await.unwrap()),
        [(HOME, 1), (OTHER, 4)]
    );
}

/// Without transactions: wherever a change set creating conversations
/// stops, its retry counts each conversation once.
#[tokio::test]
async fn a_change_set_stopped_anywhere_counts_its_conversations_once() {
    let store = store(&standalone()).await;
    store.home_number(Some(HOME)).await.unwrap();
    store
        .note_numbers(&[(OTHER.to_owned(), Some(OTHER_DISPLAY.to_owned()))])
        .await
        .unwrap();
    // Steps: record, summaries (and their count), settle, cleanup.
    for steps in 0..4 {
        let second = i64::try_from(steps).unwrap();
        let mut messages = vec![
            inbound(
                &format!("wamid.o{steps}"),
                &format!("44{steps}"),
                Some((OTHER, OTHER_DISPLAY)),
                second,
            ),
            inbound(
                &format!("wamid.h{steps}"),
                &format!("44{steps}"),
                Some((HOME, HOME_DISPLAY)),
                second,
            ),
        ];
        route(&mut messages, &mut [], Some(HOME));
        let batch = Batch {
            messages,
            ..Batch::default()
        };
        let known = store.load(&batch.lookup()).await.unwrap();
        store.stop_next_change_set_after(steps);
        let stopped = store.apply(&plan::plan_batch(&batch, &known)).await;
        assert_eq!(stopped.map_err(|e| e.kind), Err(ErrorKind::Transient));
        let known = store.load(&batch.lookup()).await.unwrap();
        store
            .apply(&plan::plan_batch(&batch, &known))
            .await
            .unwrap();
        assert_counters_agree(&store).await;
        let expected = i64::try_from(steps + 1).unwrap();
        assert_eq!(
            conversations_of(&store.numbers().await.unwrap()),
            [(HOME, expected), (OTHER, expected)],
            "stopped after {steps} steps"
        );
    }
}

/// Summaries adopted by the home number are counted for it, once, and a
/// database of schema 3 gets its counters by migration (once).
#[tokio::test]
async fn adoption_and_migration_count_the_conversations_stored_before() {
    let uri = standalone();
    let store = store(&uri).await;
    store_messages(
        &store,
        None,
        vec![
            inbound("wamid.a1", "4477", None, 1),
            inbound("wamid.b1", "4488", None, 2),
        ],
    )
    .await;
    store.adopt_numbers(Some(HOME)).await.unwrap();
    store.adopt_numbers(Some(HOME)).await.unwrap();
    assert_counters_agree(&store).await;
    assert_eq!(
        conversations_of(&store.numbers().await.unwrap()),
        [(HOME, 2)]
    );
    store
        .note_numbers(&[(OTHER.to_owned(), None)])
        .await
        .unwrap();
    store_messages(
        &store,
        Some(HOME),
        vec![
            inbound("wamid.a2", "4477", Some((HOME, HOME_DISPLAY)), 3),
            inbound("wamid.o1", "4477", Some((OTHER, OTHER_DISPLAY)), 4),
        ],
    )
    .await;
    let counted = store.numbers().await.unwrap();
    assert_eq!(conversations_of(&counted), [(HOME, 2), (OTHER, 1)]);
    let stats = store.stats(None).await.unwrap();

    // As a version without counters left it.
    let database = store.database();
    database
        .collection::<Document>(NUMBERS)
        .update_many(doc! {}, doc! {"$unset": {"conversations": ""}})
        .await
        .unwrap();
    database
        .collection::<Document>("meta")
        .update_one(doc! {"_id": "schema"}, doc! {"$set": {"version": 3}})
        .await
        .unwrap();
    let old = MongoStore::from_client(database.client(), database.name());
    assert_eq!(
        conversations_of(&old.numbers().await.unwrap()),
        [(HOME, 0), (OTHER, 0)]
    );
    // Refused until migrated.
    let refused = old.apply(&wa_core::plan::ChangeSet::default()).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Transient));
    old.prepare().await.unwrap();
    assert_counters_agree(&old).await;
    assert_eq!(old.numbers().await.unwrap(), counted);
    assert_eq!(old.stats(None).await.unwrap(), stats);
    // Again (another processor starting): nothing changes.
    old.prepare().await.unwrap();
    let again = MongoStore::from_client(database.client(), database.name());
    again.prepare().await.unwrap();
    assert_eq!(again.numbers().await.unwrap(), counted);
    for number in [HOME, OTHER] {
        let one = again.stats(Some(&only(number))).await.unwrap();
        let expected = counted
            .iter()
            .find(|n| n.phone_number_id == number)
            .unwrap()
            .conversations;
        assert_eq!(one.total_conversations, expected);
    }
}
