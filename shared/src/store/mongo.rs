//! The MongoDB store (MongoDB 6+).
//!
//! Collections: `processed_messages` (one document per WhatsApp message,
//! `_id` = `messageId`), `conversations` (precomputed summaries),
//! `pending_statuses` (statuses that arrived before their message) and
//! `webhook_payloads` (raw bodies). Only plain CRUD operators are used.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{RawPayload, StatusOutcome, Store, StoreError, StoreResult, conversation_sort_key};
use crate::domain::{
    Conversation, Direction, KNOWN_STATUSES, Message, Page, RECEIVED, Stats, StatusChange,
    is_safe_status_name, status_rank,
};

pub const MESSAGES: &str = "processed_messages";
pub const CONVERSATIONS: &str = "conversations";
pub const PENDING_STATUSES: &str = "pending_statuses";
pub const PAYLOADS: &str = "webhook_payloads";

/// How long a status may wait for its message before it is forgotten.
const PENDING_STATUS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
}

impl MongoStore {
    /// Connects to the database named in the URI's path (default
    /// `whatsapp_clone`). The driver connects lazily; call [`Store::ping`]
    /// or [`MongoStore::ensure_indexes`] to find out whether it is up.
    pub async fn connect(uri: &str, app_name: &str) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(|e| StoreError {
            message: format!("invalid MONGODB_URI: {e}"),
            permanent: true,
        })?;
        options.app_name = Some(app_name.to_owned());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| "whatsapp_clone".to_owned());
        let client = Client::with_options(options).map_err(store_error)?;
        Ok(Self {
            db: client.database(&database),
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn messages(&self) -> Collection<Document> {
        self.db.collection(MESSAGES)
    }

    fn conversations(&self) -> Collection<Document> {
        self.db.collection(CONVERSATIONS)
    }

    fn pending(&self) -> Collection<Document> {
        self.db.collection(PENDING_STATUSES)
    }

    /// Creates the indexes every query relies on; idempotent.
    pub async fn ensure_indexes(&self) -> StoreResult<()> {
        let unique = IndexOptions::builder().unique(true).build();
        self.messages()
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! {"messageId": 1})
                    .options(unique)
                    .build(),
                // A conversation's messages, newest first (and its counts).
                IndexModel::builder()
                    .keys(doc! {"conversationId": 1, "timestamp": -1, "messageId": -1})
                    .build(),
                IndexModel::builder()
                    .keys(doc! {"conversationId": 1, "status": 1})
                    .build(),
                IndexModel::builder().keys(doc! {"status": 1}).build(),
                IndexModel::builder().keys(doc! {"direction": 1}).build(),
            ])
            .await
            .map_err(store_error)?;
        self.conversations()
            .create_index(IndexModel::builder().keys(doc! {"sortKey": -1}).build())
            .await
            .map_err(store_error)?;
        let ttl = IndexOptions::builder()
            .expire_after(PENDING_STATUS_TTL)
            .build();
        self.pending()
            .create_indexes([
                IndexModel::builder().keys(doc! {"messageId": 1}).build(),
                IndexModel::builder()
                    .keys(doc! {"parkedAt": 1})
                    .options(ttl)
                    .build(),
            ])
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn prepare(&self) -> StoreResult<()> {
        self.ensure_indexes().await
    }

    async fn archive_payloads(&self, payloads: &[RawPayload]) -> StoreResult<()> {
        let docs = payloads.iter().map(|p| {
            doc! {
                "_id": &p.id,
                "body": String::from_utf8_lossy(&p.body).into_owned(),
                "receivedAt": to_bson_date(p.received_at),
            }
        });
        insert_ignoring_duplicates(&self.db.collection(PAYLOADS), docs.collect()).await?;
        Ok(())
    }

    async fn insert_messages(&self, messages: &[Message]) -> StoreResult<Vec<String>> {
        let docs = messages
            .iter()
            .map(message_to_document)
            .collect::<StoreResult<Vec<_>>>()?;
        let duplicates = insert_ignoring_duplicates(&self.messages(), docs).await?;
        Ok(messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !duplicates.contains(i))
            .map(|(_, m)| m.message_id.clone())
            .collect())
    }

    async fn advance_status(&self, change: &StatusChange) -> StoreResult<StatusOutcome> {
        let at = to_bson_date(change.timestamp);
        let business_message = doc! {"_id": &change.message_id, "direction": "outbound"};
        // Status names become field names; anything odd is only compared.
        let time_field = is_safe_status_name(&change.status)
            .then(|| format!("statusTimestamps.{}", change.status));

        if let (Some(rank), Some(time_field)) = (status_rank(&change.status), &time_field) {
            let mut filter = business_message.clone();
            filter.insert("statusRank", doc! {"$lt": rank});
            let mut set =
                doc! {"status": &change.status, "statusRank": rank, time_field.as_str(): at};
            if let Some(errors) = &change.errors {
                set.insert("errors", bson::to_bson(errors).map_err(store_error)?);
            }
            let before = self
                .messages()
                .find_one_and_update(filter, doc! {"$set": set})
                .projection(doc! {"conversationId": 1})
                .return_document(ReturnDocument::Before)
                .await
                .map_err(store_error)?;
            if let Some(before) = before {
                let conversation_id = before
                    .get_str("conversationId")
                    .unwrap_or(&change.conversation_id)
                    .to_owned();
                return Ok(StatusOutcome::Applied { conversation_id });
            }
        }
        // Not applied: still remember when this status was first seen.
        if let Some(time_field) = &time_field {
            let mut filter = business_message;
            filter.insert(time_field.as_str(), doc! {"$exists": false});
            let result = self
                .messages()
                .update_one(filter, doc! {"$set": {time_field.as_str(): at}})
                .await
                .map_err(store_error)?;
            if result.matched_count > 0 {
                return Ok(StatusOutcome::Unchanged);
            }
        }
        let exists = self
            .messages()
            .count_documents(doc! {"_id": &change.message_id})
            .limit(1)
            .await
            .map_err(store_error)?;
        Ok(if exists > 0 {
            StatusOutcome::Unchanged
        } else {
            StatusOutcome::MessageNotFound
        })
    }

    async fn park_status(&self, change: &StatusChange) -> StoreResult<()> {
        let mut parked = doc! {
            "messageId": &change.message_id,
            "status": &change.status,
            "timestamp": to_bson_date(change.timestamp),
            "conversationId": &change.conversation_id,
            "parkedAt": bson::DateTime::now(),
        };
        if let Some(errors) = &change.errors {
            parked.insert("errors", bson::to_bson(errors).map_err(store_error)?);
        }
        self.pending()
            .update_one(
                doc! {"_id": parked_key(change)},
                doc! {"$setOnInsert": parked},
            )
            .upsert(true)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn parked_statuses(&self, message_ids: &[String]) -> StoreResult<Vec<StatusChange>> {
        let docs: Vec<Document> = self
            .pending()
            .find(doc! {"messageId": {"$in": message_ids}})
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(StatusChange {
                    message_id: d.get_str("messageId").ok()?.to_owned(),
                    status: d.get_str("status").ok()?.to_owned(),
                    timestamp: date_from_bson(d.get("timestamp")?)?,
                    conversation_id: d.get_str("conversationId").ok()?.to_owned(),
                    errors: d.get("errors").map(|e| e.clone().into_relaxed_extjson()),
                })
            })
            .collect())
    }

    async fn unpark_statuses(&self, changes: &[StatusChange]) -> StoreResult<()> {
        let keys: Vec<String> = changes.iter().map(parked_key).collect();
        self.pending()
            .delete_many(doc! {"_id": {"$in": keys}})
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn refresh_conversation(&self, conversation_id: &str) -> StoreResult<()> {
        // Optimistic concurrency: the summary carries a revision; a write
        // succeeds only if nobody wrote since we read it, so the last write
        // always counted every message inserted before it.
        for _ in 0..20 {
            let revision = self
                .conversations()
                .find_one(doc! {"_id": conversation_id})
                .projection(doc! {"rev": 1})
                .await
                .map_err(store_error)?
                .map(|d| d.get("rev").and_then(integer).unwrap_or(0));
            let Some(summary) = self.compute_summary(conversation_id).await? else {
                return Ok(());
            };
            let written = match revision {
                None => {
                    let mut summary = summary;
                    summary.insert("_id", conversation_id);
                    summary.insert("rev", 1_i64);
                    let inserted =
                        insert_ignoring_duplicates(&self.conversations(), vec![summary]).await?;
                    inserted.is_empty()
                }
                Some(rev) => {
                    let mut set = summary;
                    set.insert("rev", rev + 1);
                    let result = self
                        .conversations()
                        .update_one(
                            doc! {"_id": conversation_id, "rev": rev},
                            doc! {"$set": set},
                        )
                        .await
                        .map_err(store_error)?;
                    result.matched_count == 1
                }
            };
            if written {
                return Ok(());
            }
        }
        Err(StoreError::transient(format!(
            "conversation {conversation_id} is too busy to summarise; will retry"
        )))
    }
    async fn mark_inbound_read(
        &self,
        conversation_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<String>> {
        let unread: Vec<Document> = self
            .messages()
            .find(doc! {"conversationId": conversation_id, "direction": "inbound", "status": RECEIVED})
            .projection(doc! {"_id": 1})
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        let mut changed = Vec::new();
        for id in unread.iter().filter_map(|d| d.get_str("_id").ok()) {
            // Guarded on the status, so concurrent readers mark each message once.
            let result = self
                .messages()
                .update_one(
                    doc! {"_id": id, "status": RECEIVED},
                    doc! {"$set": {"status": "read", "statusRank": status_rank("read").unwrap_or(3), "statusTimestamps.read": to_bson_date(at)}},
                )
                .await
                .map_err(store_error)?;
            if result.modified_count == 1 {
                changed.push(id.to_owned());
            }
        }
        Ok(changed)
    }

    async fn conversations(&self, page: Page) -> StoreResult<Vec<Conversation>> {
        let filter = match page.before {
            Some(before) => {
                // Keys of earlier milliseconds sort below the bare millisecond prefix.
                let key = match &page.before_id {
                    Some(id) => conversation_sort_key(before, id),
                    None => format!("{:015}", before.timestamp_millis().max(0)),
                };
                doc! {"sortKey": {"$lt": key}}
            }
            None => doc! {},
        };
        let docs: Vec<Document> = self
            .conversations()
            .find(filter)
            .sort(doc! {"sortKey": -1})
            .limit(page.limit)
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(docs.iter().map(conversation_from_document).collect())
    }

    async fn messages(&self, conversation_id: &str, page: Page) -> StoreResult<Vec<Message>> {
        let mut filter = doc! {"conversationId": conversation_id};
        if let Some(before) = page.before {
            let at = to_bson_date(before);
            match &page.before_id {
                Some(id) => filter.insert(
                    "$or",
                    vec![
                        doc! {"timestamp": {"$lt": at}},
                        doc! {"timestamp": at, "messageId": {"$lt": id}},
                    ],
                ),
                None => filter.insert("timestamp", doc! {"$lt": at}),
            };
        }
        let docs: Vec<Document> = self
            .messages()
            .find(filter)
            .sort(doc! {"timestamp": -1, "messageId": -1})
            .limit(page.limit)
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        docs.into_iter().rev().map(message_from_document).collect()
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        let found = self
            .messages()
            .find_one(doc! {"_id": message_id})
            .await
            .map_err(store_error)?;
        found.map(message_from_document).transpose()
    }

    async fn stats(&self) -> StoreResult<Stats> {
        let messages = self.messages();
        let count = |filter: Document| {
            let messages = messages.clone();
            async move {
                messages
                    .count_documents(filter)
                    .await
                    .map_err(store_error)
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
            }
        };
        let (total, inbound, outbound, conversations) = futures::try_join!(
            count(doc! {}),
            count(doc! {"direction": "inbound"}),
            count(doc! {"direction": "outbound"}),
            async {
                self.conversations()
                    .count_documents(doc! {})
                    .await
                    .map_err(store_error)
            },
        )?;
        let per_status = futures::future::try_join_all(
            KNOWN_STATUSES.iter().map(|s| count(doc! {"status": *s})),
        )
        .await?;
        Ok(Stats {
            total_messages: total,
            total_conversations: i64::try_from(conversations).unwrap_or(i64::MAX),
            inbound,
            outbound,
            status_breakdown: KNOWN_STATUSES
                .iter()
                .map(|s| (*s).to_owned())
                .zip(per_status)
                .collect(),
        })
    }
}

impl MongoStore {
    /// The summary of a conversation as its messages are now; `None` if it
    /// has none.
    async fn compute_summary(&self, conversation_id: &str) -> StoreResult<Option<Document>> {
        let messages = self.messages();
        let newest_first = doc! {"timestamp": -1, "messageId": -1};
        let Some(last) = messages
            .find_one(doc! {"conversationId": conversation_id})
            .sort(newest_first.clone())
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let message_count = messages
            .count_documents(doc! {"conversationId": conversation_id})
            .await
            .map_err(store_error)?;
        let unread_count = messages
            .count_documents(doc! {"conversationId": conversation_id, "direction": "inbound", "status": RECEIVED})
            .await
            .map_err(store_error)?;
        let named = match last.get_str("contactName") {
            Ok(_) => Some(last.clone()),
            Err(_) => messages
                .find_one(
                    doc! {"conversationId": conversation_id, "contactName": {"$type": "string"}},
                )
                .sort(newest_first)
                .await
                .map_err(store_error)?,
        };
        let text = |d: &Document, key: &str| d.get_str(key).unwrap_or_default().to_owned();
        let wa_id = text(&last, "waId");
        let user_name = named
            .as_ref()
            .and_then(|d| d.get_str("contactName").ok())
            .map_or_else(|| format!("+{wa_id}"), str::to_owned);
        let business_number = if last.get_str("direction") == Ok("outbound") {
            text(&last, "from")
        } else {
            text(&last, "to")
        };
        let timestamp = last
            .get("timestamp")
            .and_then(date_from_bson)
            .unwrap_or_default();
        let last_id = text(&last, "_id");
        let participants: Vec<String> = [wa_id.clone(), business_number]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        Ok(Some(doc! {
            "conversationId": conversation_id,
            "waId": wa_id,
            "userName": user_name,
            "participants": participants,
            "lastMessageId": &last_id,
            "lastMessageBody": text(&last, "body"),
            "lastTimestamp": to_bson_date(timestamp),
            "lastMessageStatus": text(&last, "status"),
            "lastMessageDirection": text(&last, "direction"),
            "sortKey": conversation_sort_key(timestamp, &last_id),
            "messageCount": i64::try_from(message_count).unwrap_or(i64::MAX),
            "unreadCount": i64::try_from(unread_count).unwrap_or(i64::MAX),
            "updatedAt": bson::DateTime::now(),
        }))
    }
}

fn conversation_from_document(d: &Document) -> Conversation {
    let text = |key: &str| d.get_str(key).unwrap_or_default().to_owned();
    let number = |key: &str| d.get(key).and_then(integer).unwrap_or(0);
    Conversation {
        conversation_id: text("_id"),
        user_name: text("userName"),
        last_message_id: text("lastMessageId"),
        last_message_body: text("lastMessageBody"),
        last_timestamp: d
            .get("lastTimestamp")
            .and_then(date_from_bson)
            .unwrap_or_default(),
        last_message_status: text("lastMessageStatus"),
        last_message_direction: if d.get_str("lastMessageDirection") == Ok("outbound") {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        message_count: number("messageCount"),
        unread_count: number("unreadCount"),
        participants: d
            .get_array("participants")
            .map(|p| {
                p.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn parked_key(change: &StatusChange) -> String {
    format!("{}|{}", change.message_id, change.status)
}

/// Inserts unordered in one round trip; returns the indexes of documents
/// that were already there (duplicate `_id` or `messageId`).
async fn insert_ignoring_duplicates(
    collection: &Collection<Document>,
    docs: Vec<Document>,
) -> StoreResult<Vec<usize>> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    match collection.insert_many(docs).ordered(false).await {
        Ok(_) => Ok(Vec::new()),
        Err(e) => match e.kind.as_ref() {
            ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
                let errors = failure.write_errors.as_deref().unwrap_or_default();
                if let Some(other) = errors.iter().find(|w| w.code != DUPLICATE_KEY) {
                    return Err(StoreError {
                        message: format!("insert refused: {}", other.message),
                        permanent: true,
                    });
                }
                Ok(errors.iter().map(|w| w.index).collect())
            }
            _ => Err(store_error(e)),
        },
    }
}

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
    document.insert("statusRank", status_rank(&message.status).unwrap_or(0));
    Ok(document)
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
    bson::from_document(document).map_err(store_error)
}

/// An integer however the server typed it (Int32 and Int64 compare equal).
pub fn integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        _ => None,
    }
}

fn to_bson_date(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

/// A stored date. Some MongoDB-wire servers hand back dates written by
/// `$set` as `YYYY-MM-DD HH:MM:SS` text, so that is read too.
fn date_from_bson(value: &Bson) -> Option<DateTime<Utc>> {
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

fn store_error(error: impl Into<StoreErrorSource>) -> StoreError {
    error.into().0
}

/// Classifies driver errors: the data's fault (permanent) or the
/// database's (transient, retried forever).
struct StoreErrorSource(StoreError);

impl From<mongodb::error::Error> for StoreErrorSource {
    fn from(e: mongodb::error::Error) -> Self {
        let permanent = matches!(
            e.kind.as_ref(),
            ErrorKind::BsonSerialization(_)
                | ErrorKind::InvalidArgument { .. }
                | ErrorKind::Write(WriteFailure::WriteError(_))
        );
        Self(StoreError {
            message: format!("MongoDB: {e}"),
            permanent,
        })
    }
}

impl From<bson::ser::Error> for StoreErrorSource {
    fn from(e: bson::ser::Error) -> Self {
        Self(StoreError {
            message: format!("cannot store as BSON: {e}"),
            permanent: true,
        })
    }
}

impl From<bson::de::Error> for StoreErrorSource {
    fn from(e: bson::de::Error) -> Self {
        Self(StoreError {
            message: format!("stored document is malformed: {e}"),
            permanent: true,
        })
    }
}
