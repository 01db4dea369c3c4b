//! The embedded queue's promises: durable on enqueue, at-least-once
//! delivery across a crash, retries, dead letters, de-duplication.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use wa_broker::{BatchLimits, Ingest, Queue};
use wa_broker_embedded::EmbeddedQueue;

const TEN: BatchLimits = BatchLimits {
    count: 10,
    bytes: 1 << 20,
};

fn path() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(test_support::unique_name("queue"))
        .join("queue.sqlite3")
}

#[tokio::test]
async fn what_was_not_acknowledged_is_delivered_again_after_a_crash() {
    let path = path();
    let queue = EmbeddedQueue::open(&path).await.unwrap();
    for id in ["a", "b", "c"] {
        let enqueued = queue
            .enqueue(Ingest::Webhook, id, Bytes::from(format!("body {id}")))
            .await
            .unwrap();
        assert!(!enqueued.duplicate);
    }
    assert!(
        queue
            .enqueue(Ingest::Webhook, "a", Bytes::from("again"))
            .await
            .unwrap()
            .duplicate
    );

    let batch = queue.next_batch(TEN).await.unwrap();
    let ids: Vec<&str> = batch.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(batch.iter().all(|d| d.attempt == 1));
    batch[0].ack().await.unwrap();
    batch[1].retry_after(Duration::ZERO).await.unwrap();
    // "c" is in flight when the process dies.
    drop(batch);
    drop(queue);

    let queue = EmbeddedQueue::open(&path).await.unwrap();
    let batch = queue.next_batch(TEN).await.unwrap();
    let again: Vec<(&str, i64)> = batch.iter().map(|d| (d.id.as_str(), d.attempt)).collect();
    assert_eq!(
        again,
        [("b", 2), ("c", 2)],
        "unacknowledged payloads come back, acknowledged ones don't"
    );
    assert_eq!(batch[1].body, Bytes::from("body c"));
    batch[0].dead_letter("cannot be processed").await.unwrap();
    batch[1].ack().await.unwrap();
    assert_eq!(
        queue.depth().await.unwrap(),
        (0, 1),
        "queue empty, one dead letter"
    );
}

#[tokio::test]
async fn a_retry_waits_for_its_delay_and_sends_keep_their_kind() {
    let queue = EmbeddedQueue::open(&path()).await.unwrap();
    queue
        .enqueue(Ingest::Send, "m", Bytes::from("{}"))
        .await
        .unwrap();
    let batch = queue.next_batch(TEN).await.unwrap();
    assert_eq!(batch[0].kind, Ingest::Send);
    batch[0]
        .retry_after(Duration::from_secs(3600))
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), queue.next_batch(TEN)).await;
    assert!(waited.is_err(), "not delivered before its retry time");
}

#[tokio::test]
async fn a_batch_holds_at_most_its_bytes_and_a_large_payload_comes_alone() {
    let queue = EmbeddedQueue::open(&path()).await.unwrap();
    for (id, size) in [("a", 10), ("b", 10), ("c", 10), ("big", 100), ("d", 1)] {
        queue
            .enqueue(Ingest::Webhook, id, Bytes::from(vec![b'x'; size]))
            .await
            .unwrap();
    }
    let limits = BatchLimits {
        count: 10,
        bytes: 25,
    };
    let mut batches = Vec::new();
    for _ in 0..3 {
        let batch = queue.next_batch(limits).await.unwrap();
        batches.push(batch.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
        for delivery in &batch {
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(batches, [vec!["a", "b"], vec!["c"], vec!["big"]]);
    let rest = queue.next_batch(limits).await.unwrap();
    assert_eq!(rest[0].id, "d");
}

/// Makes `id`'s first enqueue look `age` old, as if that time had passed.
fn first_enqueued_ago(path: &std::path::Path, id: &str, age: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let at = (now - age).as_millis() as i64;
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let changed = db
        .execute(
            "UPDATE recent_ids SET enqueued_at = ?2 WHERE id = ?1",
            rusqlite::params![id, at],
        )
        .unwrap();
    assert_eq!(changed, 1, "{id} is remembered");
}

#[tokio::test]
async fn the_same_id_is_a_duplicate_for_ten_minutes_even_once_processed() {
    let path = path();
    let queue = EmbeddedQueue::open(&path).await.unwrap();
    let enqueue = |body: &'static str| queue.enqueue(Ingest::Webhook, "a", Bytes::from(body));
    assert!(!enqueue("body").await.unwrap().duplicate);
    let batch = queue.next_batch(TEN).await.unwrap();
    batch[0].ack().await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), (0, 0), "processed and gone");

    // Posted again a minute later, or nine, even after a restart: a duplicate, not queued.
    first_enqueued_ago(&path, "a", Duration::from_secs(60));
    assert!(enqueue("body").await.unwrap().duplicate);
    drop(queue);
    let queue = EmbeddedQueue::open(&path).await.unwrap();
    let enqueue = |body: &'static str| queue.enqueue(Ingest::Webhook, "a", Bytes::from(body));
    first_enqueued_ago(&path, "a", Duration::from_secs(9 * 60 + 50));
    assert!(enqueue("body").await.unwrap().duplicate);
    assert_eq!(queue.depth().await.unwrap(), (0, 0), "not queued again");

    // Ten minutes after its first enqueue it is new again, and counts from now.
    first_enqueued_ago(&path, "a", Duration::from_secs(10 * 60 + 1));
    assert!(!enqueue("body").await.unwrap().duplicate);
    let batch = queue.next_batch(TEN).await.unwrap();
    assert_eq!((batch[0].id.as_str(), batch[0].attempt), ("a", 1));
    batch[0].ack().await.unwrap();
    assert!(enqueue("body").await.unwrap().duplicate);
}

#[tokio::test]
async fn ids_older_than_the_window_are_forgotten() {
    let path = path();
    let queue = EmbeddedQueue::open(&path).await.unwrap();
    for id in ["old1", "old2", "recent"] {
        queue
            .enqueue(Ingest::Send, id, Bytes::from("{}"))
            .await
            .unwrap();
    }
    first_enqueued_ago(&path, "old1", Duration::from_secs(11 * 60));
    first_enqueued_ago(&path, "old2", Duration::from_secs(3600));
    queue
        .enqueue(Ingest::Send, "new", Bytes::from("{}"))
        .await
        .unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let mut remembered: Vec<String> = db
        .prepare("SELECT id FROM recent_ids")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    remembered.sort();
    assert_eq!(remembered, ["new", "recent"]);
}
