//! Property tests of the webhook parser: whatever bytes or JSON arrive,
//! `webhook::parse` (and the processor's `processing::decode`) never
//! panics and either gives what it understood or a clean error; what
//! parses is within the limits the rest of the system relies on, and the
//! pure planner takes it (twice: a redelivery) without panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use wa_broker::{Ingest, payload_id};
use wa_core::domain::{Message, RawPayload, is_conversation_id, is_safe_status_name};
use wa_core::plan::{self, Batch, Known, RejectedItem, Stored};
use wa_core::webhook::{self, MAX_ID_LEN, Parsed};
use wa_engine::processing::decode;

// --- the checks ---------------------------------------------------------------

/// Parses `body` both ways the system does; on success checks what came
/// out and plans it. Panics (the property fails) on anything unclean.
fn check_body(body: &[u8]) {
    match webhook::parse(body) {
        Ok(parsed) => {
            check_parsed(&parsed);
            plan_twice(body, parsed);
        }
        Err(e) => assert!(!e.0.is_empty(), "an error says why"),
    }
    // The processor decodes queued payloads with the same entry point; a
    // `Send` payload is a `Message` as JSON.
    match decode(Ingest::Send, body) {
        Ok(parsed) => assert_eq!(parsed.messages.len(), 1),
        Err(e) => assert!(!e.0.is_empty(), "an error says why"),
    }
}

fn check_parsed(parsed: &Parsed) {
    for message in &parsed.messages {
        assert!(
            !message.message_id.trim().is_empty() && message.message_id.len() <= MAX_ID_LEN,
            "kept message ids are usable: {:?}",
            message.message_id
        );
        assert_eq!(message.id, message.message_id);
        assert!(
            is_conversation_id(&message.conversation_id),
            "kept messages land in a real conversation: {:?}",
            message.conversation_id
        );
        assert!(is_safe_status_name(&message.status));
        for value in [
            &message.content,
            &message.context,
            &message.referral,
            &message.errors,
        ]
        .into_iter()
        .flatten()
        {
            assert_storable(value);
        }
        // What is stored and queued as JSON comes back the same (but for
        // the last digit of a float: serde_json reads floats fast, not
        // always to the nearest double).
        let json = serde_json::to_vec(message).unwrap();
        let back = decode(Ingest::Send, &json).unwrap();
        let json = String::from_utf8_lossy(&json);
        assert!(
            same_json(
                &serde_json::to_value(&back.messages[0]).unwrap(),
                &serde_json::to_value(message).unwrap()
            ),
            "{json}"
        );
    }
    for status in &parsed.statuses {
        assert!(!status.message_id.trim().is_empty() && status.message_id.len() <= MAX_ID_LEN);
        assert!(is_safe_status_name(&status.status), "{:?}", status.status);
        assert!(is_conversation_id(&status.conversation_id));
        if let Some(errors) = &status.errors {
            assert_storable(errors);
        }
    }
    for rejected in &parsed.rejected {
        assert!(rejected.path.starts_with("entry["), "{:?}", rejected.path);
        assert!(!rejected.reason.is_empty());
        assert_storable(&rejected.item);
    }
}

/// Equal JSON, floats to within rounding.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// MongoDB (BSON) has no unsigned integers and refuses documents nested
/// more than 100 levels: what the parser keeps must fit.
fn assert_storable(value: &Value) {
    fn walk(value: &Value, depth: usize) {
        assert!(depth < 64, "kept objects are not nested deeper than 64");
        match value {
            Value::Number(n) => assert!(
                n.is_i64() || n.is_f64(),
                "integers beyond i64 are kept as text: {n}"
            ),
            Value::Array(items) => items.iter().for_each(|v| walk(v, depth + 1)),
            Value::Object(map) => map.values().for_each(|v| walk(v, depth + 1)),
            _ => {}
        }
    }
    walk(value, 0);
}

/// Plans the parsed body as a batch on an empty store, then again as a
/// redelivery on the store that first plan left: nothing new the second
/// time. Also plans reading each conversation.
fn plan_twice(body: &[u8], parsed: Parsed) {
    let raw = RawPayload {
        id: payload_id(body),
        body: Bytes::copy_from_slice(body),
        received_at: at(1_754_400_000),
    };
    let batch = Batch {
        rejected: parsed
            .rejected
            .into_iter()
            .map(|r| RejectedItem {
                id: format!("{}:{}", raw.id, r.path),
                payload_id: raw.id.clone(),
                path: r.path,
                reason: r.reason,
                item: r.item,
            })
            .collect(),
        payloads: vec![raw],
        messages: parsed.messages,
        statuses: parsed.statuses,
    };
    let _ = batch.lookup();
    let first = plan::plan_batch(&batch, &Known::default());
    assert_eq!(first.rejected.len(), batch.rejected.len());

    // The store after the first change set: every message in its final
    // state, settled at the status the plan settled it for.
    let settled: BTreeMap<&str, &str> = first
        .settle
        .iter()
        .map(|(id, status)| (id.as_str(), status.as_str()))
        .collect();
    let mut known = Known::default();
    for message in first
        .inserts
        .iter()
        .chain(first.updates.iter().map(|u| &u.message))
    {
        known.messages.insert(
            message.message_id.clone(),
            Stored {
                message: message.clone(),
                settled: settled
                    .get(message.message_id.as_str())
                    .map(|s| (*s).to_owned()),
            },
        );
    }
    known.parked.clone_from(&first.park);
    let again = plan::plan_batch(&batch, &known);
    assert!(again.inserts.is_empty(), "a redelivery inserts nothing");
    assert!(again.updates.is_empty(), "a redelivery updates nothing");
    assert!(again.events.is_empty(), "a redelivery announces nothing");

    let conversations: std::collections::BTreeSet<&str> = batch
        .messages
        .iter()
        .map(|m: &Message| m.conversation_id.as_str())
        .collect();
    for conversation in conversations {
        let _ = plan::plan_mark_read(conversation, at(1_754_500_000), &known);
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap()
}

// --- the strategies -------------------------------------------------------------

/// Keys the parser looks for, so that arbitrary objects often hit them.
const KEYS: &[&str] = &[
    "object",
    "entry",
    "changes",
    "field",
    "value",
    "metaData",
    "payload_type",
    "id",
    "metadata",
    "display_phone_number",
    "phone_number_id",
    "contacts",
    "wa_id",
    "profile",
    "name",
    "messages",
    "statuses",
    "errors",
    "from",
    "to",
    "timestamp",
    "type",
    "text",
    "body",
    "caption",
    "status",
    "recipient_id",
    "context",
    "referral",
];

const TYPES: &[&str] = &[
    "text",
    "image",
    "video",
    "audio",
    "sticker",
    "document",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "unsupported",
    "poll",
    "",
];

const STATUSES: &[&str] = &[
    "received",
    "sent",
    "delivered",
    "read",
    "played",
    "failed",
    "deleted",
];

/// Strings a parser may trip on: empty, blank, digits (too many), huge
/// numbers, ids at the length limit, control and non-ASCII characters.
fn tricky_string() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        " {1,3}",
        "\\+?[0-9]{1,40}",
        "-?[0-9]{1,30}",
        "[0-9 +()-]{0,20}",
        "[a-z_]{1,40}",
        "w{254,258}",
        any::<String>(),
        "[\\x00-\\x1f\"\\\\\u{7f}\u{fffd}\u{1f600}]{0,8}",
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    test_support::json_leaf(tricky_string())
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
    .boxed()
}

/// Any JSON value, up to a few levels deep.
fn any_json() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Almost always `plausible`: for parts whose wrong type spoils their
/// whole parent.
fn rarely_odd(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![40 => plausible, 1 => any_json()].boxed()
}

/// Mostly `plausible`, sometimes anything at all.
fn mostly(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![9 => plausible, 1 => any_json()].boxed()
}

fn string_of(pattern: &'static str) -> BoxedStrategy<Value> {
    pattern.prop_map(Value::String).boxed()
}

/// An object whose fields are each there or not.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    fields
        .into_iter()
        .map(|(name, value)| prop::option::weighted(0.93, value).prop_map(move |v| (name, v)))
        .collect::<Vec<_>>()
        .prop_map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .filter_map(|(name, v)| Some((name.to_owned(), v?)))
                    .collect::<Map<_, _>>(),
            )
        })
        .boxed()
}

fn phone() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => string_of("\\+?[0-9]{1,15}"),
        1 => string_of("[0-9]{30,36}"),
        1 => tricky_string().prop_map(Value::String),
    ]
    .boxed()
}

fn timestamp() -> BoxedStrategy<Value> {
    prop_oneof![
        9 => (0i64..=253_402_300_799).prop_map(|s| Value::String(s.to_string())),
        3 => (0i64..=253_402_300_799).prop_map(Value::from),
        1 => any::<i64>().prop_map(|s| Value::String(format!(" {s} "))),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        1 => tricky_string().prop_map(Value::String),
    ]
    .boxed()
}

fn message_id() -> BoxedStrategy<Value> {
    prop_oneof![
        9 => string_of("wamid\\.[A-Za-z0-9=_$.-]{1,40}"),
        1 => tricky_string().prop_map(Value::String),
    ]
    .boxed()
}

/// A type-specific object with the fields `readable_body` looks at.
fn content() -> BoxedStrategy<Value> {
    let text = || mostly(tricky_string().prop_map(Value::String));
    let coordinate = || {
        mostly(any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }))
    };
    prop_oneof![
        object(vec![
            ("body", text()),
            ("caption", text()),
            ("filename", text()),
            ("emoji", text()),
            ("text", text()),
            ("payload", text()),
            ("id", text()),
        ]),
        object(vec![
            ("name", text()),
            ("address", text()),
            ("latitude", coordinate()),
            ("longitude", coordinate()),
        ]),
        object(vec![
            (
                "type",
                mostly(
                    prop::sample::select(&["button_reply", "list_reply", "nfm_reply"][..])
                        .prop_map(Value::from)
                )
            ),
            (
                "button_reply",
                object(vec![("title", text()), ("id", text())])
            ),
            (
                "list_reply",
                object(vec![("title", text()), ("description", text())])
            ),
            (
                "nfm_reply",
                object(vec![("body", text()), ("name", text())])
            ),
        ]),
        object(vec![
            (
                "product_items",
                mostly(prop::collection::vec(any_json(), 0..3).prop_map(Value::Array))
            ),
            ("text", text()),
        ]),
        prop::collection::vec(
            object(vec![(
                "name",
                object(vec![("formatted_name", text()), ("first_name", text())])
            )]),
            0..3
        )
        .prop_map(Value::Array),
        any_json(),
    ]
    .boxed()
}

fn message() -> BoxedStrategy<Value> {
    let kind = prop_oneof![
        4 => prop::sample::select(TYPES).prop_map(str::to_owned),
        1 => tricky_string(),
    ];
    (
        object(vec![
            ("id", message_id()),
            ("from", mostly(phone())),
            ("to", mostly(phone())),
            ("timestamp", timestamp()),
            (
                "context",
                mostly(object(vec![("from", phone()), ("id", message_id())])),
            ),
            ("referral", any_json()),
            ("errors", any_json()),
        ]),
        kind,
        content(),
        prop::option::weighted(0.05, any_json()),
    )
        .prop_map(|(mut message, kind, content, odd_type)| {
            let fields = message.as_object_mut().unwrap();
            fields.insert(kind.clone(), content);
            fields.insert("type".to_owned(), odd_type.unwrap_or(Value::String(kind)));
            message
        })
        .boxed()
}

fn status() -> BoxedStrategy<Value> {
    object(vec![
        ("id", message_id()),
        (
            "status",
            mostly(prop_oneof![
                9 => prop::sample::select(STATUSES).prop_map(Value::from),
                1 => prop::sample::select(&["Read!", "", "READ", "read "][..])
                    .prop_map(Value::from),
                1 => tricky_string().prop_map(Value::String),
            ]),
        ),
        ("timestamp", timestamp()),
        ("recipient_id", mostly(phone())),
        ("errors", any_json()),
        ("conversation", any_json()),
    ])
}

fn list(item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    rarely_odd(prop::collection::vec(item, 0..max).prop_map(Value::Array))
}

/// The `value` of a `messages` change.
fn messages_value() -> BoxedStrategy<Value> {
    rarely_odd(object(vec![
        ("messaging_product", any_json()),
        (
            "metadata",
            rarely_odd(object(vec![
                ("display_phone_number", rarely_odd(phone())),
                ("phone_number_id", rarely_odd(string_of("[0-9]{1,16}"))),
            ])),
        ),
        (
            "contacts",
            list(
                rarely_odd(object(vec![
                    ("wa_id", rarely_odd(phone())),
                    (
                        "profile",
                        rarely_odd(object(vec![(
                            "name",
                            rarely_odd(tricky_string().prop_map(Value::String)),
                        )])),
                    ),
                ])),
                3,
            ),
        ),
        ("messages", list(mostly(message()), 4)),
        ("statuses", list(mostly(status()), 4)),
        ("errors", list(any_json(), 2)),
    ]))
}

/// `field`: mostly `messages` (or absent, which means the same), with
/// `plausible_only` always a string.
fn field(plausible_only: bool) -> BoxedStrategy<Value> {
    let names = prop_oneof![
        4 => Just(Value::from("messages")),
        1 => prop::sample::select(&["account_update", "message_template_status_update", ""][..])
            .prop_map(Value::from),
        1 => tricky_string().prop_map(Value::String),
    ];
    if plausible_only {
        names.boxed()
    } else {
        mostly(names)
    }
}

/// Meta's envelope, with arbitrary values (`loose`: at every level; not
/// loose: only inside the `value` of changes, so the envelope parses).
fn envelope(loose: bool) -> BoxedStrategy<Value> {
    let maybe_loose = move |s: BoxedStrategy<Value>| if loose { mostly(s) } else { s };
    let change = maybe_loose(object(vec![
        ("field", field(!loose)),
        ("value", messages_value()),
    ]));
    let entry = maybe_loose(object(vec![
        ("id", maybe_loose(string_of("[0-9]{1,16}"))),
        (
            "changes",
            maybe_loose(
                prop::collection::vec(change, 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ]));
    let entries = prop::collection::vec(entry, 0..3)
        .prop_map(Value::Array)
        .boxed();
    (
        object(vec![(
            "object",
            maybe_loose(Just(Value::from("whatsapp_business_account")).boxed()),
        )]),
        maybe_loose(entries),
    )
        .prop_map(|(mut envelope, entries)| {
            envelope
                .as_object_mut()
                .unwrap()
                .insert("entry".to_owned(), entries);
            envelope
        })
        .boxed()
}

/// Either envelope form: Meta's, or the sample files' `metaData` wrapper.
fn webhook(loose: bool) -> BoxedStrategy<Value> {
    (envelope(loose), any::<bool>(), prop::option::of(any_json()))
        .prop_map(|(envelope, wrapped, extra)| {
            if !wrapped {
                return envelope;
            }
            let mut wrapper = Map::new();
            wrapper.insert("payload_type".to_owned(), Value::from("whatsapp_webhook"));
            wrapper.insert("metaData".to_owned(), envelope);
            if let Some(extra) = extra {
                wrapper.insert("extra".to_owned(), extra);
            }
            Value::Object(wrapper)
        })
        .boxed()
}

/// A real sample file, damaged: bytes overwritten, inserted, cut off.
fn damaged_sample() -> BoxedStrategy<Vec<u8>> {
    let samples: Vec<Vec<u8>> = test_support::all_webhook_files()
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    (
        prop::sample::select(samples),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(mut body, edits, cut)| {
            for (at, byte, how) in edits {
                let i = at.index(body.len() + 1);
                match how {
                    0 if i < body.len() => body[i] = byte,
                    1 if i < body.len() => {
                        body.remove(i);
                    }
                    _ => body.insert(i, byte),
                }
            }
            if let Some(cut) = cut {
                body.truncate(cut.index(body.len() + 1));
            }
            body
        })
        .boxed()
}

// --- the properties -------------------------------------------------------------

/// `n` cases, or `PROPTEST_CASES` for a longer run by hand.
fn cases(n: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(n),
        // Failures are reported with their input; no files in the tree.
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn arbitrary_bytes_parse_or_give_an_error(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_body(&body);
    }

    #[test]
    fn arbitrary_json_parses_or_gives_an_error(value in any_json()) {
        check_body(value.to_string().as_bytes());
    }

    #[test]
    fn webhook_shaped_json_with_anything_anywhere_parses_or_gives_an_error(value in webhook(true)) {
        check_body(value.to_string().as_bytes());
    }

    #[test]
    fn damaged_sample_files_parse_or_give_an_error(body in damaged_sample()) {
        check_body(&body);
    }

    /// A well-formed envelope always parses: malformed items in it are
    /// refused one by one, never the whole body.
    #[test]
    fn a_well_formed_envelope_always_parses(value in webhook(false)) {
        let body = value.to_string();
        let parsed = webhook::parse(body.as_bytes());
        prop_assert!(parsed.is_ok(), "{body}: {parsed:?}");
        check_body(body.as_bytes());
    }

    /// A well-formed message is kept, whatever else the body carries.
    #[test]
    fn a_well_formed_message_is_kept(
        wa_id in "[0-9]{1,15}",
        id in "wamid\\.[A-Za-z0-9]{1,40}",
        seconds in 0i64..=253_402_300_799,
        text in any::<String>(),
        noise in prop::collection::vec(mostly(message()), 0..3),
    ) {
        let good = serde_json::json!({
            "from": wa_id, "id": id, "timestamp": seconds.to_string(), "type": "text",
            "text": {"body": text}
        });
        let mut messages = noise;
        messages.push(good);
        let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"changes": [
            {"field": "messages", "value": {"messages": messages}}
        ]}]})
        .to_string();
        let parsed = webhook::parse(body.as_bytes()).unwrap();
        prop_assert!(
            parsed.messages.iter().any(|m| m.message_id == id && m.body == text),
            "{body}: {parsed:?}"
        );
        check_body(body.as_bytes());
    }
}

/// A message whose `x` object is `CONTENT`.
const ENVELOPE: &str = r#"{"object": "whatsapp_business_account", "entry": [{"changes": [
    {"field": "messages", "value": {"messages": [
        {"id": "w", "from": "1", "timestamp": "1", "type": "x", "x": CONTENT}
    ]}}
]}]}"#;

/// Around serde_json's recursion limit (128) and far past it, as the
/// whole body and inside a message: refused or kept, never a stack
/// overflow.
#[test]
fn deep_nesting_is_refused_cleanly() {
    for depth in [100, 120, 127, 128, 129, 1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            check_body(body.as_bytes());
            check_body(ENVELOPE.replace("CONTENT", &body).as_bytes());
        }
    }
}

/// The webhook strategies reach what they are for: kept messages and
/// statuses, and refused items, not only errors.
#[test]
fn the_webhook_strategies_reach_the_parsers_depths() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut messages, mut statuses, mut rejected, mut errors) = (0, 0, 0, 0);
    for loose in [false, true] {
        let strategy = webhook(loose);
        for _ in 0..200 {
            let body = strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .to_string();
            match webhook::parse(body.as_bytes()) {
                Ok(parsed) => {
                    messages += parsed.messages.len();
                    statuses += parsed.statuses.len();
                    rejected += parsed.rejected.len();
                }
                Err(_) => errors += 1,
            }
        }
    }
    assert!(
        messages > 40 && statuses > 40 && rejected > 40 && errors > 10,
        "messages {messages}, statuses {statuses}, rejected {rejected}, errors {errors}"
    );
}
