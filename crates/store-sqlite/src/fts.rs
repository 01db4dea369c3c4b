//! The full-text index (FTS5): built from `wa_core::search`'s words,
//! one row per message, newest first.

use rusqlite::{OptionalExtension, Transaction, params};

use wa_core::domain::Message;
use wa_core::search;
use wa_store::error::Error;

use super::*;

/// The search index (FTS5), created once; messages stored before it
/// existed are indexed then. Each row's id orders it by the message's
/// time, newest first, so a page of the newest hits is the first rows of
/// each word's list, with no sort.
pub(crate) fn create_search_index(t: &Transaction<'_>) -> Result<(), Error> {
    let exists: i64 = t.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'message_search'",
        [],
        |r| r.get(0),
    )?;
    if exists > 0 {
        return Ok(());
    }
    t.execute_batch(
        // `words`: the message's words, normalized and split in Rust (see
        // `wa_core::search`), space-separated; `scope`: tokens of its
        // conversation and number. The `ascii` tokenizer splits at ASCII
        // spaces and punctuation only, so each of those words stays whole
        // (`unicode61` would split Devanagari at its vowel signs).
        // No `prefix` indexes: measured, they made storing 45% slower
        // instead of 28% and searches no faster (BENCHMARKS.md, "Search").
        "CREATE VIRTUAL TABLE message_search USING fts5(
            words, scope, key UNINDEXED,
            tokenize = 'ascii'
         );",
    )?;
    // One message at a time from a cursor: memory stays flat however many.
    let mut all = t.prepare("SELECT doc FROM messages")?;
    let mut rows = all.query([])?;
    while let Some(row) = rows.next()? {
        index_for_search(t, &from_json::<Message>(&row.get::<_, String>(0)?)?)?;
    }
    Ok(())
}

/// Row ids of the search index one millisecond has: WhatsApp's times are
/// whole seconds, so a busy second's messages share 1,000 × this.
pub(crate) const SEARCH_SLOTS: i64 = 1 << 20;

/// Indexes a new message for search, under a row id ordered by its time,
/// newest first: the next free one of its millisecond (one index lookup).
pub(crate) fn index_for_search(t: &Transaction<'_>, m: &Message) -> rusqlite::Result<()> {
    // Newer messages get smaller row ids: FTS5 reads a word's list forwards
    // cheaply (backwards it loads each segment's whole list), and a page of
    // the newest hits is the first rows.
    let last_millis = i64::MAX / SEARCH_SLOTS - 1;
    let millis = m.timestamp.timestamp_millis().clamp(0, last_millis);
    let base = (last_millis - millis) * SEARCH_SLOTS;
    let last: Option<i64> = t
        .prepare_cached(
            "SELECT rowid FROM message_search WHERE rowid BETWEEN ?1 AND ?2
             ORDER BY rowid DESC LIMIT 1",
        )?
        .query_row([base, base + SEARCH_SLOTS - 1], |r| r.get(0))
        .optional()?;
    let row = last.map_or(base, |last| last + 1);
    if row >= base + SEARCH_SLOTS {
        // Over a million messages in one millisecond: this one is not found.
        tracing::warn!(id = %m.id, "too many messages in one millisecond to index this one for search");
        return Ok(());
    }
    t.prepare_cached(
        "INSERT INTO message_search (rowid, words, scope, key) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        row,
        search::indexed_text(m),
        search_scope(m.conversation_id.as_str(), m.phone_number_id.as_deref()),
        m.id
    ])?;
    Ok(())
}

/// The scope tokens of a message: its conversation and its number, hashed
/// to letters and digits (what the tokenizer keeps whole).
pub(crate) fn search_scope(conversation_id: &str, phone_number_id: Option<&str>) -> String {
    format!(
        "{} {}",
        scope_token('c', conversation_id),
        scope_token('p', phone_number_id.unwrap_or_default())
    )
}

pub(crate) fn scope_token(kind: char, id: &str) -> String {
    use sha2::Digest;
    format!(
        "{kind}{}",
        &hex::encode(sha2::Sha256::digest(id.as_bytes()))[..20]
    )
}
