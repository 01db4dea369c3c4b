//! Message search on MongoDB. Each message keeps its distinct words
//! (`search`, see [`wa_core::search`]) under a multikey index with its time,
//! so a query reads the index entries of one of its words, newest first,
//! until a page is full: no `$regex`, no collection scan. The last word's
//! prefix is an index range (`$gte`/`$lt`), not a pattern.

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use super::documents::{message_from_document, store_error, to_bson_date};
use super::{MESSAGES, META, MongoStore};
use wa_core::domain::Message;
use wa_core::search::{self, Query};
use wa_store::{SearchPage, SearchScope, StoreError, StoreResult};

/// Field of a message holding its distinct words.
pub const SEARCH: &str = "search";
/// Messages indexed per round of the backfill.
const BACKFILL_BATCH: i64 = 500;

impl MongoStore {
    pub(super) async fn search_messages(
        &self,
        query: &Query,
        scope: &SearchScope,
        limit: usize,
    ) -> StoreResult<SearchPage> {
        let mut filter = words_filter(query);
        if let Some(id) = &scope.conversation_id {
            filter.insert("conversationId", id);
        }
        if let Some(numbers) = &scope.numbers {
            filter.insert("phoneNumberId", doc! {"$in": numbers});
        }
        if let Some(cursor) = &scope.before {
            let (at, id) = parse_cursor(cursor)?;
            filter.insert(
                "$or",
                vec![
                    doc! {"timestamp": {"$lt": at}},
                    doc! {"timestamp": at, "messageId": {"$lt": id}},
                ],
            );
        }
        let documents: Vec<Document> = self
            .collection(MESSAGES)
            .find(filter)
            .sort(doc! {"timestamp": -1, "messageId": -1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        let full = documents.len() == limit;
        let mut messages = documents
            .into_iter()
            .map(message_from_document)
            .collect::<StoreResult<Vec<Message>>>()?;
        let next = full.then(|| messages.last().map(cursor)).flatten();
        // The index has each word, not their order: Han characters that
        // must follow each other are checked here.
        messages.retain(|m| query.matches(&search::searchable_text(m)));
        Ok(SearchPage { messages, next })
    }
}

/// Every word of the query among the message's words; the last also as
/// a prefix of one of them.
fn words_filter(query: &Query) -> Document {
    let (exact, prefix) = query.exact_and_prefix();
    let mut words = Document::new();
    if !exact.is_empty() {
        words.insert("$all", exact);
    }
    if let Some(prefix) = prefix {
        // Every string that starts with the prefix sorts below this bound.
        let bound = format!("{prefix}\u{10FFFF}");
        words.insert("$elemMatch", doc! {"$gte": prefix, "$lt": bound});
    }
    doc! {SEARCH: words}
}

/// `<milliseconds>:<messageId>` of the last hit of a page.
fn cursor(message: &Message) -> String {
    format!(
        "{}:{}",
        message.timestamp.timestamp_millis(),
        message.message_id
    )
}

fn parse_cursor(cursor: &str) -> StoreResult<(mongodb::bson::DateTime, String)> {
    let bad = || StoreError::rejected("before is not a cursor of this search (use its next)");
    let (at, id) = cursor.split_once(':').ok_or_else(bad)?;
    let at = at
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .ok_or_else(bad)?;
    Ok((to_bson_date(at), id.to_owned()))
}

/// Gives messages stored before search existed their words, in the
/// background (searches meanwhile miss only those), in `_id` order so
/// each round reads from where the last stopped; marked done in `meta`.
pub async fn backfill(store: MongoStore) {
    if let Err(e) = backfill_all(&store).await {
        tracing::warn!(error = %e, "indexing older messages for search stopped; it resumes at the next start");
    }
}

async fn backfill_all(store: &MongoStore) -> StoreResult<()> {
    let meta = store.collection(META);
    let done = meta
        .find_one(doc! {"_id": "search", "indexed": true})
        .await
        .map_err(store_error)?;
    if done.is_some() {
        return Ok(());
    }
    let messages = store.collection(MESSAGES);
    let mut last: Option<String> = None;
    let mut indexed = 0_u64;
    loop {
        let filter = match &last {
            Some(id) => doc! {"_id": {"$gt": id}},
            None => doc! {},
        };
        let batch: Vec<Document> = messages
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(BACKFILL_BATCH)
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        let Some(end) = batch.last().and_then(|d| d.get_str("_id").ok()) else {
            break;
        };
        last = Some(end.to_owned());
        for document in batch {
            if document.contains_key(SEARCH) {
                continue;
            }
            let Ok(id) = document.get_str("_id").map(str::to_owned) else {
                continue;
            };
            let words = search::message_words(&message_from_document(document)?);
            messages
                .update_one(doc! {"_id": &id}, doc! {"$set": {SEARCH: words}})
                .await
                .map_err(store_error)?;
            indexed += 1;
        }
    }
    meta.update_one(doc! {"_id": "search"}, doc! {"$set": {"indexed": true}})
        .upsert(true)
        .await
        .map_err(store_error)?;
    if indexed > 0 {
        tracing::info!(indexed, "older messages indexed for search");
    }
    Ok(())
}
