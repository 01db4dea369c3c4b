//! What the shared crate's integration tests have in common.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use wa_broker::payload_id;
use wa_core::domain::RawPayload;
use wa_core::webhook;
use wa_store::Store;

/// A prepared SQLite store in a directory of its own.
pub async fn sqlite(name: &str) -> Arc<dyn Store> {
    let path = std::env::temp_dir()
        .join(test_support::unique_name(name))
        .join("store.sqlite3");
    let store = wa_store_sqlite::SqliteStore::open(&path).unwrap();
    store.prepare().await.unwrap();
    Arc::new(store)
}

/// A prepared MongoDB store in a database of its own on a test server.
pub async fn mongo(server: test_support::Mongo, name: &str) -> Arc<dyn Store> {
    let database = test_support::unique_name(name);
    let store = wa_store_mongo::MongoStore::connect(&server.uri(&database), "tests")
        .await
        .unwrap();
    store.prepare().await.unwrap();
    Arc::new(store)
}

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
