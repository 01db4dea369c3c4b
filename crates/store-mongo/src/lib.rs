//! The MongoDB store (MongoDB 6+).
//!
//! Collections: `processed_messages` (one document per message, `_id` =
//! `messageId` except for messages sent through the API, which keep their
//! local id as `_id` when `messageId` becomes WhatsApp's), `sends` (the
//! messages waiting to be sent through WhatsApp), `conversations` (summaries with their counters),
//! `stats` (the counters, in [`STATS_SHARDS`] documents per business
//! number: the home number's are the original `shard-NN`, another
//! number's `shard-NN-<phone_number_id>`, created when first counted in),
//! `pending_statuses` (statuses that arrived before their message),
//! `webhook_payloads` (raw bodies), `rejected_items` (malformed webhook
//! items, with the reason), `outbox` (events committed with their
//! changes, until relayed to the event log), `numbers` (the business
//! numbers webhooks came for, with their display numbers, and each
//! number's count of conversations, kept as summaries are created or
//! adopted) and `meta` (the
//! schema version, the home number). Conversations, messages, queued sends
//! and parked statuses carry their business number (`phoneNumberId`). Only
//! plain CRUD operators are used; a batch costs a handful of round trips
//! whatever the size of the data (see [`changes`]).

mod changes;
mod config;
mod documents;
mod migrate;
mod search;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use std::sync::PoisonError;
use tokio::sync::OnceCell;

use documents::{
    conversation_from_document, integer, message_from_document, store_error, to_bson_date,
};
use wa_core::domain::{Conversation, Event, Message, Page, QueuedSend, Stats};
use wa_core::numbers::{BusinessNumber, number_of, stats_numbers, stats_owner};
use wa_core::plan::counts::Counts;
use wa_core::plan::{ChangeSet, Known, Lookup, PARKED_STATUS_TTL, STATS_SHARDS, StatsKey};
use wa_store::{KeyClaim, Store, StoreError, StoreResult, conversations_before};

pub use changes::durable;
pub use config::MongoConfig;
pub use documents::{message_from_document as read_message, message_to_document};

pub const MESSAGES: &str = "processed_messages";
pub const CONVERSATIONS: &str = "conversations";
pub const STATS: &str = "stats";
pub const PENDING_STATUSES: &str = "pending_statuses";
pub const PAYLOADS: &str = "webhook_payloads";
pub const META: &str = "meta";
pub const OUTBOX: &str = "outbox";
pub const REJECTED: &str = "rejected_items";
pub const SENDS: &str = "sends";
pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
/// The business numbers webhooks came for (`_id` = phone number id).
pub const NUMBERS: &str = "numbers";
/// `_id` of the `meta` document recording the home number.
const HOME_NUMBER: &str = "homeNumber";
/// `_id` of the `meta` document noting that data stored before numbers
/// existed has been given its number.
const NUMBERS_ADOPTED: &str = "numbersAdopted";
/// Field of a message holding its media object's id (`content.id`).
const MEDIA_ID: &str = "content.id";
/// Documents named per `$in` update when adopting numbers.
const ADOPT_CHUNK: usize = 1000;

/// `_id` of a stats counter document.
pub fn stats_id(key: &StatsKey) -> String {
    if key.number.is_empty() {
        format!("shard-{:02}", key.shard)
    } else {
        format!("shard-{:02}-{}", key.shard, key.number)
    }
}

/// The stats key of a stats document's `_id` ([`stats_id`]).
pub fn stats_key(id: &str) -> Option<StatsKey> {
    let rest = id.strip_prefix("shard-")?;
    let (shard, number) = rest.split_once('-').unwrap_or((rest, ""));
    Some(StatsKey {
        number: number.to_owned(),
        shard: shard.parse().ok()?,
    })
}

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    /// Whether the server runs multi-document transactions (a replica set
    /// member or mongos), found out on first use.
    transactions: std::sync::Arc<OnceCell<bool>>,
    /// Set once the data is known to be in the current schema.
    current: std::sync::Arc<OnceCell<()>>,
    /// Tests: the next change set stops after this many steps, as if the
    /// process died there.
    stop_after: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The home number once read: recorded once, it never changes.
    home: std::sync::Arc<std::sync::OnceLock<String>>,
    /// Business numbers (and display numbers) this process has recorded,
    /// so that a batch of a known number writes nothing more.
    noted: std::sync::Arc<std::sync::Mutex<HashMap<String, Option<String>>>>,
    /// Counter documents (collection, `_id`) known to exist: never
    /// deleted, so change sets need not create them again (see
    /// `changes::prelude`).
    ensured: std::sync::Arc<std::sync::Mutex<HashSet<(&'static str, String)>>>,
}

impl MongoStore {
    /// Connects to the database named in the URI's path (default
    /// `whatsapp_clone`). The driver connects lazily; call [`Store::ping`]
    /// or [`Store::prepare`] to find out whether it is up.
    pub async fn connect(uri: &str, app_name: &str) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::rejected(format!("invalid MONGODB_URI: {e}")))?;
        options.app_name = Some(app_name.to_owned());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        if options.write_concern.is_none() {
            options.write_concern = Some(durable());
        }
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| "whatsapp_clone".to_owned());
        let client = Client::with_options(options).map_err(store_error)?;
        Ok(Self::from_client(&client, &database))
    }

    /// A store on a client configured elsewhere (tests watch its commands).
    pub fn from_client(client: &Client, database: &str) -> Self {
        Self {
            db: client.database(database),
            transactions: Default::default(),
            current: Default::default(),
            stop_after: std::sync::Arc::new(usize::MAX.into()),
            home: Default::default(),
            noted: Default::default(),
            ensured: Default::default(),
        }
    }

    /// Makes the next change set stop after `steps` of its write steps and
    /// fail, as a crash there would (for tests of what a retry finishes).
    #[doc(hidden)]
    pub fn stop_next_change_set_after(&self, steps: usize) {
        self.stop_after
            .store(steps, std::sync::atomic::Ordering::SeqCst);
    }

    fn take_stop(&self) -> usize {
        self.stop_after
            .swap(usize::MAX, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn collection(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Transactions need a replica set member or a mongos; a standalone
    /// server refuses them (and so does nothing claim them falsely).
    async fn transactions(&self) -> StoreResult<bool> {
        self.transactions
            .get_or_try_init(|| async {
                let hello = self
                    .db
                    .run_command(doc! {"hello": 1})
                    .await
                    .map_err(store_error)?;
                let replicated =
                    hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid");
                if replicated {
                    tracing::info!("MongoDB replica set: each batch is one transaction");
                } else {
                    tracing::warn!(
                        "MongoDB is a standalone server: no transactions; each batch is applied in \
                         steps that a retry completes (run MongoDB as a replica set, even of one \
                         member, for atomic batches)"
                    );
                }
                Ok(replicated)
            })
            .await
            .copied()
    }

    /// Refuses to write into data of an older schema until a processor
    /// has migrated it (at its start).
    async fn ensure_current(&self) -> StoreResult<()> {
        self.current
            .get_or_try_init(|| async {
                if migrate::is_current(&self.db).await? {
                    Ok(())
                } else {
                    Err(StoreError::transient(
                        "the database is being migrated to this version; try again shortly",
                    ))
                }
            })
            .await
            .copied()
    }

    /// Creates the indexes every query relies on; idempotent.
    async fn ensure_indexes(&self) -> StoreResult<()> {
        let unique = IndexOptions::builder().unique(true).build();
        self.collection(MESSAGES)
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! {"messageId": 1})
                    .options(unique)
                    .build(),
                // A conversation's messages, newest first.
                IndexModel::builder()
                    .keys(doc! {"conversationId": 1, "timestamp": -1, "messageId": -1})
                    .build(),
                // Its messages counted as unread, when it is marked read.
                IndexModel::builder()
                    .keys(doc! {"conversationId": 1, documents::SETTLED: 1})
                    .build(),
                // Search: a word's messages, newest first, in the order
                // pages are read (multikey).
                IndexModel::builder()
                    .keys(doc! {search::SEARCH: 1, "timestamp": -1, "messageId": -1})
                    .build(),
                // A media object's message (sparse: most messages have no
                // media, and an equality on a string never needs those).
                IndexModel::builder()
                    .keys(doc! {MEDIA_ID: 1})
                    .options(IndexOptions::builder().sparse(true).build())
                    .build(),
            ])
            .await
            .map_err(store_error)?;
        self.collection(CONVERSATIONS)
            .create_indexes([
                IndexModel::builder().keys(doc! {"sortKey": -1}).build(),
                // A number's conversations, newest first (several numbers:
                // merged in order from each one's range), and counted.
                IndexModel::builder()
                    .keys(doc! {"phoneNumberId": 1, "sortKey": -1})
                    .build(),
            ])
            .await
            .map_err(store_error)?;
        let ttl = IndexOptions::builder()
            .expire_after(PARKED_STATUS_TTL)
            .build();
        self.collection(PENDING_STATUSES)
            .create_indexes([
                IndexModel::builder().keys(doc! {"messageId": 1}).build(),
                IndexModel::builder()
                    .keys(doc! {"parkedAt": 1})
                    .options(ttl)
                    .build(),
            ])
            .await
            .map_err(store_error)?;
        self.collection(OUTBOX)
            .create_index(IndexModel::builder().keys(doc! {"at": 1, "n": 1}).build())
            .await
            .map_err(store_error)?;
        self.collection(SENDS)
            .create_indexes([
                IndexModel::builder().keys(doc! {"due": 1}).build(),
                // A conversation's first send: the one that may go out
                // (ties of `order`, the same microsecond, are rare).
                IndexModel::builder()
                    .keys(doc! {"conversationId": 1, "order": 1})
                    .build(),
            ])
            .await
            .map_err(store_error)?;
        // The home number's stats documents exist from the start (another
        // number's are created by the change set first counting in them):
        // counter changes are guarded updates, never upserts.
        let shards: Vec<Document> = (0..STATS_SHARDS)
            .map(|shard| {
                doc! {"q": {"_id": stats_id(&StatsKey::home(shard))}, "u": {"$setOnInsert": {"messages": 0_i64}}, "upsert": true}
            })
            .collect();
        self.db
            .run_command(doc! {"update": STATS, "updates": shards, "ordered": false})
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
        self.ensure_indexes().await?;
        migrate::to_current(&self.db).await?;
        // Messages stored before search existed: indexed in the background.
        tokio::spawn(search::backfill(self.clone()));
        self.transactions().await.map(drop)
    }

    async fn load(&self, lookup: &Lookup) -> StoreResult<Known> {
        self.load_known(lookup).await
    }

    async fn apply(&self, changes: &ChangeSet) -> StoreResult<()> {
        self.ensure_current().await?;
        self.apply_changes(changes).await
    }

    async fn conversations(
        &self,
        page: Page,
        numbers: Option<&[String]>,
    ) -> StoreResult<Vec<Conversation>> {
        let mut filter = match conversations_before(&page) {
            Some(key) => doc! {"sortKey": {"$lt": key}},
            None => doc! {},
        };
        if let Some(numbers) = numbers {
            if numbers.is_empty() {
                return Ok(Vec::new());
            }
            filter.insert("phoneNumberId", doc! {"$in": numbers});
        }
        let docs: Vec<Document> = self
            .collection(CONVERSATIONS)
            .find(filter)
            .sort(doc! {"sortKey": -1})
            .limit(page.limit)
            .projection(doc! {documents::JOURNAL: 0})
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
            .collection(MESSAGES)
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
            .collection(MESSAGES)
            .find_one(doc! {"$or": [{"messageId": message_id}, {"_id": message_id}]})
            .await
            .map_err(store_error)?;
        found.map(message_from_document).transpose()
    }

    async fn media_conversation(&self, media_id: &str) -> StoreResult<Option<String>> {
        let found = self
            .collection(MESSAGES)
            .find_one(doc! {
                MEDIA_ID: media_id,
                "type": {"$in": wa_core::domain::MEDIA_KINDS.as_slice()},
            })
            .projection(doc! {"_id": 0, "conversationId": 1})
            // The first message naming it owns it: a later one naming the
            // same id (a business resending it elsewhere) does not.
            .sort(doc! {"timestamp": 1, "_id": 1})
            .await
            .map_err(store_error)?;
        Ok(found.and_then(|m| m.get_str("conversationId").ok().map(str::to_owned)))
    }

    async fn conversation(&self, conversation_id: &str) -> StoreResult<Option<Conversation>> {
        let found = self
            .collection(CONVERSATIONS)
            .find_one(doc! {"_id": conversation_id})
            .projection(doc! {documents::JOURNAL: 0})
            .await
            .map_err(store_error)?;
        Ok(found.as_ref().map(conversation_from_document))
    }

    async fn due_sends(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> StoreResult<Vec<QueuedSend>> {
        let documents: Vec<Document> = self
            .collection(SENDS)
            .find(doc! {"due": {"$lte": now.timestamp_millis()}})
            .sort(doc! {"due": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        documents
            .iter()
            .map(documents::send_from_document)
            .collect()
    }

    async fn hold_sends(
        &self,
        conversation_id: &str,
        first: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let until = until.timestamp_millis();
        self.collection(SENDS)
            .update_many(
                doc! {"conversationId": conversation_id, "_id": {"$ne": first}, "due": {"$lt": until}},
                doc! {"$set": {"due": until, "held": true}},
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn first_send(&self, conversation_id: &str) -> StoreResult<Option<QueuedSend>> {
        let found = self
            .collection(SENDS)
            .find_one(doc! {"conversationId": conversation_id})
            // Served by the index in order (a tie, the same microsecond,
            // is rare; sorting by `_id` too would sort the whole queue).
            .sort(doc! {"order": 1})
            .await
            .map_err(store_error)?;
        found
            .as_ref()
            .map(documents::send_from_document)
            .transpose()
    }

    async fn search(
        &self,
        query: &wa_core::search::Query,
        scope: &wa_store::SearchScope,
        limit: usize,
    ) -> StoreResult<wa_store::SearchPage> {
        self.search_messages(query, scope, limit).await
    }

    async fn release_key(&self, key: &str, fingerprint: &str) -> StoreResult<()> {
        self.collection(IDEMPOTENCY_KEYS)
            .delete_one(doc! {"_id": key, "fingerprint": fingerprint})
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn claim_key(&self, key: &str, fingerprint: &str) -> StoreResult<KeyClaim> {
        let keys = self.collection(IDEMPOTENCY_KEYS);
        // One insert: the unique `_id` lets exactly one concurrent claim in.
        let inserted = keys
            .insert_one(
                doc! {"_id": key, "fingerprint": fingerprint, "at": mongodb::bson::DateTime::now()},
            )
            .await;
        match inserted {
            Ok(_) => return Ok(KeyClaim::New),
            Err(e) if documents::is_duplicate_key(&e) => {}
            Err(e) => return Err(store_error(e)),
        }
        let first = keys
            .find_one(doc! {"_id": key})
            .await
            .map_err(store_error)?
            .ok_or_else(|| StoreError::transient("an idempotency key vanished while read"))?;
        Ok(if first.get_str("fingerprint").ok() == Some(fingerprint) {
            KeyClaim::Same
        } else {
            KeyClaim::Other
        })
    }

    async fn update_send(
        &self,
        send: &QueuedSend,
        expected_due: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<bool> {
        let updated = self
            .collection(SENDS)
            .update_one(
                doc! {"_id": &send.id, "due": expected_due.timestamp_millis()},
                doc! {"$set": documents::send_document(send)?},
            )
            .await
            .map_err(store_error)?;
        Ok(updated.matched_count == 1)
    }

    async fn home_number(&self, candidate: Option<&str>) -> StoreResult<Option<String>> {
        if let Some(home) = self.home.get() {
            return Ok(Some(home.clone()));
        }
        let meta = self.collection(META);
        if let Some(candidate) = candidate {
            // One upsert: of concurrent callers, the first insert wins and
            // the others' `$setOnInsert` changes nothing.
            let recorded = meta
                .update_one(
                    doc! {"_id": HOME_NUMBER},
                    doc! {"$setOnInsert": {"number": candidate}},
                )
                .upsert(true)
                .await;
            match recorded {
                Ok(_) => {}
                // Two upserts raced to insert: the other one's is there.
                Err(e) if documents::is_duplicate_key(&e) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        let recorded = meta
            .find_one(doc! {"_id": HOME_NUMBER})
            .await
            .map_err(store_error)?;
        let home = recorded.and_then(|d| d.get_str("number").ok().map(str::to_owned));
        if let Some(home) = &home {
            let _ = self.home.set(home.clone());
        }
        Ok(home)
    }

    async fn note_numbers(&self, numbers: &[(String, Option<String>)]) -> StoreResult<()> {
        let display_of = |display: &Option<String>| display.clone().filter(|d| !d.is_empty());
        let news: Vec<(String, Option<String>)> = {
            let noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
            numbers
                .iter()
                .map(|(number, display)| (number.clone(), display_of(display)))
                .filter(|(number, display)| match noted.get(number) {
                    None => true,
                    Some(known) => display.is_some() && display != known,
                })
                .collect()
        };
        if news.is_empty() {
            return Ok(());
        }
        let statements: Vec<Document> = news
            .iter()
            .map(|(number, display)| {
                // `phoneNumberId` set even on an existing document: one
                // made by counting a conversation is listed only once the
                // number is noted.
                let update = match display {
                    Some(display) => {
                        doc! {"$set": {"phoneNumberId": number, "businessNumber": display}}
                    }
                    None => doc! {"$set": {"phoneNumberId": number}},
                };
                doc! {"q": {"_id": number}, "u": update, "upsert": true}
            })
            .collect();
        let answer = self
            .db
            .run_command(doc! {"update": NUMBERS, "updates": statements, "ordered": false})
            .await
            .map_err(store_error)?;
        documents::check_upserts(&answer)?;
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        for (number, display) in news {
            let known = noted.entry(number).or_default();
            if display.is_some() {
                *known = display;
            }
        }
        Ok(())
    }

    async fn numbers(&self) -> StoreResult<Vec<BusinessNumber>> {
        let (recorded, shards, home) = futures::try_join!(
            async {
                self.collection(NUMBERS)
                    .find(doc! {})
                    .await
                    .map_err(store_error)?
                    .try_collect::<Vec<Document>>()
                    .await
                    .map_err(store_error)
            },
            self.stats_documents(doc! {}),
            self.home_number(None),
        )?;
        // Noted numbers (a document made only to count conversations of a
        // number no webhook named yet is not one).
        let mut numbers: BTreeMap<String, Option<String>> = recorded
            .iter()
            .filter(|d| d.contains_key("phoneNumberId") || d.contains_key("businessNumber"))
            .filter_map(|d| {
                let number = d.get_str("_id").ok()?.to_owned();
                Some((number, d.get_str("businessNumber").ok().map(str::to_owned)))
            })
            .collect();
        let conversations: HashMap<&str, i64> = recorded
            .iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?, conversation_count(d))))
            .collect();
        if let Some(home) = &home {
            numbers.entry(home.clone()).or_default();
        }
        // Unread per number, from the counters: the home number's are
        // the documents of stats number "".
        let mut unread: HashMap<String, i64> = HashMap::new();
        for shard in &shards {
            let Some(key) = shard.get_str("_id").ok().and_then(stats_key) else {
                continue;
            };
            let Some(number) = stats_owner(&key.number, home.as_deref()) else {
                continue;
            };
            let mut counts = Counts::default();
            add_counter_fields(&mut counts, shard, "");
            *unread.entry(number.to_owned()).or_default() += counts.unread;
        }
        Ok(numbers
            .into_iter()
            .map(|(number, display)| BusinessNumber {
                unread_count: unread.get(&number).copied().unwrap_or(0),
                conversations: conversations.get(number.as_str()).copied().unwrap_or(0),
                phone_number_id: number,
                business_number: display,
            })
            .collect())
    }

    async fn adopt_numbers(&self, default: Option<&str>) -> StoreResult<Option<String>> {
        self.adopt(default).await
    }

    /// The stats documents summed, and the numbers of summaries and
    /// rejected items from their collections' metadata (for some business
    /// numbers: their counts of conversations): no scan.
    async fn stats(&self, numbers: Option<&[String]>) -> StoreResult<Stats> {
        let (shards, conversations) = match numbers {
            None => futures::try_join!(self.stats_documents(doc! {}), async {
                self.collection(CONVERSATIONS)
                    .estimated_document_count()
                    .await
                    .map_err(store_error)
            },)?,
            Some(numbers) => {
                let home = self.home_number(None).await?;
                let ids: Vec<String> = stats_numbers(numbers, home.as_deref())
                    .into_iter()
                    .flat_map(|number| {
                        (0..STATS_SHARDS).map(move |shard| {
                            stats_id(&StatsKey {
                                number: number.to_owned(),
                                shard,
                            })
                        })
                    })
                    .collect();
                let (shards, counted) =
                    futures::try_join!(self.stats_documents(doc! {"_id": {"$in": ids}}), async {
                        self.collection(NUMBERS)
                            .find(doc! {"_id": {"$in": numbers}})
                            .projection(doc! {"conversations": 1})
                            .await
                            .map_err(store_error)?
                            .try_collect::<Vec<Document>>()
                            .await
                            .map_err(store_error)
                    },)?;
                let conversations: i64 = counted.iter().map(conversation_count).sum();
                (shards, u64::try_from(conversations).unwrap_or(0))
            }
        };
        let rejected = self
            .collection(REJECTED)
            .estimated_document_count()
            .await
            .map_err(store_error)?;
        let mut counts = Counts::default();
        for shard in &shards {
            add_counter_fields(&mut counts, shard, "");
        }
        let mut stats = counts.to_stats(i64::try_from(conversations).unwrap_or(i64::MAX));
        stats.rejected_items = i64::try_from(rejected).unwrap_or(i64::MAX);
        Ok(stats)
    }

    async fn outbox(&self, age: Duration, limit: usize) -> StoreResult<Vec<Event>> {
        self.outbox_events(age, limit).await
    }

    async fn relayed(&self, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.collection(OUTBOX)
            .delete_many(doc! {"_id": {"$in": ids}})
            .await
            .map(drop)
            .map_err(store_error)
    }
}

impl MongoStore {
    /// Stats documents matching `filter`, without their journals.
    async fn stats_documents(&self, filter: Document) -> StoreResult<Vec<Document>> {
        self.collection(STATS)
            .find(filter)
            .projection(doc! {documents::JOURNAL: 0})
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)
    }

    /// See [`Store::adopt_numbers`]. Only documents without a number are
    /// written (`$exists: false` in every filter), so it can run again,
    /// and alongside change sets, which tag what they write.
    async fn adopt(&self, default: Option<&str>) -> StoreResult<Option<String>> {
        let meta = self.collection(META);
        let adopted = meta
            .find_one(doc! {"_id": NUMBERS_ADOPTED})
            .await
            .map_err(store_error)?
            .is_some();
        let untagged = doc! {"phoneNumberId": {"$exists": false}};
        // Summaries are looked up in their index, sends are few; messages
        // (unindexed by number: no query needs it) only until a pass has
        // been made, since change sets tag the messages they store.
        let mut collections = vec![CONVERSATIONS, SENDS];
        if !adopted {
            collections.push(MESSAGES);
        }
        let mut any = false;
        for name in collections {
            let found = self
                .collection(name)
                .find_one(untagged.clone())
                .projection(doc! {"_id": 1})
                .await
                .map_err(store_error)?;
            if found.is_some() {
                any = true;
                break;
            }
        }
        if !any {
            if !adopted {
                // Nothing to adopt (a new deployment): later starts need
                // not look through the messages.
                note_adopted(&meta).await?;
            }
            return self.home_number(None).await;
        }
        let mut home = self.home_number(None).await?;
        if home.is_none() {
            let candidate = match default {
                Some(default) => Some(default.to_owned()),
                None => self
                    .collection(MESSAGES)
                    .find_one(doc! {"phoneNumberId": {"$exists": true}})
                    .projection(doc! {"phoneNumberId": 1})
                    .await
                    .map_err(store_error)?
                    .and_then(|m| m.get_str("phoneNumberId").ok().map(str::to_owned)),
            };
            home = self.home_number(candidate.as_deref()).await?;
        }
        let Some(home) = home else {
            // No number to give: nothing is known of any.
            return Ok(None);
        };
        let displays: HashMap<String, String> = self
            .collection(NUMBERS)
            .find(doc! {"businessNumber": {"$exists": true}})
            .await
            .map_err(store_error)?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(store_error)?
            .iter()
            .filter_map(|d| {
                Some((
                    d.get_str("_id").ok()?.to_owned(),
                    d.get_str("businessNumber").ok()?.to_owned(),
                ))
            })
            .collect();
        // Summaries and sends by the number their conversation's id names
        // (the home number for `conv_<wa_id>`).
        for (name, id_field) in [(CONVERSATIONS, "_id"), (SENDS, "conversationId")] {
            let collection = self.collection(name);
            let documents: Vec<Document> = collection
                .find(untagged.clone())
                .projection(doc! {"_id": 1, id_field: 1})
                .await
                .map_err(store_error)?
                .try_collect()
                .await
                .map_err(store_error)?;
            let mut by_number: BTreeMap<&str, Vec<&Bson>> = BTreeMap::new();
            for document in &documents {
                let conversation = document.get_str(id_field).unwrap_or_default();
                if let (Some(number), Some(id)) =
                    (number_of(conversation, Some(&home)), document.get("_id"))
                {
                    by_number.entry(number).or_default().push(id);
                }
            }
            for (number, ids) in by_number {
                let mut set = doc! {"phoneNumberId": number};
                if name == CONVERSATIONS
                    && let Some(display) = displays.get(number)
                {
                    set.insert("businessNumber", display);
                }
                for chunk in ids.chunks(ADOPT_CHUNK) {
                    let adopted = collection
                        .update_many(
                            doc! {"_id": {"$in": chunk}, "phoneNumberId": {"$exists": false}},
                            doc! {"$set": set.clone()},
                        )
                        .await
                        .map_err(store_error)?;
                    // Counted for their number: what this pass tagged, so
                    // a concurrent or later pass counts none twice (a
                    // crash between the two leaves the count short).
                    if name == CONVERSATIONS && adopted.modified_count > 0 {
                        self.count_adopted(number, adopted.modified_count).await?;
                    }
                }
            }
        }
        // Messages of another number's conversations always carry it:
        // those without belong to the home number.
        let adopted_messages = self
            .collection(MESSAGES)
            .update_many(untagged, doc! {"$set": {"phoneNumberId": &home}})
            .await
            .map_err(store_error)?;
        if adopted_messages.modified_count > 0 {
            tracing::info!(
                messages = adopted_messages.modified_count,
                home = %home,
                "messages stored before numbers existed given the home number"
            );
        }
        note_adopted(&meta).await?;
        Ok(Some(home))
    }

    /// Adds `adopted` summaries to `number`'s count of conversations.
    async fn count_adopted(&self, number: &str, adopted: u64) -> StoreResult<()> {
        let numbers = self.collection(NUMBERS);
        // The document first (an upsert's insert racing another's could
        // lose the increment; a duplicate here is as good).
        match numbers
            .update_one(
                doc! {"_id": number},
                doc! {"$setOnInsert": {"conversations": 0_i64}},
            )
            .upsert(true)
            .await
        {
            Ok(_) => {}
            Err(e) if documents::is_duplicate_key(&e) => {}
            Err(e) => return Err(store_error(e)),
        }
        numbers
            .update_one(
                doc! {"_id": number},
                doc! {"$inc": {"conversations": i64::try_from(adopted).unwrap_or(i64::MAX)}},
            )
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// Whole outbox documents, oldest first, until `limit` events.
    async fn outbox_events(&self, age: Duration, limit: usize) -> StoreResult<Vec<Event>> {
        let before = chrono::Utc::now().timestamp_millis()
            - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let mut documents = self
            .collection(OUTBOX)
            .find(doc! {"at": {"$lt": before}})
            .sort(doc! {"at": 1, "n": 1})
            .batch_size(16)
            .await
            .map_err(store_error)?;
        let mut events = Vec::new();
        while events.len() < limit {
            let Some(document) = documents.try_next().await.map_err(store_error)? else {
                break;
            };
            let Ok(list) = document.get_array("events") else {
                continue;
            };
            events.extend(list.iter().filter_map(|event| {
                mongodb::bson::from_bson(event.clone())
                    .map_err(|e| tracing::error!(error = %e, "outbox event not understood"))
                    .ok()
            }));
        }
        Ok(events)
    }
}

/// A number document's count of conversations (none counted yet: 0).
fn conversation_count(document: &Document) -> i64 {
    document.get("conversations").and_then(integer).unwrap_or(0)
}

/// Notes that a pass of [`MongoStore::adopt`] found or left no untagged
/// message.
async fn note_adopted(meta: &Collection<Document>) -> StoreResult<()> {
    meta.update_one(
        doc! {"_id": NUMBERS_ADOPTED},
        doc! {"$set": {"at": mongodb::bson::DateTime::now()}},
    )
    .upsert(true)
    .await
    .map(drop)
    .map_err(store_error)
}

/// Adds a stats document's counters (nested `status.<name>` included).
fn add_counter_fields(counts: &mut Counts, document: &Document, prefix: &str) {
    for (name, value) in document {
        let name = format!("{prefix}{name}");
        match value {
            mongodb::bson::Bson::Document(inner) => {
                add_counter_fields(counts, inner, &format!("{name}."))
            }
            value => {
                if let Some(n) = integer(value) {
                    counts.add_field(&name, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica set's URI lists its members; nothing is contacted yet.
    #[tokio::test]
    async fn a_replica_set_uri_names_every_member_and_the_database() {
        let uri = "mongodb://mongo-0.mongo:27017,mongo-1.mongo:27017,mongo-2.mongo:27017/chats?replicaSet=rs0";
        let store = MongoStore::connect(uri, "test").await;
        let store = store.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.database().name(), "chats");
        let options = ClientOptions::parse(uri)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(options.hosts.len(), 3);
        assert_eq!(options.repl_set_name.as_deref(), Some("rs0"));
    }
}
