//! Message search, as pure functions: what words a message is found by,
//! what a query asks for, and which parts of a text it matched. The stores
//! index [`words`] (SQLite FTS5, a MongoDB multikey index) and translate a
//! [`Query`]; nothing here touches a store.
//!
//! Matching: case and Latin-script diacritics are ignored (`é` = `e`),
//! every word of the query must match, the last one also as a prefix
//! (`namepl` finds "nameplate"), any script. Han and kana characters are
//! words of their own (such text has no spaces), so `東京` is found in
//! `東京駅に着きました` as the two characters in a row.

use serde::Serialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::domain::Message;

/// Longest query, in characters; the rest is ignored.
pub const MAX_QUERY_CHARS: usize = 200;
/// Words of a query that count; the rest are ignored (each costs a lookup).
pub const MAX_QUERY_WORDS: usize = 16;
/// Longest word indexed, in characters (longer ones are cut: still found
/// by their start).
const MAX_WORD_CHARS: usize = 64;

/// A text's words, normalized: lowercase, Latin diacritics removed, split
/// at anything that is not a letter, digit or mark; each Han or kana
/// character a word of its own. In order, repeats kept.
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut latin_base = false;
    for c in text.nfkd() {
        if is_combining_mark(c) {
            // A diacritic on a Latin letter goes; in other scripts (e.g.
            // Devanagari vowel signs) a mark is part of the word.
            if !latin_base && !word.is_empty() {
                word.push(c);
            }
            continue;
        }
        latin_base = c.is_ascii_alphabetic() || ('\u{00C0}'..='\u{024F}').contains(&c);
        if is_ideograph(c) {
            flush(&mut word, &mut words);
            words.extend(c.to_lowercase().map(String::from));
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut words);
        }
    }
    flush(&mut word, &mut words);
    words
}

fn flush(word: &mut String, words: &mut Vec<String>) {
    if !word.is_empty() {
        words.push(word.chars().take(MAX_WORD_CHARS).collect());
        word.clear();
    }
}

/// Han ideographs and Japanese kana: written without spaces between words.
fn is_ideograph(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30FF}'   // hiragana, katakana
        | '\u{3400}'..='\u{4DBF}' // CJK extension A
        | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
        | '\u{F900}'..='\u{FAFF}' // compatibility ideographs
        | '\u{20000}'..='\u{2FA1F}')
}

/// What a message is found by: its text, caption, document file name and
/// the names of contacts it shares, as one text.
pub fn searchable_text(message: &Message) -> String {
    let mut parts = vec![message.body.clone()];
    if let Some(content) = &message.content {
        for field in ["caption", "filename"] {
            if let Some(text) = content.get(field).and_then(Value::as_str) {
                parts.push(text.to_owned());
            }
        }
        if let Some(contacts) = content.as_array() {
            for contact in contacts {
                if let Some(name) = contact
                    .pointer("/name/formatted_name")
                    .and_then(Value::as_str)
                {
                    parts.push(name.to_owned());
                }
            }
        }
    }
    parts.join("\n")
}

/// The distinct words a message is indexed by.
pub fn message_words(message: &Message) -> Vec<String> {
    let mut words = words(&searchable_text(message));
    words.sort();
    words.dedup();
    words
}

/// The words of a message in order, space-separated: what SQLite's FTS5
/// indexes (phrases of Han characters need the order).
pub fn indexed_text(message: &Message) -> String {
    words(&searchable_text(message)).join(" ")
}

/// Why a query cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// A parsed query: every term must match; the last also as a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Each term: a word, or several Han/kana characters that must follow
    /// each other (a phrase).
    pub terms: Vec<Vec<String>>,
    /// Whether the last word of the last term also matches as a prefix.
    pub last_is_prefix: bool,
}

impl Query {
    /// Reads `q`: its first [`MAX_QUERY_CHARS`] characters, as plain words
    /// (no operator, quote or `*` means anything).
    pub fn parse(q: &str) -> Result<Self, Invalid> {
        let q = q.trim();
        if q.chars().count() < 2 {
            return Err(Invalid("q must have at least 2 characters".to_owned()));
        }
        let q: String = q.chars().take(MAX_QUERY_CHARS).collect();
        let mut terms: Vec<Vec<String>> = Vec::new();
        // Han/kana characters in a row (one run of the text) form a phrase.
        for run in q.split(|c: char| !c.is_alphanumeric() && !is_combining_mark(c)) {
            let run_words = words(run);
            if run_words.is_empty() {
                continue;
            }
            let ideographic = run_words.iter().all(|w| w.chars().all(is_ideograph));
            if ideographic && run_words.len() > 1 {
                terms.push(run_words);
            } else {
                // A run mixing scripts: each of its words on its own.
                let mut phrase = Vec::new();
                for word in run_words {
                    if word.chars().all(is_ideograph) {
                        phrase.push(word);
                    } else {
                        if !phrase.is_empty() {
                            terms.push(std::mem::take(&mut phrase));
                        }
                        terms.push(vec![word]);
                    }
                }
                if !phrase.is_empty() {
                    terms.push(phrase);
                }
            }
        }
        terms.truncate(MAX_QUERY_WORDS);
        if terms.is_empty() {
            return Err(Invalid(
                "q has no word to search for (letters or digits)".to_owned(),
            ));
        }
        // A lone ideograph is a whole word already, and a single letter
        // would start too many; prefixes are for words being typed.
        let last_is_prefix = terms.last().is_some_and(|t| {
            t.len() == 1 && t[0].chars().count() > 1 && !t[0].chars().all(is_ideograph)
        });
        Ok(Self {
            terms,
            last_is_prefix,
        })
    }

    /// The FTS5 query: each term quoted (so nothing in it is syntax), the
    /// last as a prefix; all must match.
    pub fn fts5(&self) -> String {
        let last = self.terms.len() - 1;
        self.terms
            .iter()
            .enumerate()
            .map(|(n, term)| {
                let quoted = format!("\"{}\"", term.join(" ").replace('"', "\"\""));
                if n == last && self.last_is_prefix {
                    format!("{quoted}*")
                } else {
                    quoted
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The words that must be among a message's words exactly (every word
    /// of every term but a prefix), and the prefix, if any.
    pub fn exact_and_prefix(&self) -> (Vec<String>, Option<String>) {
        let mut exact: Vec<String> = self.terms.iter().flatten().cloned().collect();
        let prefix = if self.last_is_prefix {
            exact.pop()
        } else {
            None
        };
        exact.sort();
        exact.dedup();
        (exact, prefix)
    }

    /// Whether `text` matches: what the indexes find, checked on the text.
    pub fn matches(&self, text: &str) -> bool {
        let words = words(text);
        let last = self.terms.len() - 1;
        self.terms.iter().enumerate().all(|(n, term)| {
            let prefix = n == last && self.last_is_prefix;
            words.windows(term.len()).any(|window| {
                window
                    .iter()
                    .zip(term)
                    .enumerate()
                    .all(|(i, (word, wanted))| {
                        if prefix && i == term.len() - 1 {
                            word.starts_with(wanted.as_str())
                        } else {
                            word == wanted
                        }
                    })
            })
        })
    }

    /// `text` cut into pieces, those that match a query word marked: for a
    /// client to show the hit with its words highlighted (no markup to
    /// escape, no offsets to convert).
    pub fn highlight(&self, text: &str) -> Vec<Piece> {
        let wanted: Vec<(String, bool)> = {
            let last = self.terms.len() - 1;
            self.terms
                .iter()
                .enumerate()
                .flat_map(|(n, term)| {
                    let prefix = n == last && self.last_is_prefix;
                    term.iter().map(move |w| (w.clone(), prefix))
                })
                .collect()
        };
        let is_hit = |piece: &str| {
            let normalized = words(piece);
            normalized.len() == 1
                && wanted.iter().any(|(w, prefix)| {
                    if *prefix {
                        normalized[0].starts_with(w.as_str())
                    } else {
                        normalized[0] == *w
                    }
                })
        };
        let mut pieces: Vec<Piece> = Vec::new();
        let mut push = |text: &str, hit: bool| match pieces.last_mut() {
            Some(last) if last.hit == hit && !hit => last.text.push_str(text),
            _ => pieces.push(Piece {
                text: text.to_owned(),
                hit,
            }),
        };
        let mut word = String::new();
        for c in text.chars() {
            let joins = (c.is_alphanumeric() || is_combining_mark(c)) && !is_ideograph(c);
            if joins {
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                push(&word, is_hit(&word));
                word.clear();
            }
            let single = c.to_string();
            push(&single, is_ideograph(c) && is_hit(&single));
        }
        if !word.is_empty() {
            push(&word, is_hit(&word));
        }
        pieces
    }
}

/// A piece of a hit's text: `hit` when it matched a word of the query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Piece {
    pub text: String,
    pub hit: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Query {
        Query::parse(q).unwrap_or_else(|e| panic!("{q}: {e:?}"))
    }

    #[test]
    fn words_ignore_case_and_latin_diacritics_and_keep_other_scripts_whole() {
        assert_eq!(
            words("Crème Brûlée, NAÏVE café!"),
            ["creme", "brulee", "naive", "cafe"]
        );
        assert_eq!(words("पुणे में डिलीवरी"), ["पुणे", "में", "डिलीवरी"]);
        assert_eq!(words("مرحبا بالعالم"), ["مرحبا", "بالعالم"]);
        assert_eq!(words("東京駅"), ["東", "京", "駅"]);
        assert_eq!(words("order #4711-B"), ["order", "4711", "b"]);
        assert!(words("  \0 ** \"\" ").is_empty());
    }

    #[test]
    fn every_word_must_match_and_the_last_also_as_a_prefix() {
        let q = query("Pune deliv");
        assert!(q.matches("Is delivery to pune possible?"));
        assert!(!q.matches("Is delivery possible?"));
        assert!(!q.matches("pune-deliver is the word") || q.matches("pune deliver"));
        assert!(query("namepl").matches("a brass nameplate"));
        assert!(!query("plate name").matches("nameplate"));
        assert!(query("CAFÉ").matches("the cafe"));
        assert!(query("डिली").matches("पुणे में डिलीवरी"));
        assert!(query("東京").matches("明日東京駅に着きます"));
        assert!(!query("東京").matches("京都と東"));
    }

    #[test]
    fn operators_quotes_and_stars_are_plain_text() {
        for q in [
            "\"a\" OR b*",
            "NEAR(x y)",
            "a AND NOT b",
            "^col:x",
            "\0\0ab",
            "* * *ab",
        ] {
            match Query::parse(q) {
                Ok(query) => {
                    let fts = query.fts5();
                    for term in &query.terms {
                        for word in term {
                            assert!(
                                word.chars()
                                    .all(|c| c.is_alphanumeric() || is_combining_mark(c)),
                                "{q}: {word}"
                            );
                        }
                    }
                    assert!(!fts.contains("NEAR(") && !fts.contains('^'), "{q}: {fts}");
                }
                Err(Invalid(why)) => assert!(why.contains("word"), "{q}: {why}"),
            }
        }
        assert!(Query::parse("a").is_err());
        assert!(Query::parse("  ").is_err());
        assert!(Query::parse("!!").is_err());
        let long = "word ".repeat(100);
        assert_eq!(query(&long).terms.len(), MAX_QUERY_WORDS);
    }

    #[test]
    fn a_hit_is_cut_into_marked_pieces() {
        let pieces = query("pune deliv").highlight("Delivery to Pune?");
        let marked: Vec<(&str, bool)> = pieces.iter().map(|p| (p.text.as_str(), p.hit)).collect();
        assert_eq!(
            marked,
            [
                ("Delivery", true),
                (" to ", false),
                ("Pune", true),
                ("?", false)
            ]
        );
        let text: String = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, "Delivery to Pune?");
    }

    #[test]
    fn a_message_is_found_by_its_caption_file_name_and_shared_contacts() {
        let mut m = Message::outbound_text(
            "w1".into(),
            "4477",
            "1555".into(),
            "[Document: x]".into(),
            chrono::Utc::now(),
        );
        m.content =
            Some(serde_json::json!({"caption": "Invoice March", "filename": "rechnung-märz.pdf"}));
        let words = message_words(&m);
        for word in ["invoice", "march", "rechnung", "marz", "pdf"] {
            assert!(words.contains(&word.to_owned()), "{word}: {words:?}");
        }
        m.content = Some(serde_json::json!([{"name": {"formatted_name": "Ada Lovelace"}}]));
        assert!(message_words(&m).contains(&"lovelace".to_owned()));
    }
}
