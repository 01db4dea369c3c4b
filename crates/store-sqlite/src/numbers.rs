//! Several business numbers: the home number, the numbers recorded, what
//! each holds, and giving data stored before numbers existed a number.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{OptionalExtension, Transaction, params};

use wa_core::domain::{Conversation, Stats};
use wa_core::numbers::{BusinessNumber, number_of, stats_numbers};
use wa_core::plan::counts::Counts;
use wa_store::error::Error;

use super::*;

/// The `settings` row of the home number.
const HOME_NUMBER: &str = "home_number";

/// Rows `adopt_numbers` tags per transaction: the writer serves other
/// units between them.
pub(crate) const ADOPT_BATCH: i64 = 1000;

pub(crate) fn home_in(t: &Transaction<'_>) -> rusqlite::Result<Option<String>> {
    t.prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([HOME_NUMBER], |r| r.get(0))
        .optional()
}

/// The home number recorded, else `candidate` recorded now (the first
/// caller's candidate wins: one writer, and `INSERT OR IGNORE`).
pub(crate) fn claim_home(
    t: &Transaction<'_>,
    candidate: Option<&str>,
) -> rusqlite::Result<Option<String>> {
    if let Some(candidate) = candidate {
        t.prepare_cached("INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)")?
            .execute([HOME_NUMBER, candidate])?;
    }
    home_in(t)
}

/// Records numbers; a number's latest non-empty display number is kept
/// (a webhook without one changes nothing, so repeats write nothing).
pub(crate) fn note_numbers_in(
    t: &Transaction<'_>,
    numbers: &[(String, Option<String>)],
) -> rusqlite::Result<()> {
    let mut note = t.prepare_cached(
        "INSERT INTO business_numbers (phone_number_id, business_number)
         VALUES (?1, NULLIF(?2, ''))
         ON CONFLICT (phone_number_id) DO UPDATE SET business_number = excluded.business_number
         WHERE excluded.business_number IS NOT NULL
           AND business_number IS NOT excluded.business_number",
    )?;
    for (number, display) in numbers {
        note.execute(params![number, display])?;
    }
    Ok(())
}

/// The display number recorded for a number.
fn display_of(t: &Transaction<'_>, number: &str) -> rusqlite::Result<Option<String>> {
    Ok(
        t.prepare_cached(
            "SELECT business_number FROM business_numbers WHERE phone_number_id = ?1",
        )?
        .query_row([number], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten(),
    )
}

/// The distinct numbers of a list, in order.
fn distinct(numbers: &[String]) -> BTreeSet<&str> {
    numbers.iter().map(String::as_str).collect()
}

/// A page of the summaries of some numbers, newest first: one indexed
/// query per number (`summaries_by_number`), each at most a page, merged.
pub(crate) fn conversations_of(
    t: &Transaction<'_>,
    numbers: &[String],
    before: &str,
    limit: i64,
) -> rusqlite::Result<Vec<Conversation>> {
    let mut query = t.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM summaries
         WHERE phone_number_id = ?1 AND sort_key < ?2
         ORDER BY sort_key DESC LIMIT ?3"
    ))?;
    let mut rows = Vec::new();
    for number in distinct(numbers) {
        let page = query.query_map(params![number, before, limit], SummaryRow::read)?;
        for row in page {
            rows.push(row?);
        }
    }
    rows.sort_by(|a, b| b.sort_key.cmp(&a.sort_key));
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    rows.iter().map(SummaryRow::conversation).collect()
}

/// Summaries of one number: its counter (kept as they are created with
/// the number or adopted by it), not a count of its index range.
fn conversations_count(t: &Transaction<'_>, number: &str) -> rusqlite::Result<i64> {
    Ok(
        t.prepare_cached("SELECT n FROM number_counters WHERE number = ?1 AND name = ?2")?
            .query_row([number, CONVERSATIONS_COUNTER], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

fn counter(t: &Transaction<'_>, name: &str) -> rusqlite::Result<i64> {
    Ok(t.prepare_cached("SELECT n FROM counters WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Adds the stats counters of stats number `""` (the home number's).
fn add_home_counts(t: &Transaction<'_>, counts: &mut Counts) -> rusqlite::Result<()> {
    let rows = t
        .prepare_cached("SELECT name, n FROM counters")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // The summary and rejected counters are no stats field: ignored.
    for (name, n) in rows {
        counts.add_field(&name, n);
    }
    Ok(())
}

/// Adds the stats counters of one (non-empty) stats number.
fn add_number_counts(
    t: &Transaction<'_>,
    number: &str,
    counts: &mut Counts,
) -> rusqlite::Result<()> {
    let rows = t
        .prepare_cached("SELECT name, n FROM number_counters WHERE number = ?1")?
        .query_map([number], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (name, n) in rows {
        counts.add_field(&name, n);
    }
    Ok(())
}

/// The stats counters that count for these numbers (see
/// `wa_core::numbers::stats_numbers`).
fn counts_of(
    t: &Transaction<'_>,
    numbers: &[String],
    home: Option<&str>,
) -> rusqlite::Result<Counts> {
    let mut counts = Counts::default();
    for key in stats_numbers(numbers, home) {
        if key.is_empty() {
            add_home_counts(t, &mut counts)?;
        } else {
            add_number_counts(t, key, &mut counts)?;
        }
    }
    Ok(counts)
}

pub(crate) fn stats_in(t: &Transaction<'_>, numbers: Option<&[String]>) -> rusqlite::Result<Stats> {
    let (counts, conversations) = match numbers {
        None => {
            let mut counts = Counts::default();
            add_home_counts(t, &mut counts)?;
            // One row per number and counter: a handful.
            let rows = t
                .prepare_cached("SELECT name, SUM(n) FROM number_counters GROUP BY name")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (name, n) in rows {
                counts.add_field(&name, n);
            }
            (counts, counter(t, CONVERSATIONS_COUNTER)?)
        }
        Some(numbers) => {
            let home = home_in(t)?;
            let counts = counts_of(t, numbers, home.as_deref())?;
            let mut conversations = 0;
            for number in distinct(numbers) {
                conversations += conversations_count(t, number)?;
            }
            (counts, conversations)
        }
    };
    let mut stats = counts.to_stats(conversations);
    stats.rejected_items = counter(t, REJECTED_COUNTER)?;
    Ok(stats)
}

/// The numbers recorded and the home number, by phone number id.
pub(crate) fn numbers_in(t: &Transaction<'_>) -> rusqlite::Result<Vec<BusinessNumber>> {
    let mut numbers: BTreeMap<String, Option<String>> = t
        .prepare_cached("SELECT phone_number_id, business_number FROM business_numbers")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let home = home_in(t)?;
    if let Some(home) = &home {
        numbers.entry(home.clone()).or_default();
    }
    let mut listed = Vec::with_capacity(numbers.len());
    for (number, display) in numbers {
        let unread = counts_of(t, std::slice::from_ref(&number), home.as_deref())?.unread;
        listed.push(BusinessNumber {
            conversations: conversations_count(t, &number)?,
            phone_number_id: number,
            business_number: display,
            unread_count: unread,
        });
    }
    Ok(listed)
}

/// What `adopt_numbers` found: whether anything lacks a number, and the
/// home number (recorded now if it was not).
pub(crate) struct Adoption {
    pub(crate) untagged: bool,
    pub(crate) home: Option<String>,
}

/// Whether anything lacks a number; if so, records the home number if
/// none is: `default`, else the number of some stored message.
pub(crate) fn begin_adoption(
    t: &Transaction<'_>,
    default: Option<&str>,
) -> rusqlite::Result<Adoption> {
    let untagged: bool = t.query_row(
        "SELECT EXISTS (SELECT 1 FROM summaries WHERE phone_number_id IS NULL)
             OR EXISTS (SELECT 1 FROM messages WHERE phone_number_id IS NULL)
             OR EXISTS (SELECT 1 FROM sends WHERE json_extract(doc, '$.phoneNumberId') IS NULL)",
        [],
        |r| r.get(0),
    )?;
    let recorded = home_in(t)?;
    if !untagged || recorded.is_some() {
        return Ok(Adoption {
            untagged,
            home: recorded,
        });
    }
    let candidate = match default {
        Some(default) => Some(default.to_owned()),
        // The first by key, as the reference store finds it.
        None => t
            .prepare_cached(
                "SELECT phone_number_id FROM messages WHERE phone_number_id IS NOT NULL
                 ORDER BY id LIMIT 1",
            )?
            .query_row([], |r| r.get(0))
            .optional()?,
    };
    Ok(Adoption {
        untagged,
        home: claim_home(t, candidate.as_deref())?,
    })
}

/// What an adoption step tags.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AdoptStep {
    /// Search index rows still scoped to no number, by row id.
    Search,
    /// Messages, by key.
    Messages,
    /// Summaries, by sort key and row id.
    Summaries,
    /// Queued sends (a queue: few).
    Sends,
}

/// One step of adoption: up to [`ADOPT_BATCH`] rows of one kind after
/// `cursor`; returns the cursor of the next step (`None`: this kind is
/// done). Rows whose id names no number (no home number, or a malformed
/// id) stay untagged and are stepped over.
pub(crate) fn adopt_step(
    t: &Transaction<'_>,
    step: AdoptStep,
    home: Option<&str>,
    cursor: &Cursor,
) -> Result<Option<Cursor>, Error> {
    Ok(match step {
        AdoptStep::Search => adopt_search(t, home, cursor.row())?,
        AdoptStep::Messages => adopt_messages(t, home, cursor.key())?,
        AdoptStep::Summaries => adopt_summaries(t, home, cursor.place())?,
        AdoptStep::Sends => {
            adopt_sends(t, home)?;
            None
        }
    })
}

/// Where an adoption step goes on from.
#[derive(Debug, Clone)]
pub(crate) enum Cursor {
    Start,
    Row(i64),
    Key(String),
    Place(String, i64),
}

impl Cursor {
    fn row(&self) -> i64 {
        match self {
            Self::Row(row) => *row,
            _ => i64::MIN,
        }
    }

    fn place(&self) -> (&str, i64) {
        match self {
            Self::Place(key, row) => (key, *row),
            _ => ("", i64::MIN),
        }
    }

    fn key(&self) -> &str {
        match self {
            Self::Key(key) => key,
            _ => "",
        }
    }
}

/// Search rows of messages indexed with no number get their number's
/// scope token (found by the empty number's token: no scan).
fn adopt_search(
    t: &Transaction<'_>,
    home: Option<&str>,
    after: i64,
) -> rusqlite::Result<Option<Cursor>> {
    let expression = format!("scope : \"{}\"", scope_token('p', ""));
    let rows: Vec<(i64, String)> = t
        .prepare_cached(
            "SELECT rowid, key FROM message_search
             WHERE message_search MATCH ?1 AND rowid > ?2 ORDER BY rowid LIMIT ?3",
        )?
        .query_map(params![expression, after, ADOPT_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut message =
        t.prepare_cached("SELECT conversation_id, phone_number_id FROM messages WHERE id = ?1")?;
    let mut rescope = t.prepare_cached("UPDATE message_search SET scope = ?2 WHERE rowid = ?1")?;
    for (row, key) in &rows {
        let Some((conversation_id, stored)) = message
            .query_row([key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()?
        else {
            continue;
        };
        let number = stored.or_else(|| number_of(&conversation_id, home).map(str::to_owned));
        if let Some(number) = number {
            rescope.execute(params![row, search_scope(&conversation_id, Some(&number))])?;
        }
    }
    Ok(next_cursor(&rows, |(row, _)| Cursor::Row(*row)))
}

fn next_cursor<T>(rows: &[T], cursor: impl Fn(&T) -> Cursor) -> Option<Cursor> {
    let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= ADOPT_BATCH;
    full.then(|| rows.last().map(cursor)).flatten()
}

fn adopt_messages(
    t: &Transaction<'_>,
    home: Option<&str>,
    after: &str,
) -> rusqlite::Result<Option<Cursor>> {
    // `messages_without_number` serves it.
    let rows: Vec<(String, String)> = t
        .prepare_cached(
            "SELECT id, conversation_id FROM messages
             WHERE phone_number_id IS NULL AND id > ?1 ORDER BY id LIMIT ?2",
        )?
        .query_map(params![after, ADOPT_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tag = t.prepare_cached(
        "UPDATE messages SET phone_number_id = ?2, doc = json_set(doc, '$.phoneNumberId', ?2)
         WHERE id = ?1",
    )?;
    for (id, conversation_id) in &rows {
        if let Some(number) = number_of(conversation_id, home) {
            tag.execute(params![id, number])?;
        }
    }
    Ok(next_cursor(&rows, |(id, _)| Cursor::Key(id.clone())))
}

fn adopt_summaries(
    t: &Transaction<'_>,
    home: Option<&str>,
    (after_key, after_row): (&str, i64),
) -> rusqlite::Result<Option<Cursor>> {
    // In `summaries_by_number`'s order, from the cursor on: no sort. A
    // key only moves forward, so a summary is never skipped.
    let rows: Vec<(i64, String, String)> = t
        .prepare_cached(
            "SELECT rowid, id, sort_key FROM summaries
             WHERE phone_number_id IS NULL AND (sort_key, rowid) > (?1, ?2)
             ORDER BY sort_key, rowid LIMIT ?3",
        )?
        .query_map(params![after_key, after_row, ADOPT_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut displays: HashMap<String, Option<String>> = HashMap::new();
    // Counted for their number in the same transaction as tagged.
    let mut adopted: HashMap<&str, i64> = HashMap::new();
    let mut tag = t.prepare_cached(
        "UPDATE summaries SET phone_number_id = ?2, business_number = ?3 WHERE rowid = ?1",
    )?;
    for (row, id, _) in &rows {
        let Some(number) = number_of(id, home) else {
            continue;
        };
        let display = match displays.get(number) {
            Some(display) => display.clone(),
            None => {
                let display = display_of(t, number)?;
                displays.insert(number.to_owned(), display.clone());
                display
            }
        };
        let tagged = tag.execute(params![row, number, display])?;
        *adopted.entry(number).or_default() += i64::try_from(tagged).unwrap_or(0);
    }
    for (number, n) in adopted {
        add_conversations(t, number, n)?;
    }
    Ok(next_cursor(&rows, |(row, _, key)| {
        Cursor::Place(key.clone(), *row)
    }))
}

fn adopt_sends(t: &Transaction<'_>, home: Option<&str>) -> rusqlite::Result<()> {
    let rows: Vec<(String, String)> = t
        .prepare_cached(
            "SELECT id, conversation_id FROM sends
             WHERE json_extract(doc, '$.phoneNumberId') IS NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tag = t.prepare_cached(
        "UPDATE sends SET doc = json_set(doc, '$.phoneNumberId', ?2) WHERE id = ?1",
    )?;
    for (id, conversation_id) in &rows {
        if let Some(number) = number_of(conversation_id, home) {
            tag.execute(params![id, number])?;
        }
    }
    Ok(())
}
