//! Property tests of search: whatever texts are stored (words of several
//! scripts, accents, punctuation and query syntax mixed in), a query's
//! hits from the SQLite index are exactly the messages whose text the
//! pure rules say it matches (`wa_core::search::Query::matches`), newest
//! first: every stored text is found by any of its words, and no hit
//! lacks a query word. Also: any query string at all either parses into
//! plain words or is refused with a reason, and never reaches FTS5 as
//! syntax (the store answers every parsed query).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;
use wa_core::domain::Message;
use wa_core::search::{Query, searchable_text, words};
use wa_store::{SearchScope, Store};
use wa_store_sqlite::SqliteStore;

/// Words that share prefixes and letters across scripts and cases.
const VOCABULARY: &[&str] = &[
    "Pune",
    "pune",
    "PUNÉ",
    "delivery",
    "deliver",
    "délivrer",
    "order",
    "ordered",
    "nameplate",
    "name",
    "café",
    "cafe",
    "पुणे",
    "डिलीवरी",
    "में",
    "مرحبا",
    "بالعالم",
    "東",
    "京",
    "駅",
    "東京",
    "4711",
    "47",
    "OR",
    "AND",
    "NOT",
    "NEAR",
    "*",
    "\"",
    "^",
    "(",
    ")",
    ":",
    "-",
    "\0",
    "🙂",
];

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (
            proptest::sample::select(VOCABULARY),
            proptest::sample::select(&[" ", ", ", "", "\n", "!"][..]),
        ),
        1..8,
    )
    .prop_map(|parts| {
        parts
            .into_iter()
            .map(|(w, sep)| format!("{w}{sep}"))
            .collect()
    })
}

fn message(n: usize, text: &str) -> Message {
    let at = DateTime::from_timestamp(1_754_400_000 + (n as i64 % 7) * 60, 0).unwrap();
    let mut m = Message::outbound_text(
        format!("wamid.p{n:03}"),
        &format!("44770090{:04}", n % 3),
        "15550783881".to_owned(),
        text.to_owned(),
        at,
    );
    m.status = "delivered".into();
    m
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn store_with(texts: &[String]) -> (Arc<dyn Store>, Vec<Message>) {
    let path = std::env::temp_dir()
        .join(test_support::unique_name("search"))
        .join("store.sqlite3");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    store.prepare().await.unwrap();
    let processor = wa_engine::processing::Processor::new(store.clone());
    let messages: Vec<Message> = texts
        .iter()
        .enumerate()
        .map(|(n, t)| message(n, t))
        .collect();
    for m in &messages {
        processor.send(None, m).await.unwrap();
    }
    (store, messages)
}

/// Every hit of `query`, page by page (pages of 3: the cursor is used).
async fn all_hits(store: &Arc<dyn Store>, query: &Query) -> Vec<String> {
    let mut hits = Vec::new();
    let mut scope = SearchScope::default();
    loop {
        let page = store.search(query, &scope, 3).await.unwrap();
        hits.extend(page.messages.into_iter().map(|m| m.message_id));
        match page.next {
            Some(next) => scope.before = Some(next),
            None => return hits,
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 48, ..Config::default() })]

    #[test]
    fn the_index_finds_exactly_what_the_rules_match(
        texts in proptest::collection::vec(text(), 1..12),
        picks in proptest::collection::vec((any::<usize>(), any::<usize>(), 1usize..6), 1..4),
    ) {
        runtime().block_on(async {
            let (store, messages) = store_with(&texts).await;
            // Queries made of words the texts have (the last maybe cut to a prefix).
            let mut queries: Vec<String> = Vec::new();
            for (which, word, cut) in &picks {
                let text_words = words(&texts[which % texts.len()]);
                if text_words.is_empty() {
                    continue;
                }
                let mut w: String = text_words[word % text_words.len()].clone();
                if w.chars().count() > *cut {
                    w = w.chars().take(*cut).collect();
                }
                queries.push(w);
            }
            queries.push(queries.join(" "));
            for q in queries {
                let Ok(query) = Query::parse(&q) else { continue };
                let expected: Vec<&Message> = messages
                    .iter()
                    .filter(|m| query.matches(&searchable_text(m)))
                    .collect();
                let found = all_hits(&store, &query).await;
                let mut found_sorted = found.clone();
                found_sorted.sort();
                let mut expected_ids: Vec<String> = expected.iter().map(|m| m.message_id.clone()).collect();
                expected_ids.sort();
                prop_assert_eq!(&found_sorted, &expected_ids, "query {:?}", q);
                // Newest first.
                let times: Vec<DateTime<Utc>> = found
                    .iter()
                    .map(|id| messages.iter().find(|m| &m.message_id == id).unwrap().timestamp)
                    .collect();
                prop_assert!(times.windows(2).all(|w| w[0] >= w[1]), "{:?}", times);
            }
            Ok(())
        })?;
    }

    #[test]
    fn any_query_string_is_words_or_a_reason(q in "\\PC{0,250}") {
        match Query::parse(&q) {
            Ok(query) => {
                prop_assert!(!query.terms.is_empty());
                runtime().block_on(async {
                    let (store, _) = store_with(&["pune order".to_owned()]).await;
                    store.search(&query, &SearchScope::default(), 5).await.map(drop)
                }).map_err(|e| TestCaseError::fail(format!("{q:?}: {e}")))?;
            }
            Err(why) => prop_assert!(!why.0.is_empty()),
        }
    }
}
