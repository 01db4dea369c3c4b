//! How domain values become rows and JSON columns, and back.

use chrono::DateTime;
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};

use wa_core::domain::{Conversation, Direction, Message, QueuedSend, SERVICE_WINDOW};
use wa_core::plan::Summary;
use wa_core::plan::summary::Last;

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(crate) fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// Placeholders `?,?,...` for an `IN` list.
pub(crate) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// Runs `sql` (with one `IN ({})` list) for the ids in chunks SQLite
/// accepts, collecting the first column as JSON documents.
pub(crate) fn docs_in<T: serde::de::DeserializeOwned>(
    t: &Transaction<'_>,
    sql: &str,
    ids: &[String],
) -> rusqlite::Result<Vec<T>> {
    let mut found = Vec::new();
    for chunk in ids.chunks(500) {
        let mut query = t.prepare(&sql.replace("{}", &placeholders(chunk.len())))?;
        let docs = query.query_map(params_from_iter(chunk), |r| r.get::<_, String>(0))?;
        for doc in docs {
            found.push(from_json(&doc?)?);
        }
    }
    Ok(found)
}

/// A message by its WhatsApp id or its permanent key.
pub(crate) fn load_message(t: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Message>> {
    t.prepare_cached("SELECT doc FROM messages WHERE message_id = ?1 OR id = ?1 LIMIT 1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|doc| from_json(&doc).map(Message::with_media_url))
        .transpose()
}

/// A summary row, all columns.
pub(crate) struct SummaryRow {
    pub(crate) id: String,
    pub(crate) sort_key: String,
    pub(crate) last_message_id: String,
    pub(crate) last_status_rank: i32,
    pub(crate) name_key: String,
    pub(crate) user_name: String,
    pub(crate) last_body: String,
    pub(crate) last_ts: i64,
    pub(crate) last_status: String,
    pub(crate) last_direction: String,
    pub(crate) participants: String,
    pub(crate) message_count: i64,
    pub(crate) unread_count: i64,
    /// Time of the customer's newest message (ms).
    pub(crate) last_inbound_ts: Option<i64>,
    /// The conversation's business number and its display number (NULL:
    /// stored before numbers existed, until adopted).
    pub(crate) phone_number_id: Option<String>,
    pub(crate) business_number: Option<String>,
}

pub(crate) const SUMMARY_COLUMNS: &str =
    "id, sort_key, last_message_id, last_status_rank, name_key, user_name,
    last_body, last_ts, last_status, last_direction, participants, message_count, unread_count,
    last_inbound_ts, phone_number_id, business_number";

impl SummaryRow {
    pub(crate) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            sort_key: r.get(1)?,
            last_message_id: r.get(2)?,
            last_status_rank: r.get(3)?,
            name_key: r.get(4)?,
            user_name: r.get(5)?,
            last_body: r.get(6)?,
            last_ts: r.get(7)?,
            last_status: r.get(8)?,
            last_direction: r.get(9)?,
            participants: r.get(10)?,
            message_count: r.get(11)?,
            unread_count: r.get(12)?,
            last_inbound_ts: r.get(13)?,
            phone_number_id: r.get(14)?,
            business_number: r.get(15)?,
        })
    }

    pub(crate) fn load(t: &Transaction<'_>, id: &str) -> rusqlite::Result<Option<Self>> {
        t.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE id = ?1"
        ))?
        .query_row([id], Self::read)
        .optional()
    }

    pub(crate) fn save(&self, t: &Transaction<'_>) -> rusqlite::Result<()> {
        t.prepare_cached(&format!(
            "INSERT OR REPLACE INTO summaries ({SUMMARY_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ))?
        .execute(params![
            self.id,
            self.sort_key,
            self.last_message_id,
            self.last_status_rank,
            self.name_key,
            self.user_name,
            self.last_body,
            self.last_ts,
            self.last_status,
            self.last_direction,
            self.participants,
            self.message_count,
            self.unread_count,
            self.last_inbound_ts,
            self.phone_number_id,
            self.business_number
        ])
        .map(drop)
    }

    /// A row for a summary being created (counts and fields added after).
    pub(crate) fn empty(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            sort_key: String::new(),
            last_message_id: String::new(),
            last_status_rank: 0,
            name_key: String::new(),
            user_name: String::new(),
            last_body: String::new(),
            last_ts: 0,
            last_status: String::new(),
            last_direction: String::new(),
            participants: "[]".to_owned(),
            message_count: 0,
            unread_count: 0,
            last_inbound_ts: None,
            phone_number_id: None,
            business_number: None,
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        Summary {
            last_key: self.sort_key.clone(),
            last_message_id: self.last_message_id.clone(),
            last_status_rank: self.last_status_rank,
            name_key: self.name_key.clone(),
            last_inbound: self
                .last_inbound_ts
                .and_then(DateTime::from_timestamp_millis),
            journal: Default::default(),
        }
    }

    pub(crate) fn set_last(&mut self, last: &Last) -> rusqlite::Result<()> {
        self.sort_key.clone_from(&last.key);
        self.last_message_id.clone_from(&last.message_id);
        self.last_status_rank = last.status_rank;
        self.last_body.clone_from(&last.body);
        self.last_ts = last.timestamp.timestamp_millis();
        last.status.as_str().clone_into(&mut self.last_status);
        self.last_direction = direction_name(last.direction).to_owned();
        self.participants = to_json(&last.participants)?;
        Ok(())
    }

    pub(crate) fn conversation(&self) -> rusqlite::Result<Conversation> {
        Ok(Conversation {
            conversation_id: self.id.clone(),
            user_name: self.user_name.clone(),
            last_message_id: self.last_message_id.clone(),
            last_message_body: wa_core::plan::summary::preview(&self.last_body),
            last_timestamp: DateTime::from_timestamp_millis(self.last_ts).unwrap_or_default(),
            last_message_status: self.last_status.as_str().into(),
            last_message_direction: if self.last_direction == "outbound" {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            message_count: self.message_count,
            unread_count: self.unread_count,
            participants: from_json(&self.participants)?,
            window_expires_at: self
                .last_inbound_ts
                .and_then(DateTime::from_timestamp_millis)
                .map(|at| at + SERVICE_WINDOW),
            phone_number_id: self.phone_number_id.clone(),
            business_number: self.business_number.clone(),
        })
    }
}

/// The columns a send is read from: the columns `due` and `held` are the
/// ones senders claim and hold by (moved without rewriting the document).
pub(crate) const SEND_COLUMNS: &str = "doc, due, held";

pub(crate) fn send_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedSend> {
    let mut send: QueuedSend = from_json(&row.get::<_, String>(0)?)?;
    send.due = DateTime::from_timestamp_millis(row.get(1)?).unwrap_or(send.due);
    send.held = row.get(2)?;
    Ok(send)
}
