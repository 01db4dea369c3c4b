//! Several business numbers: the reads that list or narrow to numbers, at
//! two data sizes side by side in one run. Work per request must be bounded
//! by the request (50 conversations, one number's counters, 50 events),
//! never by what is stored, so each read's p50/p99 should stay flat from
//! the small set to the one ten times larger.
//!
//! Data: conversations of 10 messages (the last two inbound and unread),
//! half of them on a second business number. The second number's half is
//! the older one, so "the newest 50 of the second number" has every
//! conversation of the home number in front of it: a read that filtered
//! the newest conversations after reading them, instead of going through
//! an index by number, would grow with the data here. Loaded through the
//! processing rules straight into the store (the write path is measured
//! elsewhere), with every event relayed into the event log as the worker
//! would, so the log holds one event per message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wa_broker::EventBus;
use wa_broker_embedded::EmbeddedEvents;
use wa_broker_nats::NatsBroker;
use wa_core::domain::{Conversation, Direction, Message, Sequenced, Stats, Status};
use wa_core::numbers::{BusinessNumber, conversation_id};
use wa_core::plan::Batch;
use wa_engine::processing::Processor;
use wa_engine::relay::Relay;
use wa_store::Store;
use wa_store_mongo::MongoStore;
use wa_store_sqlite::SqliteStore;

use crate::load::{Measured, closed_loop};
use crate::services::{Service, has_mongo, mongo_label, mongo_uri, no_mongo, stack_env};
use crate::{Options, Row};

/// The home number (the first recorded): its conversations are `conv_<wa_id>`.
const HOME: &str = "100000000000001";
const HOME_DISPLAY: &str = "15550000001";
/// The other number: its conversations are `conv_<wa_id>_<SECOND>`.
const SECOND: &str = "100000000000002";
const SECOND_DISPLAY: &str = "15550000002";
const PER_CONVERSATION: usize = 10;
/// The last messages of each conversation are inbound and unread.
const UNREAD_PER_CONVERSATION: usize = 2;
/// Conversations per change set while loading.
const CHUNK: usize = 100;
/// Sees every number.
const TOKEN_ALL: &str = "bench-numbers-token-all-0000000001";
/// `API_TOKENS_FILE` line `<token> numbers=SECOND`.
const TOKEN_SECOND: &str = "bench-numbers-token-second-000000002";

fn wa_id(conversation: usize) -> String {
    format!("44{conversation:010}")
}

/// The older half of the conversations is the second number's.
fn number_of(conversation: usize, conversations: usize) -> (&'static str, &'static str) {
    if conversation < conversations / 2 {
        (SECOND, SECOND_DISPLAY)
    } else {
        (HOME, HOME_DISPLAY)
    }
}

fn message(conversation: usize, i: usize, conversations: usize) -> Message {
    let base = chrono::DateTime::from_timestamp(1_754_500_000, 0).unwrap_or_default();
    let at = base + chrono::Duration::seconds((conversation * PER_CONVERSATION + i) as i64);
    let (number, display) = number_of(conversation, conversations);
    let customer = wa_id(conversation);
    let mut message = Message::outbound_text(
        format!("wamid.numbers.{conversation}.{i}"),
        &customer,
        display.to_owned(),
        format!("message {i}"),
        at,
    );
    if i >= PER_CONVERSATION - UNREAD_PER_CONVERSATION {
        // As the webhook parser makes an inbound message.
        message.direction = Direction::Inbound;
        message.status = Status::Received;
        message.from = customer.clone();
        message.to = display.to_owned();
        message.user_name = format!("+{customer}");
        message.status_timestamps = BTreeMap::from([(Status::Received.as_str().to_owned(), at)]);
    }
    message.conversation_id = conversation_id(&customer, Some(number), Some(HOME));
    message.phone_number_id = Some(number.to_owned());
    message.business_number = Some(display.to_owned());
    message
}

/// Stores `conversations` × 10 messages over the two numbers, `CHUNK`
/// conversations a change set, and relays each change set's events into
/// `bus`; the seconds it took.
async fn load(
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    conversations: usize,
) -> anyhow::Result<f64> {
    store.prepare().await?;
    // What the processor records from the first webhooks of each number.
    store.home_number(Some(HOME)).await?;
    store
        .note_numbers(&[
            (HOME.to_owned(), Some(HOME_DISPLAY.to_owned())),
            (SECOND.to_owned(), Some(SECOND_DISPLAY.to_owned())),
        ])
        .await?;
    let relay = Relay::new(store.clone(), bus);
    let processor = Processor::new(store);
    let started = Instant::now();
    for start in (0..conversations).step_by(CHUNK) {
        let messages = (start..(start + CHUNK).min(conversations))
            .flat_map(|c| (0..PER_CONVERSATION).map(move |i| message(c, i, conversations)))
            .collect();
        let batch = Batch {
            messages,
            ..Batch::default()
        };
        let events = processor.process_batch(&batch).await?;
        if !relay.relay(&events).await {
            bail!("the event log refused the loaded events");
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One data set behind a running service.
struct Loaded {
    conversations: usize,
    loaded_in: f64,
    service: Service,
}

/// A read: its label, path and query, the token it uses, and what its
/// answer must be at `conversations` (an error says why it is not).
struct Read {
    what: &'static str,
    path: &'static str,
    token: &'static str,
    check: fn(&[u8], usize) -> anyhow::Result<String>,
}

fn reads() -> Vec<Read> {
    vec![
        Read {
            what: "GET /api/numbers",
            path: "/api/numbers",
            token: TOKEN_ALL,
            check: check_numbers,
        },
        Read {
            what: "GET /api/conversations?phoneNumberId=<home> (newest 50)",
            path: "/api/conversations?phoneNumberId=100000000000001",
            token: TOKEN_ALL,
            check: |body, _| check_conversations(body, HOME),
        },
        Read {
            what: "GET /api/conversations?phoneNumberId=<second> (newest 50, behind all of home's)",
            path: "/api/conversations?phoneNumberId=100000000000002",
            token: TOKEN_ALL,
            check: |body, _| check_conversations(body, SECOND),
        },
        Read {
            what: "GET /api/stats (all numbers)",
            path: "/api/stats",
            token: TOKEN_ALL,
            check: |body, n| check_stats(body, n, n),
        },
        Read {
            what: "GET /api/stats?phoneNumberId=<home>",
            path: "/api/stats?phoneNumberId=100000000000001",
            token: TOKEN_ALL,
            check: |body, n| check_stats(body, n, n - n / 2),
        },
        Read {
            what: "GET /api/stats?phoneNumberId=<second>",
            path: "/api/stats?phoneNumberId=100000000000002",
            token: TOKEN_ALL,
            check: |body, n| check_stats(body, n, n / 2),
        },
        Read {
            what: "token scoped to <second>: GET /api/conversations (newest 50)",
            path: "/api/conversations",
            token: TOKEN_SECOND,
            check: |body, _| check_conversations(body, SECOND),
        },
        Read {
            what: "token scoped to <second>: GET /api/events?limit=50",
            path: "/api/events?limit=50",
            token: TOKEN_SECOND,
            check: check_events,
        },
    ]
}

fn check_numbers(body: &[u8], conversations: usize) -> anyhow::Result<String> {
    let numbers: Vec<BusinessNumber> = serde_json::from_slice(body)?;
    for (number, expected) in [
        (HOME, conversations - conversations / 2),
        (SECOND, conversations / 2),
    ] {
        let Some(found) = numbers.iter().find(|n| n.phone_number_id == number) else {
            bail!("{number} is not listed");
        };
        let unread = expected * UNREAD_PER_CONVERSATION;
        if (found.conversations, found.unread_count) != (expected as i64, unread as i64) {
            bail!(
                "{number}: {} conversations and {} unread, expected {expected} and {unread}",
                found.conversations,
                found.unread_count
            );
        }
    }
    Ok(format!("{} numbers with their counts", numbers.len()))
}

fn check_conversations(body: &[u8], number: &str) -> anyhow::Result<String> {
    let conversations: Vec<Conversation> = serde_json::from_slice(body)?;
    if conversations.len() != 50 {
        bail!("{} conversations, expected 50", conversations.len());
    }
    if let Some(other) = conversations
        .iter()
        .find(|c| c.phone_number_id.as_deref() != Some(number))
    {
        bail!(
            "{} is of {:?}, not {number}",
            other.conversation_id,
            other.phone_number_id
        );
    }
    Ok(format!("50 conversations, all of {number}"))
}

/// `of_number` conversations of the `conversations` stored are counted.
fn check_stats(body: &[u8], _conversations: usize, of_number: usize) -> anyhow::Result<String> {
    let stats: Stats = serde_json::from_slice(body)?;
    let expected = (of_number as i64, (of_number * PER_CONVERSATION) as i64);
    if (stats.total_conversations, stats.total_messages) != expected {
        bail!(
            "{} conversations and {} messages, expected {} and {}",
            stats.total_conversations,
            stats.total_messages,
            expected.0,
            expected.1
        );
    }
    Ok(format!("{of_number} conversations counted"))
}

fn check_events(body: &[u8], _conversations: usize) -> anyhow::Result<String> {
    let events: Vec<Sequenced> = serde_json::from_slice(body)?;
    if events.is_empty() {
        bail!("no events");
    }
    if let Some(other) = events.iter().find(|e| {
        wa_core::numbers::number_of(e.event.conversation_id(), Some(HOME)) != Some(SECOND)
    }) {
        bail!(
            "an event of {} reached a token scoped to {SECOND}",
            other.event.conversation_id()
        );
    }
    Ok(format!("{} events, all of {SECOND}", events.len()))
}

/// One answer, checked; then p50/p99 on one connection (latency, not
/// throughput).
async fn measure_read(
    client: &reqwest::Client,
    read: &Read,
    loaded: &Loaded,
    duration: Duration,
) -> (Measured, String) {
    let url = format!("{}{}", loaded.service.url(), read.path);
    let auth = format!("Bearer {}", read.token);
    let answer = match client.get(&url).header("authorization", &auth).send().await {
        Ok(response) if response.status() == 200 => match response.bytes().await {
            Ok(body) => (read.check)(&body, loaded.conversations)
                .unwrap_or_else(|e| format!("WRONG ANSWER: {e:#}")),
            Err(e) => format!("no answer: {e}"),
        },
        Ok(response) => format!("answered {}", response.status()),
        Err(e) => format!("no answer: {e}"),
    };
    let client = client.clone();
    let measured = closed_loop(1, duration, move |_, _| {
        let request = client.get(&url).header("authorization", &auth);
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    (measured, answer)
}

fn p50_ms(measured: &Measured) -> f64 {
    measured.latency.value_at_quantile(0.5) as f64 / 1000.0
}

/// Each read at both sizes, the small set then the large one, so the two
/// run under the same machine load.
async fn measure(label: &str, sets: &[Loaded; 2], options: &Options) -> Vec<Row> {
    let [small, large] = sets;
    let mut rows = vec![Row {
        scenario: format!("numbers, {label}: data sets"),
        result: format!(
            "{} and {} conversations ({} and {} messages)",
            small.conversations,
            large.conversations,
            small.conversations * PER_CONVERSATION,
            large.conversations * PER_CONVERSATION
        ),
        detail: format!(
            "half on each of two numbers, {PER_CONVERSATION} messages a conversation \
             ({UNREAD_PER_CONVERSATION} inbound unread), one event each in the log; \
             loaded in {:.0} s and {:.0} s",
            small.loaded_in, large.loaded_in
        ),
    }];
    let client = reqwest::Client::new();
    for read in reads() {
        let (at_small, small_answer) =
            measure_read(&client, &read, small, options.duration()).await;
        let (at_large, large_answer) =
            measure_read(&client, &read, large, options.duration()).await;
        let ratio = p50_ms(&at_large) / p50_ms(&at_small).max(0.001);
        rows.push(Row {
            scenario: format!("numbers, {label}: {}", read.what),
            result: format!(
                "{}: {} · {}: {}",
                small.conversations,
                at_small.percentiles(),
                large.conversations,
                at_large.percentiles()
            ),
            detail: format!(
                "p50 ×{ratio:.2} at 10× the data; {:.0} and {:.0} requests/s on one connection, \
                 {} and {} failed; answers: {small_answer} / {large_answer}",
                at_small.rate(),
                at_large.rate(),
                at_small.failed,
                at_large.failed
            ),
        });
    }
    rows
}

/// The token file: one token scoped to the second number.
fn tokens_file(dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("api-tokens");
    std::fs::write(&path, format!("{TOKEN_SECOND} numbers={SECOND}\n"))
        .context("cannot write the token file")?;
    Ok(vec![
        ("API_TOKENS", TOKEN_ALL.to_owned()),
        ("API_TOKENS_FILE", path.display().to_string()),
    ])
}

async fn sqlite(sizes: [usize; 2], options: &Options) -> anyhow::Result<Vec<Row>> {
    let root = std::env::temp_dir().join(test_support::unique_name("bench-numbers"));
    let mut sets = Vec::new();
    for conversations in sizes {
        let dir = root.join(conversations.to_string());
        let mut env = tokens_file(&dir)?;
        let loaded_in = {
            // Closed before the all-in-one opens the same files.
            let store = Arc::new(SqliteStore::open(&dir.join("store.sqlite3"))?);
            let events = Arc::new(EmbeddedEvents::open(&dir.join("events.sqlite3")).await?);
            load(store, events, conversations).await?
        };
        env.push(("DATA_DIR", dir.display().to_string()));
        let service = Service::start("whatsapp-clone", &env).await?;
        sets.push(Loaded {
            conversations,
            loaded_in,
            service,
        });
    }
    measure_then_remove("SQLite (all-in-one)", sets, &root, options).await
}

async fn mongo(sizes: [usize; 2], options: &Options) -> anyhow::Result<Vec<Row>> {
    let nats = test_support::NatsServer::start().await;
    let root = std::env::temp_dir().join(test_support::unique_name("bench-numbers-mongo"));
    let mut sets = Vec::new();
    for conversations in sizes {
        let database = test_support::unique_name("bench_numbers");
        let uri = mongo_uri(&database);
        let store = Arc::new(MongoStore::connect(&uri, "bench").await?);
        let bus = NatsBroker::connect(
            &nats.url(),
            &database,
            "bench-numbers",
            Duration::from_secs(10),
        )
        .await?;
        bus.ensure_streams().await?;
        let loaded_in = load(store, Arc::new(bus), conversations).await?;
        let mut env = stack_env(&nats, &database, uri);
        env.extend(tokens_file(&root.join(&database))?);
        let service = Service::start("api-gateway", &env).await?;
        sets.push(Loaded {
            conversations,
            loaded_in,
            service,
        });
    }
    let label = format!("{} (api-gateway)", mongo_label());
    measure_then_remove(&label, sets, &root, options).await
}

/// Measures the two data sets, then stops their services and removes
/// their files under `root`.
async fn measure_then_remove(
    label: &str,
    sets: Vec<Loaded>,
    root: &Path,
    options: &Options,
) -> anyhow::Result<Vec<Row>> {
    let sets: [Loaded; 2] = sets
        .try_into()
        .map_err(|_| anyhow::anyhow!("two data sets expected"))?;
    let rows = measure(label, &sets, options).await;
    drop(sets);
    std::fs::remove_dir_all(root).ok();
    Ok(rows)
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let sizes = if options.quick {
        [1_000, 10_000]
    } else {
        [10_000, 100_000]
    };
    let mut rows = sqlite(sizes, options).await?;
    if !has_mongo() {
        rows.push(Row {
            scenario: "numbers, MongoDB".to_owned(),
            result: "not run".to_owned(),
            detail: no_mongo(),
        });
        return Ok(rows);
    }
    // The stand-in server stores more slowly: in full mode, smaller data
    // sets than SQLite's, still 10× apart.
    let sizes = if options.quick {
        [1_000, 10_000]
    } else {
        [5_000, 50_000]
    };
    match mongo(sizes, options).await {
        Ok(more) => rows.extend(more),
        // The SQLite rows stand on their own.
        Err(e) => rows.push(Row {
            scenario: format!("numbers, {}", mongo_label()),
            result: "failed".to_owned(),
            detail: format!("{e:#}"),
        }),
    }
    Ok(rows)
}
