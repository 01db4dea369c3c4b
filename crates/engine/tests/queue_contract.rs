//! One contract suite for both queues (`wa_broker::Queue`): NATS JetStream
//! (the test nats-server) and the embedded queue (SQLite files in a
//! temporary directory) must keep the same promises, as the trait
//! documents them: durable enqueue, delivery in enqueue order within the
//! batch limits, at-least-once until settled (also across a crash),
//! retries, dead letters, one copy per id, any body size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use wa_broker::{BatchLimits, Delivery, Ingest, Queue};
use wa_broker_embedded::EmbeddedQueue;
use wa_broker_nats::NatsBroker;

/// NATS redelivers what is not acknowledged after this long.
const NATS_ACK_WAIT: Duration = Duration::from_secs(1);
/// Longest wait for something the queue must deliver.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Larger than the test nats-server's `max_payload` (8 MB, see
/// `scripts/servers.sh`): NATS passes it through its object store.
const LARGE: usize = 9 * 1024 * 1024;

const TEN: BatchLimits = BatchLimits {
    count: 10,
    bytes: 32 * 1024 * 1024,
};

/// A queue under test, and where its data lives, so that it can be opened
/// again as after a crash.
struct Subject {
    queue: Option<Box<dyn Queue>>,
    place: Place,
}

enum Place {
    Nats { namespace: String },
    Embedded { path: PathBuf },
}

impl Subject {
    fn queue(&self) -> &dyn Queue {
        self.queue.as_deref().expect("open")
    }

    async fn nats() -> Self {
        let namespace = test_support::unique_name("queue");
        let queue = Box::new(connect_nats(&namespace).await);
        Self {
            queue: Some(queue),
            place: Place::Nats { namespace },
        }
    }

    async fn embedded() -> Self {
        let path = std::env::temp_dir()
            .join(test_support::unique_name("queue"))
            .join("queue.sqlite3");
        let queue = Box::new(EmbeddedQueue::open(&path).await.unwrap());
        Self {
            queue: Some(queue),
            place: Place::Embedded { path },
        }
    }

    /// The process dies (nothing in hand is settled) and a new one opens
    /// the same queue.
    async fn crash_and_reopen(&mut self) {
        // The old one goes first, as a dead process's would.
        self.queue = None;
        self.queue = Some(match &self.place {
            Place::Nats { namespace } => Box::new(connect_nats(namespace).await),
            Place::Embedded { path } => Box::new(EmbeddedQueue::open(path).await.unwrap()),
        });
    }

    /// Lets `redelivered_after` pass for every delivery in hand: NATS's
    /// ack wait (1 s) passes by itself; the embedded queue's lease (a
    /// minute) is moved to the past in its file instead of waited for.
    fn let_redelivery_time_pass(&self) {
        if let Place::Embedded { path } = &self.place {
            let db = sqlite(path);
            db.execute("UPDATE queue SET leased_until = 0", []).unwrap();
        }
    }

    /// Every dead letter: `(reason, body)`, oldest first.
    async fn dead_letters(&self) -> Vec<(String, Bytes)> {
        match &self.place {
            Place::Embedded { path } => {
                let db = sqlite(path);
                let mut select = db
                    .prepare("SELECT reason, body FROM dead_letters ORDER BY seq")
                    .unwrap();
                select
                    .query_map([], |r| {
                        Ok((r.get(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?)))
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Place::Nats { namespace } => nats_dead_letters(namespace).await,
        }
    }

    /// Waits until the queue says it is ready (NATS connects in the
    /// background).
    async fn ready(&self) {
        test_support::wait_until("the queue to be ready", DELIVERY_TIMEOUT, || async {
            self.queue().ready().await.is_ok()
        })
        .await;
    }

    /// Whether an acknowledgement is confirmed by the broker before `ack`
    /// returns. NATS's is not for a body in the message (only for one by
    /// reference): an ack still in the client's buffer when the process
    /// dies is lost, and the payload is delivered once more.
    fn ack_survives_a_crash(&self) -> bool {
        matches!(self.place, Place::Embedded { .. })
    }

    async fn enqueue(&self, kind: Ingest, id: &str, body: impl Into<Bytes>) -> bool {
        self.queue()
            .enqueue(kind, id, body.into())
            .await
            .unwrap()
            .duplicate
    }

    /// The next batch, which must come within [`DELIVERY_TIMEOUT`].
    async fn next(&self, limits: BatchLimits) -> Vec<Delivery> {
        tokio::time::timeout(DELIVERY_TIMEOUT, self.queue().next_batch(limits))
            .await
            .expect("a batch within the timeout")
            .unwrap()
    }

    /// Asserts that nothing is delivered within `redelivered_after` and a
    /// second: only at the end of a test (a NATS pull given up here may
    /// still take a message, which then waits for its ack wait).
    async fn nothing_more(&self) {
        let wait = self.queue().redelivered_after().min(NATS_ACK_WAIT) + Duration::from_secs(1);
        let next = tokio::time::timeout(wait, self.queue().next_batch(TEN)).await;
        let ids: Option<Vec<String>> = next
            .ok()
            .map(|batch| batch.unwrap().iter().map(|d| d.id.clone()).collect());
        assert_eq!(ids, None, "nothing more is delivered");
    }
}

async fn connect_nats(namespace: &str) -> NatsBroker {
    NatsBroker::connect(
        &test_support::nats_url(),
        namespace,
        "queue-contract",
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .with_ack_wait(NATS_ACK_WAIT)
}

async fn nats_dead_letters(namespace: &str) -> Vec<(String, Bytes)> {
    use tokio::io::AsyncReadExt;
    let broker = connect_nats(namespace).await;
    let js = async_nats::jetstream::new(broker.client().clone());
    let names = broker.names();
    let Ok(mut stream) = js.get_stream(names.dead_letter_stream()).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut letters = Vec::new();
    for seq in 1..=last {
        let letter = stream.get_raw_message(seq).await.unwrap();
        let header = |h: &str| letter.headers.get(h).map(|v| v.as_str().to_owned());
        let reason = header("Dlq-Reason").expect("a dead letter says why");
        let body = match header(wa_broker_nats::BODY_REF) {
            None => letter.payload.clone(),
            Some(name) => {
                let mut body = Vec::new();
                js.get_object_store(names.dead_letter_bodies_bucket())
                    .await
                    .unwrap()
                    .get(&name)
                    .await
                    .unwrap()
                    .read_to_end(&mut body)
                    .await
                    .unwrap();
                Bytes::from(body)
            }
        };
        letters.push((reason, body));
    }
    letters
}

fn sqlite(path: &std::path::Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// Webhooks and sends in turn.
fn alternate(n: usize) -> Ingest {
    if n.is_multiple_of(2) {
        Ingest::Webhook
    } else {
        Ingest::Send
    }
}

fn ids(batch: &[Delivery]) -> Vec<&str> {
    batch.iter().map(|d| d.id.as_str()).collect()
}

fn attempts(batch: &[Delivery]) -> Vec<(&str, i64)> {
    batch.iter().map(|d| (d.id.as_str(), d.attempt)).collect()
}

async fn ack_all(batch: &[Delivery]) {
    for delivery in batch {
        delivery.ack().await.unwrap();
    }
}

/// A body whose every byte depends on its position and `seed`: a body cut,
/// shifted or mixed up with another is told apart.
fn patterned(size: usize, seed: u8) -> Bytes {
    (0..size)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

// --- the contract -------------------------------------------------------------

async fn delivers_what_was_enqueued_in_order_once_acknowledged(q: Subject) {
    q.ready().await;
    let before = Utc::now() - chrono::Duration::seconds(1);
    let kinds = [Ingest::Webhook, Ingest::Send, Ingest::Webhook];
    for (n, kind) in kinds.iter().enumerate() {
        let duplicate = q
            .enqueue(*kind, &format!("p{n}"), format!("body {n}"))
            .await;
        assert!(!duplicate, "a new id is not a duplicate");
    }
    let after = Utc::now() + chrono::Duration::seconds(1);

    let batch = q.next(TEN).await;
    assert_eq!(
        ids(&batch),
        ["p0", "p1", "p2"],
        "in enqueue order, in one batch"
    );
    for (n, delivery) in batch.iter().enumerate() {
        assert_eq!(delivery.kind, kinds[n], "{} keeps its kind", delivery.id);
        assert_eq!(delivery.body, Bytes::from(format!("body {n}")));
        assert_eq!(delivery.attempt, 1, "first delivery");
        assert!(
            (before..after).contains(&delivery.enqueued_at),
            "enqueued at {} (between {before} and {after})",
            delivery.enqueued_at
        );
    }
    ack_all(&batch).await;
    q.nothing_more().await;
}

async fn the_same_id_is_stored_once_even_once_processed(q: Subject) {
    assert!(!q.enqueue(Ingest::Webhook, "a", "first").await);
    assert!(
        q.enqueue(Ingest::Webhook, "a", "second").await,
        "the same id again is a duplicate"
    );
    let batch = q.next(TEN).await;
    assert_eq!(ids(&batch), ["a"]);
    assert_eq!(
        batch[0].body,
        Bytes::from("first"),
        "the first body is kept"
    );
    ack_all(&batch).await;

    assert!(
        q.enqueue(Ingest::Webhook, "a", "first").await,
        "processed meanwhile: still a duplicate within the window"
    );
    assert!(!q.enqueue(Ingest::Webhook, "b", "other").await);
    let batch = q.next(TEN).await;
    assert_eq!(ids(&batch), ["b"], "the duplicate was not queued again");
    ack_all(&batch).await;
    q.nothing_more().await;
}

async fn a_batch_holds_at_most_its_count(q: Subject) {
    let expected: Vec<String> = (0..20).map(|n| format!("p{n:02}")).collect();
    for (n, id) in expected.iter().enumerate() {
        let kind = alternate(n);
        q.enqueue(kind, id, format!("body {n}")).await;
    }
    let limits = BatchLimits {
        count: 7,
        bytes: 1 << 20,
    };
    let mut sizes = Vec::new();
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() {
        let batch = q.next(limits).await;
        sizes.push(batch.len());
        for delivery in &batch {
            let n: usize = delivery.id[1..].parse().unwrap();
            let kind = alternate(n);
            assert_eq!(delivery.kind, kind, "{} keeps its kind", delivery.id);
            delivered.push(delivery.id.clone());
        }
        ack_all(&batch).await;
    }
    assert_eq!(delivered, expected, "each once, in enqueue order");
    assert_eq!(sizes, [7, 7, 6], "full batches of what is waiting");
    q.nothing_more().await;
}

async fn a_batch_holds_at_most_its_bytes_and_a_larger_payload_comes_alone(q: Subject) {
    const KB: usize = 1024;
    let payloads = [
        ("a", 10 * KB),
        ("b", 10 * KB),
        ("c", 10 * KB),
        ("big", 100 * KB),
        ("d", KB),
    ];
    for (n, (id, size)) in payloads.iter().enumerate() {
        q.enqueue(Ingest::Webhook, id, patterned(*size, n as u8))
            .await;
    }
    let limits = BatchLimits {
        count: 10,
        bytes: 25 * KB,
    };
    let mut batches = Vec::new();
    while batches.iter().map(Vec::len).sum::<usize>() < payloads.len() {
        let batch = q.next(limits).await;
        let bytes: usize = batch.iter().map(|d| d.body.len()).sum();
        assert!(
            batch.len() == 1 || bytes <= limits.bytes,
            "{:?} holds {bytes} bytes, more than {}",
            ids(&batch),
            limits.bytes
        );
        for delivery in &batch {
            let n = payloads
                .iter()
                .position(|(id, _)| *id == delivery.id)
                .unwrap();
            assert!(
                delivery.body == patterned(payloads[n].1, n as u8),
                "{} whole",
                delivery.id
            );
        }
        batches.push(
            ids(&batch)
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>(),
        );
        ack_all(&batch).await;
    }
    assert_eq!(
        batches,
        [vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]],
        "as much as fits, in order; the large one alone"
    );
    q.nothing_more().await;
}

async fn what_is_not_acknowledged_is_delivered_again(q: Subject) {
    q.enqueue(Ingest::Webhook, "a", "body a").await;
    q.enqueue(Ingest::Send, "b", "body b").await;
    let batch = q.next(TEN).await;
    assert_eq!(attempts(&batch), [("a", 1), ("b", 1)]);
    batch[1].ack().await.unwrap();
    // "a" is dropped unsettled: the consumer went quiet on it.
    drop(batch);

    q.let_redelivery_time_pass();
    let again = q.next(TEN).await;
    assert_eq!(
        attempts(&again),
        [("a", 2)],
        "unsettled comes back; acknowledged doesn't"
    );
    assert_eq!(
        (again[0].kind, &again[0].body),
        (Ingest::Webhook, &Bytes::from("body a"))
    );
    ack_all(&again).await;
    q.nothing_more().await;
}

async fn what_is_not_acknowledged_is_delivered_again_after_a_crash(mut q: Subject) {
    for id in ["a", "b", "c"] {
        q.enqueue(Ingest::Webhook, id, format!("body {id}")).await;
    }
    let batch = q.next(TEN).await;
    assert_eq!(ids(&batch), ["a", "b", "c"]);
    batch[0].ack().await.unwrap();
    batch[1].retry_after(Duration::ZERO).await.unwrap();
    // "c" is in hand when the process dies.
    drop(batch);
    q.crash_and_reopen().await;

    q.let_redelivery_time_pass();
    let mut again = Vec::new();
    while !["b", "c"]
        .iter()
        .all(|id| again.iter().any(|d: &Delivery| d.id == *id))
    {
        again.extend(q.next(TEN).await);
    }
    again.sort_by(|x, y| x.id.cmp(&y.id));
    if !q.ack_survives_a_crash() && again.first().is_some_and(|d| d.id == "a") {
        // Its ack was lost with the process (see `ack_survives_a_crash`).
        again.remove(0).ack().await.unwrap();
    }
    assert_eq!(
        attempts(&again),
        [("b", 2), ("c", 2)],
        "unsettled payloads come back after a crash, acknowledged ones don't"
    );
    assert_eq!(again[1].body, Bytes::from("body c"));
    ack_all(&again).await;
    q.nothing_more().await;
}

async fn a_retry_comes_back_after_its_delay(q: Subject) {
    q.enqueue(Ingest::Send, "m", "body m").await;
    let batch = q.next(TEN).await;
    let delay = Duration::from_millis(1500);
    let asked = tokio::time::Instant::now();
    batch[0].retry_after(delay).await.unwrap();
    drop(batch);

    let again = q.next(TEN).await;
    let waited = asked.elapsed();
    assert_eq!(attempts(&again), [("m", 2)]);
    assert_eq!(
        (again[0].kind, &again[0].body),
        (Ingest::Send, &Bytes::from("body m"))
    );
    assert!(
        waited >= delay - Duration::from_millis(100),
        "delivered again after {waited:?}, before its delay of {delay:?}"
    );

    // No delay: at once, before the ack wait or lease would have passed.
    let asked = tokio::time::Instant::now();
    again[0].retry_after(Duration::ZERO).await.unwrap();
    drop(again);
    let third = q.next(TEN).await;
    assert_eq!(attempts(&third), [("m", 3)]);
    assert!(asked.elapsed() < q.queue().redelivered_after().max(Duration::from_secs(5)));
    ack_all(&third).await;
    q.nothing_more().await;
}

async fn a_payload_in_progress_is_not_handed_out_again(q: Subject) {
    q.enqueue(Ingest::Webhook, "slow", "body").await;
    let held = q.next(TEN).await;
    assert_eq!(ids(&held), ["slow"]);

    // Another consumer waits meanwhile; the holder keeps saying it works,
    // for longer than `redelivered_after` (on NATS) or a few seconds.
    let hold = (q.queue().redelivered_after() * 3).min(Duration::from_secs(3));
    let queue = std::sync::Arc::new(q);
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move {
            let batch = queue.next(TEN).await;
            attempts(&batch)
                .into_iter()
                .map(|(id, attempt)| (id.to_owned(), attempt))
                .collect::<Vec<_>>()
        }
    });
    let until = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < until {
        held[0].in_progress().await.unwrap();
        tokio::time::sleep(hold / 10).await;
        assert!(!waiting.is_finished(), "handed out again while in progress");
    }
    held[0].ack().await.unwrap();

    queue.enqueue(Ingest::Webhook, "next", "body").await;
    let got = waiting.await.unwrap();
    assert_eq!(
        got,
        [("next".to_owned(), 1)],
        "the other consumer gets the next one only"
    );
    let batch_ids = got.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>();
    assert_eq!(batch_ids, ["next"]);
}

async fn a_dead_letter_is_kept_aside_with_its_reason_and_not_delivered_again(q: Subject) {
    let large = patterned(LARGE, 7);
    q.enqueue(Ingest::Webhook, "bad", "not json").await;
    q.enqueue(Ingest::Send, "huge", large.clone()).await;
    let mut batch = Vec::new();
    while batch.len() < 2 {
        batch.extend(q.next(TEN).await);
    }
    assert_eq!(ids(&batch), ["bad", "huge"]);
    batch[0].dead_letter("cannot be parsed").await.unwrap();
    batch[1].dead_letter("too\nlarge").await.unwrap();

    let letters = q.dead_letters().await;
    assert_eq!(letters.len(), 2, "both kept aside");
    assert_eq!(
        letters[0],
        ("cannot be parsed".to_owned(), Bytes::from("not json"))
    );
    assert!(
        letters[1].0.starts_with("too"),
        "with its reason: {:?}",
        letters[1].0
    );
    assert!(letters[1].1 == large, "a large body is kept whole");
    q.nothing_more().await;
}

async fn large_bodies_go_through_whole(q: Subject) {
    let (one, two) = (patterned(LARGE, 1), patterned(3 * 1024 * 1024, 2));
    assert!(!q.enqueue(Ingest::Webhook, "one", one.clone()).await);
    assert!(!q.enqueue(Ingest::Send, "two", two.clone()).await);
    assert!(!q.enqueue(Ingest::Webhook, "small", "small").await);
    assert!(
        q.enqueue(Ingest::Webhook, "one", one.clone()).await,
        "a large body's id de-duplicates too"
    );
    let limits = BatchLimits {
        count: 10,
        bytes: 4 * 1024 * 1024,
    };
    let first = q.next(limits).await;
    assert_eq!(ids(&first), ["one"], "larger than the batch's bytes: alone");
    assert!(first[0].body == one, "delivered whole");
    // Handed back: it comes whole again.
    first[0].retry_after(Duration::ZERO).await.unwrap();
    drop(first);

    let mut rest = Vec::new();
    while rest.len() < 3 {
        let batch = q.next(limits).await;
        let bytes: usize = batch.iter().map(|d| d.body.len()).sum();
        assert!(
            batch.len() == 1 || bytes <= limits.bytes,
            "{:?}: {bytes} bytes",
            ids(&batch)
        );
        rest.extend(batch);
    }
    rest.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(attempts(&rest), [("one", 2), ("small", 1), ("two", 1)]);
    assert!(rest[0].body == one, "redelivered whole");
    assert_eq!(rest[1].body, Bytes::from("small"));
    assert!(rest[2].body == two);
    assert_eq!(rest[2].kind, Ingest::Send);
    ack_all(&rest).await;
    q.nothing_more().await;
}

macro_rules! on_both_queues {
    ($($scenario:ident),* $(,)?) => {
        mod on_nats {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::Subject::nats().await).await } )*
        }
        mod on_embedded {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::Subject::embedded().await).await } )*
        }
    };
}

on_both_queues!(
    delivers_what_was_enqueued_in_order_once_acknowledged,
    the_same_id_is_stored_once_even_once_processed,
    a_batch_holds_at_most_its_count,
    a_batch_holds_at_most_its_bytes_and_a_larger_payload_comes_alone,
    what_is_not_acknowledged_is_delivered_again,
    what_is_not_acknowledged_is_delivered_again_after_a_crash,
    a_retry_comes_back_after_its_delay,
    a_payload_in_progress_is_not_handed_out_again,
    a_dead_letter_is_kept_aside_with_its_reason_and_not_delivered_again,
    large_bodies_go_through_whole,
);
