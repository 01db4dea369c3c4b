//! How the domain is stored in MongoDB documents, and how driver errors
//! map to the store's error kinds.

use chrono::{DateTime, NaiveDateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind as DriverErrorKind, WriteFailure};

use wa_core::domain::{Conversation, Direction, Message};
use wa_core::plan::Summary;
use wa_core::plan::summary::{Last, Name};
use wa_store::StoreResult;
use wa_store::error::Error;

/// Field of a message holding the status its counters and events were
/// settled for (absent: not settled yet).
pub const SETTLED: &str = "settled";
/// Field of a counter document holding its journal.
pub const JOURNAL: &str = "journal";
/// Field of a summary holding the time of the customer's newest message.
pub const LAST_INBOUND: &str = "lastInboundAt";

/// The stored form of a message: the API shape, with BSON dates and the
/// numeric status rank the forward-only updates compare.
pub fn message_to_document(message: &Message) -> StoreResult<Document> {
    let mut document = bson::to_document(message).map_err(store_error)?;
    document.insert("timestamp", to_bson_date(message.timestamp));
    let times: Document = message
        .status_timestamps
        .iter()
        .map(|(status, at)| (status.clone(), Bson::DateTime(to_bson_date(*at))))
        .collect();
    document.insert("statusTimestamps", times);
    document.insert("statusRank", message.status.stored_rank());
    document.insert(
        super::search::SEARCH,
        wa_core::search::message_words(message),
    );
    Ok(document)
}

/// A queued send: the send as JSON text (Graph request bodies may hold
/// keys BSON cannot), and its due time in milliseconds, which senders
/// query and claim it by.
pub fn send_document(send: &wa_core::domain::QueuedSend) -> StoreResult<Document> {
    let text = serde_json::to_string(send)
        .map_err(|e| Error::rejected(format!("cannot store a send: {e}")).caused_by(e))?;
    let mut document = doc! {
        "conversationId": &send.conversation_id,
        "due": send.due.timestamp_millis(),
        "held": send.held,
        "order": send.order(),
        "send": text,
    };
    // Also outside the text: what adopting numbers finds untagged sends by.
    if let Some(number) = &send.phone_number_id {
        document.insert("phoneNumberId", number);
    }
    Ok(document)
}

/// The `writeErrors` of a write command's answer; a write concern not met
/// is a transient failure of the whole command.
pub fn write_errors(answer: &Document) -> StoreResult<&[Bson]> {
    if let Ok(error) = answer.get_document("writeConcernError") {
        return Err(Error::transient(format!(
            "MongoDB write concern not met: {}",
            error.get_str("errmsg").unwrap_or_default()
        )));
    }
    Ok(answer
        .get_array("writeErrors")
        .map(Vec::as_slice)
        .unwrap_or_default())
}

/// Checks the answer of an `update` command of upserts: a duplicate key
/// means a concurrent upsert inserted the document first, which is as good.
pub fn check_upserts(answer: &Document) -> StoreResult<()> {
    let errors = write_errors(answer)?;
    for error in errors.iter().filter_map(Bson::as_document) {
        if error.get("code").and_then(integer) != Some(11000) {
            return Err(Error::rejected(format!(
                "MongoDB refused a write: {}",
                error.get_str("errmsg").unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Whether a single write failed on a unique index (another writer first).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, DriverErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
}

/// A queued send as stored; its `due` and `held` fields are what senders
/// claim and hold it by (moved without rewriting the send's text).
pub fn send_from_document(d: &Document) -> StoreResult<wa_core::domain::QueuedSend> {
    let text = d
        .get_str("send")
        .map_err(|e| Error::rejected(format!("queued send unreadable: {e}")).caused_by(e))?;
    let mut send: wa_core::domain::QueuedSend = serde_json::from_str(text)
        .map_err(|e| Error::rejected(format!("queued send unreadable: {e}")).caused_by(e))?;
    // Queued before numbers existed, and given one since (adopted).
    if send.phone_number_id.is_none() {
        send.phone_number_id = d.get_str("phoneNumberId").ok().map(str::to_owned);
    }
    if let Some(due) = d
        .get("due")
        .and_then(integer)
        .and_then(DateTime::from_timestamp_millis)
    {
        send.due = due;
    }
    // A boolean; read leniently (a server may keep `true` as 1).
    send.held = match d.get("held") {
        Some(Bson::Boolean(held)) => *held,
        Some(other) => integer(other).is_some_and(|n| n != 0),
        None => false,
    };
    Ok(send)
}

/// Reads a stored message back into the API shape.
pub fn message_from_document(mut document: Document) -> StoreResult<Message> {
    let mut times = Document::new();
    if let Ok(stored) = document.get_document("statusTimestamps") {
        for (status, at) in stored {
            if let Some(at) = date_from_bson(at) {
                times.insert(status.clone(), at.to_rfc3339());
            }
        }
    }
    document.insert("statusTimestamps", times);
    let timestamp = document
        .get("timestamp")
        .and_then(date_from_bson)
        .unwrap_or_default();
    document.insert("timestamp", timestamp.to_rfc3339());
    document.remove("statusRank");
    document.remove(SETTLED);
    document.remove(super::search::SEARCH);
    // Stored before media messages carried their URL: derived on reading.
    bson::from_document::<Message>(document)
        .map(Message::with_media_url)
        .map_err(store_error)
}

/// The summary fields showing a last message.
pub fn last_fields(last: &Last) -> Document {
    doc! {
        "waId": &last.wa_id,
        "participants": &last.participants,
        "lastMessageId": &last.message_id,
        "lastMessageBody": &last.body,
        "lastTimestamp": to_bson_date(last.timestamp),
        "lastMessageStatus": last.status.as_str(),
        "lastStatusRank": last.status_rank,
        "lastMessageDirection": direction_name(last.direction),
        "sortKey": &last.key,
    }
}

/// The summary fields showing the customer's name.
pub fn name_fields(name: &Name) -> Document {
    doc! {"userName": &name.name, "nameKey": &name.key}
}

pub fn conversation_from_document(d: &Document) -> Conversation {
    let text = |key: &str| d.get_str(key).unwrap_or_default().to_owned();
    let number = |key: &str| d.get(key).and_then(integer).unwrap_or(0);
    Conversation {
        conversation_id: text("_id"),
        user_name: text("userName"),
        last_message_id: text("lastMessageId"),
        // Summaries written before previews were bounded, too.
        last_message_body: wa_core::plan::summary::preview(&text("lastMessageBody")),
        last_timestamp: d
            .get("lastTimestamp")
            .and_then(date_from_bson)
            .unwrap_or_default(),
        last_message_status: text("lastMessageStatus").into(),
        last_message_direction: if d.get_str("lastMessageDirection") == Ok("outbound") {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        message_count: number("messageCount"),
        unread_count: number("unreadCount"),
        phone_number_id: d.get_str("phoneNumberId").ok().map(str::to_owned),
        business_number: d.get_str("businessNumber").ok().map(str::to_owned),
        participants: d
            .get_array("participants")
            .map(|p| {
                p.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        window_expires_at: d
            .get(LAST_INBOUND)
            .and_then(date_from_bson)
            .map(|at| at + wa_core::domain::SERVICE_WINDOW),
    }
}

/// What a plan needs of a stored summary.
pub fn summary_from_document(d: &Document) -> Summary {
    Summary {
        last_key: d.get_str("sortKey").unwrap_or_default().to_owned(),
        last_message_id: d.get_str("lastMessageId").unwrap_or_default().to_owned(),
        last_status_rank: d
            .get("lastStatusRank")
            .and_then(integer)
            .and_then(|r| i32::try_from(r).ok())
            .unwrap_or(0),
        name_key: d.get_str("nameKey").unwrap_or_default().to_owned(),
        last_inbound: d.get(LAST_INBOUND).and_then(date_from_bson),
        journal: journal_from_document(d),
    }
}

pub fn journal_from_document(d: &Document) -> wa_core::plan::Journal {
    d.get_document(JOURNAL)
        .map(|journal| {
            journal
                .iter()
                .filter_map(|(key, status)| Some((key.clone(), status.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// An integer however the server typed it (Int32 and Int64 compare equal).
pub fn integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        _ => None,
    }
}

pub fn to_bson_date(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

/// A stored date. Some MongoDB-wire servers hand back dates written by
/// `$set` as `YYYY-MM-DD HH:MM:SS` text, so that is read too.
pub fn date_from_bson(value: &Bson) -> Option<DateTime<Utc>> {
    match value {
        Bson::DateTime(at) => DateTime::from_timestamp_millis(at.timestamp_millis()),
        Bson::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                    .ok()
                    .map(|at| at.and_utc())
            }),
        _ => None,
    }
}

pub fn store_error(error: impl Into<Classified>) -> Error {
    error.into().0
}

/// Driver errors classified: a concurrent transaction got there first
/// (conflict), the data's fault (rejected), or the database's (transient,
/// retried forever). The driver's error is kept as the source.
pub struct Classified(Error);

/// MongoDB's `WriteConflict`.
const WRITE_CONFLICT: i32 = 112;

impl From<mongodb::error::Error> for Classified {
    fn from(e: mongodb::error::Error) -> Self {
        let message = format!("MongoDB: {e}");
        let write_conflict =
            matches!(e.kind.as_ref(), DriverErrorKind::Command(c) if c.code == WRITE_CONFLICT);
        if write_conflict || e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) {
            return Self(Error::conflict(message).caused_by(e));
        }
        let rejected = matches!(
            e.kind.as_ref(),
            DriverErrorKind::BsonSerialization(_)
                | DriverErrorKind::InvalidArgument { .. }
                | DriverErrorKind::Write(WriteFailure::WriteError(_))
        );
        Self(
            if rejected {
                Error::rejected(message)
            } else {
                Error::transient(message)
            }
            .caused_by(e),
        )
    }
}

impl From<bson::ser::Error> for Classified {
    fn from(e: bson::ser::Error) -> Self {
        Self(Error::rejected(format!("cannot store as BSON: {e}")).caused_by(e))
    }
}

impl From<bson::de::Error> for Classified {
    fn from(e: bson::de::Error) -> Self {
        Self(Error::unreadable(format!("stored document is malformed: {e}")).caused_by(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_error_is_kept_as_the_source() {
        let Err(malformed) = bson::from_document::<Message>(doc! {"messageId": 1}) else {
            panic!("a number is not a message");
        };
        let error = store_error(malformed);
        assert_eq!(error.kind, wa_store::ErrorKind::Rejected);
        assert!(
            error
                .to_string()
                .starts_with("stored document is malformed: ")
        );
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(
            Some(
                error
                    .message
                    .trim_start_matches("stored document is malformed: ")
                    .to_owned()
            ),
            source
        );
    }
}
