//! The schema: created, and migrated from older versions, at open.

use std::collections::HashMap;

use chrono::Utc;
use rusqlite::{OptionalExtension, Transaction, params};

use wa_core::domain::{Conversation, Direction, Message, status_rank};
use wa_core::plan::PARKED_STATUS_TTL;
use wa_core::plan::counts::Counts;
use wa_store::error::Error;

use super::*;

/// Creates the tables (once) and moves a store written by an earlier
/// version to them.
pub(crate) fn prepare_in(t: &Transaction<'_>) -> Result<(), Error> {
    t.execute_batch(
        "CREATE TABLE IF NOT EXISTS messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            ts INTEGER NOT NULL,
            direction TEXT NOT NULL,
            status TEXT NOT NULL,
            status_rank INTEGER NOT NULL,
            contact_name TEXT,
            doc TEXT NOT NULL,
            -- WhatsApp's id; `id` (the key) differs for messages sent
            -- through the API, which get WhatsApp's id once accepted.
            message_id TEXT,
            -- The business number (also in `doc`): NULL for messages
            -- stored before numbers existed, until adopted.
            phone_number_id TEXT,
            -- The id of a media message's media object (`content.id`):
            -- finds the conversation a media id belongs to.
            media_id TEXT
         );
         DROP INDEX IF EXISTS messages_by_conversation;
         -- Mark-read of one conversation.
         CREATE INDEX IF NOT EXISTS messages_unread ON messages (conversation_id, direction, status);
         -- Summaries and stats keep counters and names now: no scans to serve.
         DROP INDEX IF EXISTS messages_by_status;
         DROP INDEX IF EXISTS messages_by_direction;
         DROP INDEX IF EXISTS messages_by_status_direction;
         DROP INDEX IF EXISTS messages_named;
         CREATE TABLE IF NOT EXISTS summaries (
            id TEXT PRIMARY KEY,
            sort_key TEXT NOT NULL,
            last_message_id TEXT NOT NULL,
            last_status_rank INTEGER NOT NULL,
            name_key TEXT NOT NULL,
            user_name TEXT NOT NULL,
            last_body TEXT NOT NULL,
            last_ts INTEGER NOT NULL,
            last_status TEXT NOT NULL,
            last_direction TEXT NOT NULL,
            participants TEXT NOT NULL,
            message_count INTEGER NOT NULL,
            unread_count INTEGER NOT NULL,
            last_inbound_ts INTEGER,
            phone_number_id TEXT,
            business_number TEXT
         );
         CREATE INDEX IF NOT EXISTS summaries_by_sort_key ON summaries (sort_key);
         -- The home number's stats counters (stats number empty, the ones
         -- kept before numbers existed), the count of summaries and of
         -- rejected items.
         CREATE TABLE IF NOT EXISTS counters (
            name TEXT PRIMARY KEY,
            n INTEGER NOT NULL
         );
         -- The stats counters of every other business number, and each
         -- number's count of summaries (`conversations`, under its own id,
         -- the home number's too: no stats field).
         CREATE TABLE IF NOT EXISTS number_counters (
            number TEXT NOT NULL,
            name TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (number, name)
         ) WITHOUT ROWID;
         -- Business numbers webhooks came for, with their display numbers.
         CREATE TABLE IF NOT EXISTS business_numbers (
            phone_number_id TEXT PRIMARY KEY,
            business_number TEXT
         );
         -- Single values: the home number (`home_number`).
         CREATE TABLE IF NOT EXISTS settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS pending_statuses (
            key TEXT PRIMARY KEY,
            message_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            parked_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS pending_by_message ON pending_statuses (message_id);
         CREATE TABLE IF NOT EXISTS webhook_payloads (
            id TEXT PRIMARY KEY,
            body BLOB NOT NULL,
            received_at INTEGER NOT NULL
         );
         -- Malformed webhook items, kept with the reason they were refused.
         CREATE TABLE IF NOT EXISTS rejected_items (
            id TEXT PRIMARY KEY,
            payload_id TEXT NOT NULL,
            path TEXT NOT NULL,
            reason TEXT NOT NULL,
            item TEXT NOT NULL,
            at INTEGER NOT NULL
         );
         -- Events committed with their changes, until relayed to the log.
         CREATE TABLE IF NOT EXISTS outbox (
            id TEXT PRIMARY KEY,
            n INTEGER NOT NULL,
            event TEXT NOT NULL,
            at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS outbox_by_time ON outbox (at, n);
         -- Messages waiting to be sent through WhatsApp.
         CREATE TABLE IF NOT EXISTS sends (
            id TEXT PRIMARY KEY,
            due INTEGER NOT NULL,
            doc TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS sends_by_due ON sends (due);
         -- Idempotency keys of POST /api/messages, with what they were used for.
         CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            at INTEGER NOT NULL
         );",
    )?;
    add_send_order(t)?;
    // Before the migrations: they save summary rows with these columns.
    add_number_columns(t)?;
    add_media_column(t)?;
    let version: i64 = t.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 3 {
        migrate_from_v1(t)?;
        migrate_to_v3(t)?;
    }
    if version < 4 {
        migrate_to_v4(t)?;
    }
    if version < 5 {
        migrate_to_v5(t)?;
    }
    if version < SCHEMA_VERSION {
        t.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    }
    // After the migrations: it reads messages in the current form.
    create_search_index(t)?;
    // Pages of a conversation, ordered like MongoDB's (by WhatsApp's id);
    // after the migrations (`message_id`), and on stores already at this
    // version, which had the index ordered by key.
    t.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_by_conversation_v3
            ON messages (conversation_id, ts DESC, message_id DESC);",
    )?;
    let ttl = i64::try_from(PARKED_STATUS_TTL.as_millis()).unwrap_or(i64::MAX);
    let expired_before = Utc::now().timestamp_millis() - ttl;
    t.prepare_cached("DELETE FROM pending_statuses WHERE parked_at < ?1")?
        .execute([expired_before])?;
    Ok(())
}

/// Whether a table of an older store has the column yet.
pub(crate) fn has_column(t: &Transaction<'_>, table: &str, column: &str) -> rusqlite::Result<bool> {
    t.prepare(&format!(
        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
    ))?
    .exists([column])
}

/// Sends carry their conversation and place in its queue (columns added
/// to stores created before; sends queued then keep their due time's order).
pub(crate) fn add_send_order(t: &Transaction<'_>) -> Result<(), Error> {
    if !has_column(t, "sends", "ord")? {
        // `ord`: when it was queued, in microseconds (its due time's for
        // sends queued without the time).
        t.execute_batch(
            "ALTER TABLE sends ADD COLUMN conversation_id TEXT NOT NULL DEFAULT '';
             ALTER TABLE sends ADD COLUMN ord INTEGER NOT NULL DEFAULT 0;
             UPDATE sends SET conversation_id = json_extract(doc, '$.conversationId'),
                ord = COALESCE(
                    CAST((julianday(json_extract(doc, '$.queuedAt')) - 2440587.5) * 86400000000 AS INTEGER),
                    due * 1000);",
        )?;
    }
    if !has_column(t, "sends", "held")? {
        t.execute_batch("ALTER TABLE sends ADD COLUMN held INTEGER NOT NULL DEFAULT 0;")?;
    }
    t.execute_batch(
        "CREATE INDEX IF NOT EXISTS sends_by_conversation ON sends (conversation_id, ord, id);",
    )?;
    Ok(())
}

/// Summaries and messages carry their business number (columns added to
/// stores created before numbers; NULL until `adopt_numbers`).
pub(crate) fn add_number_columns(t: &Transaction<'_>) -> Result<(), Error> {
    for (table, column) in [
        ("summaries", "phone_number_id"),
        ("summaries", "business_number"),
        ("messages", "phone_number_id"),
    ] {
        if !has_column(t, table, column)? {
            t.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
        }
    }
    t.execute_batch(
        // A number's conversations, newest first (`conversations(page,
        // Some(numbers))`), and its count; also finds untagged summaries.
        "CREATE INDEX IF NOT EXISTS summaries_by_number ON summaries (phone_number_id, sort_key);
         -- Messages not yet given a number: few (none once adopted), so a
         -- partial index that costs new messages nothing.
         CREATE INDEX IF NOT EXISTS messages_without_number ON messages (id)
            WHERE phone_number_id IS NULL;",
    )?;
    Ok(())
}

/// Messages carry their media object's id (column added to stores
/// created before; filled by [`fill_media_ids_step`]), found by a partial
/// index that costs messages without media nothing.
pub(crate) fn add_media_column(t: &Transaction<'_>) -> Result<(), Error> {
    if !has_column(t, "messages", "media_id")? {
        t.execute_batch("ALTER TABLE messages ADD COLUMN media_id TEXT")?;
    }
    t.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_by_media ON messages (media_id)
            WHERE media_id IS NOT NULL;",
    )?;
    Ok(())
}

/// The `settings` row of the media id fill: the last message row id done
/// (absent: nothing to fill).
const MEDIA_IDS_AFTER: &str = "media_ids_after";

/// Messages [`fill_media_ids_step`] reads per transaction.
pub(crate) const MEDIA_IDS_BATCH: i64 = 1000;

/// Version 5 counts each number's conversations (`number_counters`,
/// `conversations`) instead of reading its summaries, and finds media by
/// id: the counters of the summaries tagged so far are computed here,
/// once (those adopted later are counted as adopted), and the media ids
/// of stored messages are filled in steps after this transaction, from
/// the cursor recorded here (so an interrupted fill goes on at the next
/// start).
pub(crate) fn migrate_to_v5(t: &Transaction<'_>) -> Result<(), Error> {
    t.prepare_cached(
        "INSERT INTO number_counters (number, name, n)
         SELECT phone_number_id, ?1, COUNT(*) FROM summaries
         WHERE phone_number_id IS NOT NULL GROUP BY phone_number_id
         ON CONFLICT (number, name) DO UPDATE SET n = excluded.n",
    )?
    .execute([CONVERSATIONS_COUNTER])?;
    t.prepare_cached("INSERT OR REPLACE INTO settings (name, value) VALUES (?1, ?2)")?
        .execute(params![MEDIA_IDS_AFTER, i64::MIN.to_string()])?;
    Ok(())
}

/// One step of filling the media ids of messages stored before version
/// 5: up to [`MEDIA_IDS_BATCH`] messages after the recorded cursor.
/// Returns whether more remain.
pub(crate) fn fill_media_ids_step(t: &Transaction<'_>) -> Result<bool, Error> {
    let after: Option<String> = t
        .prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([MEDIA_IDS_AFTER], |r| r.get(0))
        .optional()?;
    let Some(after) = after else {
        return Ok(false);
    };
    let after: i64 = after.parse().unwrap_or(i64::MIN);
    let rows: Vec<(i64, String)> = t
        .prepare_cached("SELECT rowid, doc FROM messages WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?
        .query_map(params![after, MEDIA_IDS_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut set = t.prepare_cached("UPDATE messages SET media_id = ?2 WHERE rowid = ?1")?;
    for (row, doc) in &rows {
        let message: Message = from_json(doc)?;
        if let Some(media_id) = message.media_id() {
            set.execute(params![row, media_id])?;
        }
    }
    let last = rows.last().map(|(row, _)| *row);
    match last {
        Some(last) if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= MEDIA_IDS_BATCH => {
            t.prepare_cached("UPDATE settings SET value = ?2 WHERE name = ?1")?
                .execute(params![MEDIA_IDS_AFTER, last.to_string()])?;
            Ok(true)
        }
        _ => {
            t.prepare_cached("DELETE FROM settings WHERE name = ?1")?
                .execute([MEDIA_IDS_AFTER])?;
            Ok(false)
        }
    }
}

/// Version 4 has business numbers: a message's number, kept in its
/// document by a version that wrote it there before the column existed,
/// is copied to the column (messages without one stay NULL until
/// `adopt_numbers` gives them the home number's). Ids do not change.
pub(crate) fn migrate_to_v4(t: &Transaction<'_>) -> Result<(), Error> {
    t.execute_batch(
        "UPDATE messages SET phone_number_id = json_extract(doc, '$.phoneNumberId')
         WHERE phone_number_id IS NULL AND json_extract(doc, '$.phoneNumberId') IS NOT NULL;",
    )?;
    Ok(())
}

/// Version 3 keeps WhatsApp's id apart from a message's key, and the time
/// of each conversation's newest inbound message.
pub(crate) fn migrate_to_v3(t: &Transaction<'_>) -> Result<(), Error> {
    if !has_column(t, "messages", "message_id")? {
        t.execute_batch("ALTER TABLE messages ADD COLUMN message_id TEXT")?;
    }
    if !has_column(t, "summaries", "last_inbound_ts")? {
        t.execute_batch("ALTER TABLE summaries ADD COLUMN last_inbound_ts INTEGER")?;
    }
    t.execute_batch(
        "UPDATE messages SET message_id = id WHERE message_id IS NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS messages_by_message_id ON messages (message_id);
         UPDATE summaries SET last_inbound_ts = (
            SELECT MAX(ts) FROM messages
            WHERE conversation_id = summaries.id AND direction = 'inbound'
         ) WHERE last_inbound_ts IS NULL;",
    )?;
    Ok(())
}

/// Version 1 kept summaries as JSON in `conversations` (counts in
/// `conversation_counts`, or only in the JSON before that) and counted the
/// stats on every request. Builds the summaries and counters from them,
/// once; nothing to do on a new store.
pub(crate) fn migrate_from_v1(t: &Transaction<'_>) -> Result<(), Error> {
    let table_exists = |name: &str| -> rusqlite::Result<bool> {
        t.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])
    };
    if !table_exists("conversations")? {
        return Ok(());
    }
    tracing::info!("migrating the SQLite store: conversation summaries and counters");
    let counts: HashMap<String, (i64, i64)> = if table_exists("conversation_counts")? {
        t.prepare("SELECT id, messages, unread FROM conversation_counts")?
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        HashMap::new()
    };
    let old: Vec<(String, String)> = t
        .prepare("SELECT sort_key, doc FROM conversations")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (sort_key, doc) in old {
        let c: Conversation = from_json(&doc)?;
        let (message_count, unread_count) = counts
            .get(&c.conversation_id)
            .copied()
            .unwrap_or((c.message_count, c.unread_count));
        SummaryRow {
            id: c.conversation_id.clone(),
            // A name shown came from the last message or an earlier one.
            name_key: if c.user_name.starts_with('+') {
                String::new()
            } else {
                sort_key.clone()
            },
            sort_key,
            last_message_id: c.last_message_id,
            last_status_rank: status_rank(&c.last_message_status).unwrap_or(0),
            user_name: c.user_name,
            last_body: c.last_message_body,
            last_ts: c.last_timestamp.timestamp_millis(),
            last_status: c.last_message_status.into(),
            last_direction: direction_name(c.last_message_direction).to_owned(),
            participants: to_json(&c.participants)?,
            message_count,
            unread_count,
            last_inbound_ts: None,
            phone_number_id: None,
            business_number: None,
        }
        .save(t)?;
        add_counter(t, CONVERSATIONS_COUNTER, 1)?;
    }
    let mut totals = Counts::default();
    let groups: Vec<(String, String, i64)> = t
        .prepare("SELECT status, direction, COUNT(*) FROM messages GROUP BY status, direction")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (status, direction, n) in groups {
        let direction = if direction == "outbound" {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        for (name, one) in Counts::of(direction, &status).fields() {
            totals.add_field(&name, one * n);
        }
    }
    for (name, n) in totals.fields() {
        add_counter(t, &name, n)?;
    }
    t.execute_batch("DROP TABLE conversations; DROP TABLE IF EXISTS conversation_counts;")?;
    Ok(())
}
