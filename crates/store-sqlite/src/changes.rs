//! Reading what a batch needs (`load_in`) and applying a change set
//! (`apply_in`) inside one transaction, guards checked there.

use std::collections::HashMap;

use chrono::Utc;
use rusqlite::{Transaction, params};

use wa_core::domain::{Message, RECEIVED, RawPayload, StatusChange, is_local_id};
use wa_core::plan::forward::Forward;
use wa_core::plan::{ChangeSet, ConversationChange, Known, Lookup, Stored};
use wa_store::error::Error;

use super::*;

/// Applies a summary change: counters always, the rest only if newer.
pub(crate) fn apply_summary(t: &Transaction<'_>, change: &ConversationChange) -> Result<(), Error> {
    let stored = SummaryRow::load(t, &change.conversation_id)?;
    let mut row = match (stored, change.create) {
        (None, true) => {
            add_counter(t, CONVERSATIONS_COUNTER, 1)?;
            if let Some(number) = &change.phone_number_id {
                add_conversations(t, number, 1)?;
            }
            let mut row = SummaryRow::empty(&change.conversation_id);
            // A summary's number never changes: set once, here.
            row.phone_number_id.clone_from(&change.phone_number_id);
            row.business_number.clone_from(&change.business_number);
            row
        }
        (Some(row), false) => row,
        (Some(_), true) => {
            return Err(Error::conflict(format!(
                "summary of {} created meanwhile",
                change.conversation_id
            )));
        }
        (None, false) => {
            return Err(Error::conflict(format!(
                "summary of {} is gone",
                change.conversation_id
            )));
        }
    };
    row.message_count += change.counts.messages;
    row.unread_count += change.counts.unread;
    // What only moves forward, each by its one guard (wa_core's `forward`),
    // against the row as the previous writes left it.
    for write in change.forward() {
        // A new summary takes all of them (its name may have no key).
        if !change.create && !write.holds(&row.summary()) {
            continue;
        }
        match write {
            Forward::Last(last) => row.set_last(last)?,
            Forward::Name(name) => {
                row.user_name.clone_from(&name.name);
                row.name_key.clone_from(&name.key);
            }
            Forward::Status(moved) => {
                moved.status.as_str().clone_into(&mut row.last_status);
                row.last_status_rank = moved.rank;
                if moved.renamed_from.is_some() {
                    row.last_message_id.clone_from(&moved.message_id);
                    row.sort_key.clone_from(&moved.key);
                }
            }
            Forward::Inbound(at) => row.last_inbound_ts = Some(at.timestamp_millis()),
        }
    }
    row.save(t)?;
    Ok(())
}

/// Counter of summaries: in `counters`, of all of them (those of no
/// number yet too); in `number_counters`, of one number's (the home
/// number's under its own id).
pub(crate) const CONVERSATIONS_COUNTER: &str = "conversations";
/// Counter of rejected webhook items.
pub(crate) const REJECTED_COUNTER: &str = "rejected";

pub(crate) fn add_counter(t: &Transaction<'_>, name: &str, n: i64) -> rusqlite::Result<()> {
    t.prepare_cached(
        "INSERT INTO counters (name, n) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET n = n + ?2",
    )?
    .execute(params![name, n])
    .map(drop)
}

/// Adds to a stats counter of stats number `number` (see
/// `wa_core::numbers::stats_number`): `""`, the home number's, are the
/// counters kept before numbers existed, where they stay.
pub(crate) fn add_stats_counter(
    t: &Transaction<'_>,
    number: &str,
    name: &str,
    n: i64,
) -> rusqlite::Result<()> {
    if number.is_empty() {
        return add_counter(t, name, n);
    }
    add_number_counter(t, number, name, n)
}

/// Adds to the count of a number's summaries.
pub(crate) fn add_conversations(t: &Transaction<'_>, number: &str, n: i64) -> rusqlite::Result<()> {
    add_number_counter(t, number, CONVERSATIONS_COUNTER, n)
}

fn add_number_counter(
    t: &Transaction<'_>,
    number: &str,
    name: &str,
    n: i64,
) -> rusqlite::Result<()> {
    t.prepare_cached(
        "INSERT INTO number_counters (number, name, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (number, name) DO UPDATE SET n = n + ?3",
    )?
    .execute(params![number, name, n])
    .map(drop)
}

pub(crate) fn archive(t: &Transaction<'_>, payloads: &[RawPayload]) -> rusqlite::Result<()> {
    let mut insert = t.prepare_cached(
        "INSERT OR IGNORE INTO webhook_payloads (id, body, received_at) VALUES (?1, ?2, ?3)",
    )?;
    for p in payloads {
        insert.execute(params![
            p.id,
            p.body.as_ref(),
            p.received_at.timestamp_millis()
        ])?;
    }
    Ok(())
}

pub(crate) fn apply_in(
    t: &Transaction<'_>,
    changes: &ChangeSet,
    indexed: bool,
) -> Result<(), Error> {
    archive(t, &changes.payloads)?;
    let mut reject = t.prepare_cached(
        "INSERT OR IGNORE INTO rejected_items (id, payload_id, path, reason, item, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for r in &changes.rejected {
        let kept = reject.execute(params![
            r.id,
            r.payload_id,
            r.path,
            r.reason,
            to_json(&r.item)?,
            Utc::now().timestamp_millis()
        ])?;
        add_counter(t, REJECTED_COUNTER, i64::try_from(kept).unwrap_or(0))?;
    }
    let mut insert = t.prepare_cached(
        "INSERT OR IGNORE INTO messages
            (id, conversation_id, ts, direction, status, status_rank, doc, message_id,
             phone_number_id, media_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for m in &changes.inserts {
        let inserted = insert.execute(params![
            m.id,
            m.conversation_id,
            m.timestamp.timestamp_millis(),
            direction_name(m.direction),
            m.status.as_str(),
            m.status.stored_rank(),
            to_json(m)?,
            m.message_id,
            m.phone_number_id,
            m.media_id()
        ])?;
        if inserted == 0 {
            return Err(Error::conflict(format!(
                "{} was stored meanwhile",
                m.message_id
            )));
        }
        // In the same transaction: searchable once `GET` shows it.
        if indexed {
            index_for_search(t, m)?;
        }
    }
    let mut update = t.prepare_cached(
        "UPDATE messages SET status = ?2, status_rank = ?3, doc = ?4, message_id = ?6
         WHERE id = ?1 AND status_rank = ?5",
    )?;
    for u in &changes.updates {
        let m = &u.message;
        let updated = update.execute(params![
            m.id,
            m.status.as_str(),
            m.status.stored_rank(),
            to_json(m)?,
            u.expected_rank,
            m.message_id
        ])?;
        if updated == 0 {
            return Err(Error::conflict(format!(
                "{} changed meanwhile",
                m.message_id
            )));
        }
    }
    let now = Utc::now().timestamp_millis();
    for change in &changes.park {
        t.prepare_cached(
            "INSERT OR IGNORE INTO pending_statuses (key, message_id, doc, parked_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            wa_core::plan::status::parked_key(change),
            change.message_id,
            to_json(change)?,
            now
        ])?;
    }
    for key in &changes.unpark {
        t.prepare_cached("DELETE FROM pending_statuses WHERE key = ?1")?
            .execute([key])?;
    }
    for change in &changes.conversations {
        apply_summary(t, change)?;
    }
    for change in &changes.stats {
        for (name, n) in change.counts.fields() {
            add_stats_counter(t, &change.shard.number, &name, n)?;
        }
    }
    let mut outbox = t.prepare_cached(
        "INSERT OR IGNORE INTO outbox (id, n, event, at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (n, event) in changes.events.iter().enumerate() {
        outbox.execute(params![event.id(), n as i64, to_json(event)?, now])?;
    }
    for send in &changes.enqueue {
        t.prepare_cached(
            "INSERT OR IGNORE INTO sends (id, due, doc, conversation_id, ord, held)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            send.id,
            send.due.timestamp_millis(),
            to_json(send)?,
            send.conversation_id,
            send.order(),
            send.held
        ])?;
    }
    for id in &changes.dequeue {
        t.prepare_cached("DELETE FROM sends WHERE id = ?1")?
            .execute([id])?;
    }
    // Settling and journals are for stores that apply in several steps.
    Ok(())
}

pub(crate) fn load_in(t: &Transaction<'_>, lookup: &Lookup) -> Result<Known, Error> {
    let mut known = Known {
        atomic: true,
        ..Known::default()
    };
    let (messages, mut conversation_ids): (Vec<Message>, Vec<String>) = match lookup {
        Lookup::Items {
            message_ids,
            conversation_ids,
        } => {
            known.parked = docs_in::<StatusChange>(
                t,
                "SELECT doc FROM pending_statuses WHERE message_id IN ({})",
                message_ids,
            )?;
            // By WhatsApp's id, or by the key of one we sent (a status may
            // name it by key once it has WhatsApp's id).
            let keys: Vec<String> = message_ids
                .iter()
                .filter(|id| is_local_id(id))
                .cloned()
                .collect();
            let mut messages: Vec<Message> = docs_in(
                t,
                "SELECT doc FROM messages WHERE message_id IN ({})",
                message_ids,
            )?;
            if !keys.is_empty() {
                let by_key: Vec<Message> =
                    docs_in(t, "SELECT doc FROM messages WHERE id IN ({})", &keys)?;
                for message in by_key {
                    if !messages.iter().any(|m| m.id == message.id) {
                        messages.push(message);
                    }
                }
            }
            (messages, conversation_ids.clone())
        }
        Lookup::Unread { conversation_id } => {
            // `wa_core::domain::is_unread`, in SQL.
            let docs: Vec<String> = t
                .prepare_cached(
                    "SELECT doc FROM messages
                     WHERE conversation_id = ?1 AND direction = 'inbound' AND status = ?2",
                )?
                .query_map(params![conversation_id, RECEIVED], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let messages = docs
                .iter()
                .map(|d| from_json(d))
                .collect::<rusqlite::Result<_>>()?;
            (messages, vec![conversation_id.clone()])
        }
    };
    conversation_ids.extend(messages.iter().map(|m| m.conversation_id.clone()));
    conversation_ids.sort();
    conversation_ids.dedup();
    for id in &conversation_ids {
        if let Some(row) = SummaryRow::load(t, id)? {
            known.summaries.insert(id.clone(), row.summary());
        }
    }
    // Applied in one transaction: every stored message is settled.
    known.messages = messages
        .into_iter()
        .map(|message| {
            let settled = Some(message.status.to_string());
            (message.message_id.clone(), Stored { message, settled })
        })
        .collect::<HashMap<_, _>>();
    Ok(known)
}
