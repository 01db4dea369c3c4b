//! Property tests of the REST surface, against one real stack: arbitrary
//! query strings, conversation ids in the path and request bodies get a
//! 2xx, or a 4xx whose body is JSON with a string `error`; never a 5xx,
//! never a body that is not JSON.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};

use crate::helpers::{NEHA, RAVI, Stack, spawn_stack};
use test_support::stack::StackConfig;

/// Cases per endpoint: the whole test stays within a few seconds
/// (`PROPTEST_CASES` for a longer run by hand).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64)
}

/// One request to the API.
#[derive(Debug, Clone)]
struct Request {
    method: reqwest::Method,
    /// Path and query, already encoded.
    target: String,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    /// Sent as `application/json` (whether or not it is JSON).
    Json(String),
    /// Sent without a content type.
    Plain(String),
}

impl Stack {
    /// Sends `request` and checks the answer: its status, or the status
    /// (0: none) and what is wrong.
    async fn clean_answer(&self, request: &Request) -> Result<u16, (u16, String)> {
        let url = format!("{}{}", self.api[0], request.target);
        let mut builder = self.http.request(request.method.clone(), &url);
        builder = match &request.body {
            Body::None => builder,
            Body::Json(text) => builder
                .header("content-type", "application/json")
                .body(text.clone()),
            Body::Plain(text) => builder.body(text.clone()),
        };
        let response = builder
            .send()
            .await
            .map_err(|e| (0, format!("{url}: no answer: {e}")))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            (
                status.as_u16(),
                format!("{url}: {status}: unreadable body: {e}"),
            )
        })?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let fine = if status.is_success() {
            json.is_some()
        } else if status.is_client_error() {
            json.as_ref()
                .and_then(|body| body.get("error"))
                .is_some_and(Value::is_string)
        } else {
            false
        };
        if fine {
            Ok(status.as_u16())
        } else {
            Err((
                status.as_u16(),
                format!(
                    "{} {url} (body {:?}) -> {status}: {text:?}",
                    request.method, request.body
                ),
            ))
        }
    }
}

/// Runs [`cases`] requests from `requests` against the stack; the first
/// failing one is shrunk to a minimal one and reported. Returns how many
/// answers had each status.
fn check_all(
    stack: &Stack,
    what: &str,
    requests: impl Strategy<Value = Request>,
) -> BTreeMap<u16, usize> {
    let started = Instant::now();
    let statuses = RefCell::new(BTreeMap::new());
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let result = runner.run(&requests, |request| {
        let answer = tokio::task::block_in_place(|| handle.block_on(stack.clean_answer(&request)));
        let status = match answer {
            Ok(status) => status,
            Err((_, e)) => return Err(TestCaseError::fail(e)),
        };
        *statuses.borrow_mut().entry(status).or_insert(0) += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
    let statuses = statuses.into_inner();
    eprintln!(
        "{what}: {} cases in {:?}, statuses {statuses:?}",
        cases(),
        started.elapsed()
    );
    statuses
}

/// Both kinds of answer came back: the requests reach past validation.
fn assert_mixed(statuses: &BTreeMap<u16, usize>, what: &str) {
    let ok = statuses.keys().any(|s| (200..300).contains(s));
    let refused = statuses.keys().any(|s| (400..500).contains(s));
    assert!(ok && refused, "{what}: only {statuses:?}");
}

// --- strategies ------------------------------------------------------------------

/// Bytes that need no escaping in a URL.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if unreserved(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A value for `limit`, `before`, `beforeId` or `after`: numbers of every
/// size, times valid and not, ids up to and past the length limit, and
/// anything at all.
fn parameter_value() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "-?[0-9]{1,4}",
        "-?[0-9]{15,25}",
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        // Any digits (valid or not), then valid ones from year 0 to 9999.
        concat!(
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}",
            "(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})"
        ),
        "(0|1|19|20|99)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])T[01][0-9]:[0-5][0-9]:[0-5][0-9]Z",
        "wamid\\.[A-Za-z0-9=]{1,30}",
        "local\\.[0-9a-f]{32}",
        "w{250,260}",
        " {1,3}",
        any::<String>(),
    ]
    .boxed()
}

/// `?a=b&...`: known and unknown keys, repeated or not, encoded or left
/// raw (for the URL parser and the query parser to make sense of), or a
/// raw jumble of query characters.
fn query(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let pair = (key, parameter_value(), any::<bool>(), any::<bool>()).prop_map(
        |(key, value, raw, bare)| {
            let (key, value) = if raw {
                (raw_query_text(&key), raw_query_text(&value))
            } else {
                (encode(key.as_bytes()), encode(value.as_bytes()))
            };
            if bare { key } else { format!("{key}={value}") }
        },
    );
    prop_oneof![
        4 => prop::collection::vec(pair, 0..5).prop_map(|pairs| format!("?{}", pairs.join("&"))),
        1 => "[ -~]{0,40}".prop_map(|raw| format!("?{}", raw_query_text(&raw))),
        1 => Just(String::new()),
    ]
    .boxed()
}

/// Text as a careless client would put it in a query: only what would
/// end the query (`#`) or is not printable ASCII is escaped.
fn raw_query_text(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (b'!'..=b'~').contains(&b) && b != b'#' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A conversation id for the path, percent-encoded: real ones, near
/// misses, and arbitrary text and bytes.
fn conversation_id() -> BoxedStrategy<String> {
    prop_oneof![
        2 => prop::sample::select(&[RAVI, NEHA][..]).prop_map(str::to_owned),
        2 => "conv_[0-9]{1,40}",
        1 => "conv_[0-9]{0,5}[^0-9]{1,3}[0-9]{0,3}",
        1 => "(conv_)?[.]{1,3}",
        2 => any::<String>(),
    ]
    .prop_map(|id| encode(id.as_bytes()))
    .boxed()
}

/// Arbitrary bytes in the path: not always UTF-8 once decoded.
fn conversation_id_bytes() -> BoxedStrategy<String> {
    prop::collection::vec(any::<u8>(), 1..24)
        .prop_map(|bytes| encode(&bytes))
        .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    test_support::json_leaf(any::<String>().boxed())
}

fn any_json() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..5)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A field that is mostly `plausible`, sometimes absent, null or any
/// JSON at all.
fn field(plausible: BoxedStrategy<Value>, weight: u32) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        weight => plausible.prop_map(Some),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any_json().prop_map(Some),
    ]
    .boxed()
}

/// Text for a message: often fine, sometimes empty, blank, at and past
/// the length limit, or odd characters.
fn text() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => any::<String>().prop_filter("not blank", |t| !t.trim().is_empty()),
        1 => Just(String::new()),
        1 => " {1,5}".boxed(),
        1 => "x{4095,4097}".boxed(),
        1 => "[\\x00-\\x1f\u{fffd}\u{1f600}]{1,8}".boxed(),
    ]
    .prop_map(Value::String)
    .boxed()
}

/// A `POST /api/messages` body: each field there or not, mostly of the
/// right type and often valid (so some are sent), sometimes anything.
fn send_body() -> BoxedStrategy<Value> {
    // Often the stack's own conversation (only existing ones take texts).
    let marker = crate::helpers::MARKER
        .trim_start_matches("conv_")
        .to_owned();
    prop_oneof![2 => Just(marker), 1 => "[0-9]{1,32}".prop_map(String::from)]
        .prop_flat_map(|digits| {
            let conversation = prop_oneof![
                6 => Just(Value::String(format!("conv_{digits}"))),
                1 => "conv_[0-9]{33,40}".prop_map(Value::String),
                1 => any::<String>().prop_map(Value::String),
            ];
            let to = prop_oneof![
                3 => Just(Value::String(digits.clone())),
                1 => Just(Value::String(format!("+{digits}"))),
                1 => "\\+?[0-9]{1,20}".prop_map(Value::String),
            ];
            let number = prop_oneof!["\\+?[0-9]{1,20}", any::<String>()].prop_map(Value::String);
            (
                field(conversation.boxed(), 12),
                field(text(), 12),
                prop::option::weighted(0.2, text()),
                prop::option::weighted(0.4, field(number.boxed(), 6)),
                prop::option::weighted(0.4, field(to.boxed(), 6)),
                prop::option::weighted(
                    0.3,
                    field(any::<String>().prop_map(Value::String).boxed(), 6),
                ),
                prop::option::weighted(0.2, (any::<String>(), any_json())),
            )
        })
        .prop_map(|(conversation, message, body, from, to, user, extra)| {
            let mut object = Map::new();
            for (name, value) in [
                ("conversationId", conversation),
                ("message", message),
                ("body", body),
                ("from", from.flatten()),
                ("to", to.flatten()),
                ("userName", user.flatten()),
            ] {
                if let Some(value) = value {
                    object.insert(name.to_owned(), value);
                }
            }
            if let Some((name, value)) = extra {
                object.insert(name, value);
            }
            Value::Object(object)
        })
        .boxed()
}

/// A request body: JSON (as `application/json`), text that is not JSON
/// (claiming to be), or a body without a content type.
fn body(json: BoxedStrategy<Value>) -> BoxedStrategy<Body> {
    prop_oneof![
        6 => json.prop_map(|v| Body::Json(v.to_string())),
        1 => any_json().prop_map(|v| Body::Json(v.to_string())),
        1 => any::<String>().prop_map(Body::Json),
        1 => any_json().prop_map(|v| Body::Plain(v.to_string())),
        1 => Just(Body::None),
    ]
    .boxed()
}

fn get(target: String) -> Request {
    Request {
        method: reqwest::Method::GET,
        target,
        body: Body::None,
    }
}

const PAGE_KEYS: &[&str] = &["limit", "before", "beforeId"];
const EVENT_KEYS: &[&str] = &["after", "limit"];

/// One stack for every endpoint: each gets [`cases`] arbitrary requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_parameters_and_bodies_get_a_2xx_or_a_json_4xx() {
    let started = Instant::now();
    // Without the per-client rate limit: every request must reach its
    // handler (a 429 is a clean answer, but says nothing of the handler).
    let stack = spawn_stack(StackConfig::new().api_args(["--rate-limit-per-ip=0"])).await;
    // Data to page through, so that queries reach the store.
    stack.load_samples().await;

    let what = "GET /api/conversations?limit=&before=&beforeId=";
    let statuses = check_all(
        &stack,
        what,
        query(PAGE_KEYS).prop_map(|q| get(format!("/api/conversations{q}"))),
    );
    assert_mixed(&statuses, what);
    let what = "GET /api/conversations/{id}/messages?limit=&before=&beforeId=";
    let statuses = check_all(
        &stack,
        what,
        (conversation_id(), query(PAGE_KEYS))
            .prop_map(|(id, q)| get(format!("/api/conversations/{id}/messages{q}"))),
    );
    assert_mixed(&statuses, what);
    // Ids that are not UTF-8 once percent-decoded.
    check_all(
        &stack,
        "GET /api/conversations/{bytes}/messages",
        conversation_id_bytes().prop_map(|id| get(format!("/api/conversations/{id}/messages"))),
    );
    let what = "GET /api/events?after=&limit=";
    let statuses = check_all(
        &stack,
        what,
        query(EVENT_KEYS).prop_map(|q| get(format!("/api/events{q}"))),
    );
    assert_mixed(&statuses, what);
    let what = "POST /api/messages";
    let statuses = check_all(
        &stack,
        what,
        body(send_body()).prop_map(|body| Request {
            method: reqwest::Method::POST,
            target: "/api/messages".to_owned(),
            body,
        }),
    );
    assert_mixed(&statuses, what);
    let what = "POST /api/conversations/{id}/read";
    let statuses = check_all(
        &stack,
        what,
        (conversation_id(), body(any_json())).prop_map(|(id, body)| Request {
            method: reqwest::Method::POST,
            target: format!("/api/conversations/{id}/read"),
            body,
        }),
    );
    assert_mixed(&statuses, what);
    check_all(
        &stack,
        "POST /api/conversations/{bytes}/read",
        conversation_id_bytes().prop_map(|id| Request {
            method: reqwest::Method::POST,
            target: format!("/api/conversations/{id}/read"),
            body: Body::None,
        }),
    );
    eprintln!("REST properties: {:?} in all", started.elapsed());
}

/// A `before` outside years 1 to 9999 (what a BSON date holds) is a clean
/// 400, not a store failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_beyond_years_1_to_9999_is_refused_cleanly() {
    let stack = spawn_stack(StackConfig::new()).await;
    let mut failures = Vec::new();
    for before in [
        "253402300799999",
        "253402300800000",
        "-62135596800000",
        "-62135596800001",
        "9999-12-31T23:59:59Z",
        "0000-12-31T23:59:59Z",
        "0001-01-01T00:00:00+01:00",
    ] {
        let request = get(format!(
            "/api/conversations/{RAVI}/messages?before={}",
            encode(before.as_bytes())
        ));
        if let Err((_, e)) = stack.clean_answer(&request).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
