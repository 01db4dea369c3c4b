//! Moving data written by an earlier version to the current schema, once,
//! when a processor starts.
//!
//! Version 1 recomputed each summary from its messages after every batch
//! (two counts per conversation) and counted the stats on every request.
//! Version 2 keeps counters: summaries get theirs recomputed once, the
//! stats documents get the totals, and every message is marked settled.
//! Version 3 keeps, in each summary, the time of the customer's newest
//! message (WhatsApp's 24-hour window). Version 4 keeps, in each business
//! number's document, its count of conversations. Each step sets absolute
//! values, so a migration that stopped half-way simply runs again.

use futures::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{Document, doc};

use super::documents::{SETTLED, integer, store_error};
use super::{CONVERSATIONS, MESSAGES, META, NUMBERS, STATS, stats_id};
use wa_core::domain::{Direction, KNOWN_STATUSES, RECEIVED, Status};
use wa_core::plan::counts::Counts;
use wa_store::StoreResult;

const SCHEMA: &str = "schema";
const CURRENT: i64 = 4;

/// True when the data is in the current schema (or there is none yet).
pub async fn is_current(db: &Database) -> StoreResult<bool> {
    if version(db).await? >= CURRENT {
        return Ok(true);
    }
    let any = db
        .collection::<Document>(MESSAGES)
        .find_one(doc! {})
        .await
        .map_err(store_error)?;
    Ok(any.is_none())
}

async fn version(db: &Database) -> StoreResult<i64> {
    let meta = db
        .collection::<Document>(META)
        .find_one(doc! {"_id": SCHEMA})
        .await
        .map_err(store_error)?;
    Ok(meta
        .and_then(|m| m.get("version").and_then(integer))
        .unwrap_or(0))
}

pub async fn to_current(db: &Database) -> StoreResult<()> {
    let from = version(db).await?;
    if from >= CURRENT {
        return Ok(());
    }
    let messages = db.collection::<Document>(MESSAGES);
    if messages
        .find_one(doc! {})
        .await
        .map_err(store_error)?
        .is_some()
    {
        if from < 2 {
            tracing::info!("migrating MongoDB data to schema 2: counters and settled messages");
            settle_all(db).await?;
            recount_conversations(db).await?;
            recount_stats(db).await?;
        }
        if from < 3 {
            tracing::info!("migrating MongoDB data to schema 3: customer service windows");
            note_last_inbound(db).await?;
        }
        tracing::info!("migrating MongoDB data to schema 4: conversations counted per number");
        count_conversations(db).await?;
    }
    // Version 1 found unread messages by status; now by what was counted.
    let _ = messages.drop_index("conversationId_1_status_1").await;
    db.collection::<Document>(META)
        .update_one(doc! {"_id": SCHEMA}, doc! {"$set": {"version": CURRENT}})
        .upsert(true)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Everything stored so far is counted (version 1 recomputed summaries).
async fn settle_all(db: &Database) -> StoreResult<()> {
    let messages = db.collection::<Document>(MESSAGES);
    for status in KNOWN_STATUSES {
        messages
            .update_many(
                doc! {SETTLED: {"$exists": false}, "status": status},
                doc! {"$set": {SETTLED: status}},
            )
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Each summary's counters from its messages, and what version 2 guards
/// summary changes on.
async fn recount_conversations(db: &Database) -> StoreResult<()> {
    let per_conversation = |filter: Document| async move {
        let groups = count_messages(db, filter, "$conversationId").await?;
        StoreResult::Ok(
            groups
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
    };
    let totals = per_conversation(doc! {}).await?;
    let unread = per_conversation(doc! {"direction": "inbound", "status": RECEIVED}).await?;
    let conversations = db.collection::<Document>(CONVERSATIONS);
    let summaries: Vec<Document> = conversations
        .find(doc! {})
        .projection(doc! {"userName": 1, "sortKey": 1, "lastMessageStatus": 1})
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    for summary in summaries {
        let Ok(id) = summary.get_str("_id") else {
            continue;
        };
        let sort_key = summary.get_str("sortKey").unwrap_or_default();
        // A name shown came from the last message or an earlier one.
        let named = !summary.get_str("userName").unwrap_or("+").starts_with('+');
        let rank =
            Status::from(summary.get_str("lastMessageStatus").unwrap_or_default()).stored_rank();
        conversations
            .update_one(
                doc! {"_id": id},
                doc! {
                    "$set": {
                        "messageCount": totals.get(id).copied().unwrap_or(0),
                        "unreadCount": unread.get(id).copied().unwrap_or(0),
                        "lastStatusRank": rank,
                        "nameKey": if named { sort_key } else { "" },
                    },
                    "$unset": {"rev": ""},
                },
            )
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Each summary's time of its customer's newest message (one indexed
/// query per conversation, once).
async fn note_last_inbound(db: &Database) -> StoreResult<()> {
    let conversations = db.collection::<Document>(CONVERSATIONS);
    let ids: Vec<Document> = conversations
        .find(doc! {super::documents::LAST_INBOUND: {"$exists": false}})
        .projection(doc! {"_id": 1})
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    for id in ids.iter().filter_map(|d| d.get_str("_id").ok()) {
        let newest = db
            .collection::<Document>(MESSAGES)
            .find_one(doc! {"conversationId": id, "direction": "inbound"})
            .sort(doc! {"timestamp": -1})
            .projection(doc! {"timestamp": 1})
            .await
            .map_err(store_error)?;
        if let Some(at) = newest.as_ref().and_then(|m| m.get("timestamp")) {
            conversations
                .update_one(
                    doc! {"_id": id},
                    doc! {"$set": {super::documents::LAST_INBOUND: at.clone()}},
                )
                .await
                .map_err(store_error)?;
        }
    }
    Ok(())
}

/// Each business number's count of conversations, from its summaries
/// (once; change sets and adoption keep it since). Summaries of no number
/// yet are counted when adopted.
pub(super) async fn count_conversations(db: &Database) -> StoreResult<()> {
    let groups: Vec<Document> = db
        .collection::<Document>(CONVERSATIONS)
        .aggregate([
            doc! {"$match": {"phoneNumberId": {"$exists": true}}},
            doc! {"$group": {"_id": "$phoneNumberId", "n": {"$sum": 1}}},
        ])
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    let numbers = db.collection::<Document>(NUMBERS);
    for group in &groups {
        let (Ok(number), Some(n)) = (group.get_str("_id"), group.get("n").and_then(integer)) else {
            continue;
        };
        numbers
            .update_one(doc! {"_id": number}, doc! {"$set": {"conversations": n}})
            .upsert(true)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// The deployment's totals, into the first stats document.
async fn recount_stats(db: &Database) -> StoreResult<()> {
    let mut totals = Counts::default();
    for direction in [Direction::Inbound, Direction::Outbound] {
        let name = super::documents::direction_name(direction);
        for (status, n) in count_messages(db, doc! {"direction": name}, "$status").await? {
            for (field, one) in Counts::of(direction, &status).fields() {
                totals.add_field(&field, one * n);
            }
        }
    }
    // Nested `status.<name>` through dotted paths; the other documents
    // hold zeros (nothing was counted into them before this version).
    let set: Document = totals
        .fields()
        .into_iter()
        .map(|(name, n)| (name, mongodb::bson::Bson::Int64(n)))
        .collect();
    db.collection::<Document>(STATS)
        .update_one(
            doc! {"_id": stats_id(&wa_core::plan::StatsKey::home(0))},
            doc! {"$set": set},
        )
        .upsert(true)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Messages matching `filter`, counted by the value of `key` (a `$field`).
async fn count_messages(
    db: &Database,
    filter: Document,
    key: &str,
) -> StoreResult<Vec<(String, i64)>> {
    let groups: Vec<Document> = db
        .collection::<Document>(MESSAGES)
        .aggregate([
            doc! {"$match": filter},
            doc! {"$group": {"_id": key, "n": {"$sum": 1}}},
        ])
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    Ok(groups
        .iter()
        .filter_map(|g| {
            Some((
                g.get_str("_id").ok()?.to_owned(),
                g.get("n").and_then(integer)?,
            ))
        })
        .collect())
}
