//! What the shared crate's integration tests have in common.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use chrono::Utc;
use wa_broker::payload_id;
use wa_core::domain::RawPayload;
use wa_core::webhook;

/// Webhook bodies as one batch for `Processor::process`.
pub fn items(bodies: &[Vec<u8>]) -> Vec<(RawPayload, webhook::Parsed)> {
    bodies
        .iter()
        .map(|body| {
            let raw = RawPayload {
                id: payload_id(body),
                body: Bytes::from(body.clone()),
                received_at: Utc::now(),
            };
            (raw, webhook::parse(body).unwrap())
        })
        .collect()
}

/// The journal entries left in MongoDB's counter documents (none once
/// every change set has finished).
pub async fn journals_left(db: &mongodb::Database) -> Vec<(String, mongodb::bson::Document)> {
    let mut left = Vec::new();
    for collection in ["conversations", "stats"] {
        for document in documents(db, collection).await {
            let journal = document
                .get_document("journal")
                .ok()
                .cloned()
                .unwrap_or_default();
            if !journal.is_empty() {
                left.push((collection.to_owned(), journal));
            }
        }
    }
    left
}

pub async fn documents(db: &mongodb::Database, collection: &str) -> Vec<mongodb::bson::Document> {
    use futures::TryStreamExt;
    db.collection(collection)
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}
