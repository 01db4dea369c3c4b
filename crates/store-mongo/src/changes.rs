//! Reading what a batch needs, and applying change sets, on MongoDB.
//!
//! A change set becomes a few write commands, each carrying many
//! statements (one round trip each), in these steps:
//! 0. sends to queue (a send whose message is missing is dropped by the
//!    sender, so a send stopped before step 1 is never sent);
//! 1. raw payloads, new messages, status updates, parked statuses;
//! 2. conversation summaries and counters, stats counters, unparking;
//! 3. settling the messages, dropping finished sends;
//! 4. dropping the journal entries.
//!
//! On a replica set the four steps are one transaction (majority write
//! concern, journaled). Elsewhere each step's commands run concurrently and
//! a crash can stop between steps; the order above is what lets a retry
//! finish the job (see [`wa_core::plan`]). Every guarded statement must
//! match; one that doesn't is a conflict, and the batch is planned again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::PoisonError;

use futures::TryStreamExt;
use mongodb::action::Action;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::{ClientSession, Collection};

use super::documents::{
    JOURNAL, LAST_INBOUND, SETTLED, journal_from_document, last_fields, message_from_document,
    message_to_document, name_fields, send_document, store_error, summary_from_document,
    to_bson_date,
};
use super::{
    CONVERSATIONS, MESSAGES, MongoStore, NUMBERS, OUTBOX, PAYLOADS, PENDING_STATUSES, REJECTED,
    SENDS, STATS, stats_id,
};
use wa_core::domain::{Event, RECEIVED, StatusChange, is_local_id};
use wa_core::plan::counts::Counts;
use wa_core::plan::forward::Forward;
use wa_core::plan::status::parked_key;
use wa_core::plan::{
    ChangeSet, ConversationChange, Counter, Entry, Known, Lookup, StatsChange, Stored, Update,
};
use wa_store::StoreResult;
use wa_store::error::Error;

const DUPLICATE_KEY: i32 = 11000;
/// Documents per insert command are cut at this size (a command must stay
/// under MongoDB's 16 MB).
const INSERT_BYTES: usize = 8 * 1024 * 1024;
/// Documents a lookup reads in its first answer.
const FIND_BATCH: u32 = 100_000;

impl MongoStore {
    pub(super) async fn load_known(&self, lookup: &Lookup) -> StoreResult<Known> {
        let (message_filter, parked_filter, mut conversation_ids) = match lookup {
            Lookup::Items {
                message_ids,
                conversation_ids,
            } => (
                (!message_ids.is_empty()).then(|| messages_named(message_ids)),
                (!message_ids.is_empty()).then(|| doc! {"messageId": {"$in": message_ids}}),
                conversation_ids.clone(),
            ),
            // Counted as unread: not read yet, or read by a change set that
            // stopped before settling them.
            // `wa_core::domain::is_unread`, as a filter.
            Lookup::Unread { conversation_id } => (
                Some(doc! {
                    "conversationId": conversation_id,
                    SETTLED: RECEIVED,
                    "direction": "inbound",
                }),
                None,
                vec![conversation_id.clone()],
            ),
        };
        let (messages, parked, mut summaries, stats) = futures::try_join!(
            find(self.collection(MESSAGES), message_filter, None),
            find(self.collection(PENDING_STATUSES), parked_filter, None),
            self.summaries(&conversation_ids),
            find(
                self.collection(STATS),
                Some(doc! {}),
                Some(doc! {JOURNAL: 1})
            ),
        )?;
        let mut known = Known {
            atomic: self.transactions().await?,
            ..Known::default()
        };
        for document in messages {
            let settled = document.get_str(SETTLED).ok().map(str::to_owned);
            let message = message_from_document(document)?;
            if !conversation_ids.contains(&message.conversation_id) {
                conversation_ids.push(message.conversation_id.clone());
            }
            known
                .messages
                .insert(message.message_id.clone(), Stored { message, settled });
        }
        // A status named another conversation than its message's (rare).
        let missing: Vec<String> = conversation_ids
            .iter()
            .filter(|id| {
                !summaries
                    .iter()
                    .any(|d| d.get_str("_id") == Ok(id.as_str()))
            })
            .cloned()
            .collect();
        if known
            .messages
            .values()
            .any(|s| missing.contains(&s.message.conversation_id))
        {
            summaries.extend(self.summaries(&missing).await?);
        }
        known.summaries = summaries
            .iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_owned(), summary_from_document(d))))
            .collect();
        known.parked = parked.iter().filter_map(parked_from_document).collect();
        known.stats_journals = stats
            .iter()
            .filter_map(|d| {
                let shard = super::stats_key(d.get_str("_id").ok()?)?;
                let journal = journal_from_document(d);
                (!journal.is_empty()).then_some((shard, journal))
            })
            .collect();
        Ok(known)
    }

    async fn summaries(&self, ids: &[String]) -> StoreResult<Vec<Document>> {
        let filter = (!ids.is_empty()).then(|| doc! {"_id": {"$in": ids}});
        let projection = doc! {
            "sortKey": 1, "lastMessageId": 1, "lastStatusRank": 1, "nameKey": 1, JOURNAL: 1,
            LAST_INBOUND: 1,
        };
        find(self.collection(CONVERSATIONS), filter, Some(projection)).await
    }

    pub(super) async fn apply_changes(&self, changes: &ChangeSet) -> StoreResult<()> {
        let mut needed = prelude(changes);
        {
            let ensured = self.ensured.lock().unwrap_or_else(PoisonError::into_inner);
            needed.retain(|document| !ensured.contains(document));
        }
        for write in prelude_writes(&needed) {
            self.write(&write, None).await?;
        }
        self.ensured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(needed);
        let mut steps = steps(changes)?;
        let stop = self.take_stop();
        let stopped = stop < steps.len();
        steps.truncate(stop);
        let crash = || Err(Error::transient("stopped half-way (simulated crash)"));
        if !self.transactions().await? {
            for step in &steps {
                let results =
                    futures::future::join_all(step.iter().map(|w| self.write_chain(w, None))).await;
                first_failure(results)?;
            }
            if stopped {
                return crash();
            }
            return self.journaled().await;
        }
        let mut session = self
            .database()
            .client()
            .start_session()
            .await
            .map_err(store_error)?;
        session
            .start_transaction()
            .write_concern(durable())
            .await
            .map_err(store_error)?;
        let mut outcome = Ok(());
        'steps: for step in &steps {
            for write in step {
                outcome = self.write_chain(write, Some(&mut session)).await;
                if outcome.is_err() {
                    break 'steps;
                }
            }
        }
        if outcome.is_err() || stopped {
            // Nothing of it is kept; a failed abort changes nothing more.
            let _ = session.abort_transaction().await;
            return if stopped { crash() } else { outcome };
        }
        commit(&mut session).await
    }

    /// Runs a write, then what must follow it.
    async fn write_chain(
        &self,
        write: &Write,
        mut session: Option<&mut ClientSession>,
    ) -> StoreResult<()> {
        self.write(write, session.as_deref_mut()).await?;
        for next in &write.then {
            self.write(next, session.as_deref_mut()).await?;
        }
        Ok(())
    }

    /// Runs one write command and checks its answer.
    async fn write(&self, write: &Write, session: Option<&mut ClientSession>) -> StoreResult<()> {
        let mut command = write.command.clone();
        if session.is_none() {
            // A standalone server (no transactions): acknowledged by it;
            // `journaled` follows. (Inside a transaction the commit
            // carries the write concern.)
            command.insert("writeConcern", doc! {"w": 1});
        }
        let run = self.database().run_command(command);
        let answer = match session {
            Some(session) => run.session(session).await,
            None => run.await,
        }
        .map_err(store_error)?;
        write.check(&answer)
    }
}

/// Majority of the replica set, on disk: what "stored" means before the
/// processor acknowledges a payload.
pub fn durable() -> mongodb::options::WriteConcern {
    mongodb::options::WriteConcern::builder()
        .w(mongodb::options::Acknowledgment::Majority)
        .journal(true)
        .build()
}

impl MongoStore {
    /// On a standalone server, waits until the journal holds every write
    /// made so far: one journaled write, acknowledged only once the
    /// journal (a single log) is on disk up to it. Cheaper than a journaled
    /// acknowledgement of every command.
    async fn journaled(&self) -> StoreResult<()> {
        let answer = self
            .database()
            .run_command(doc! {
                "update": super::META,
                "updates": [{"q": {"_id": "journal"}, "u": {"$inc": {"writes": 1_i64}}, "upsert": true}],
                "writeConcern": {"w": 1, "j": true},
            })
            .await
            .map_err(store_error)?;
        Write {
            command: Document::new(),
            expect: Expect::All(1),
            then: Vec::new(),
        }
        .check(&answer)
    }
}

/// Commits, retrying while the outcome is unknown (the driver's advice).
async fn commit(session: &mut ClientSession) -> StoreResult<()> {
    let mut attempts = 0;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && attempts < 3 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(store_error(e)),
        }
    }
}

/// Messages by WhatsApp's id, or by the local key of one we sent (it
/// keeps that key once it has WhatsApp's id: a status may name it by key).
fn messages_named(ids: &[String]) -> Document {
    let keys: Vec<&String> = ids.iter().filter(|id| is_local_id(id)).collect();
    if keys.is_empty() {
        doc! {"messageId": {"$in": ids}}
    } else {
        doc! {"$or": [{"messageId": {"$in": ids}}, {"_id": {"$in": keys}}]}
    }
}

async fn find(
    collection: Collection<Document>,
    filter: Option<Document>,
    projection: Option<Document>,
) -> StoreResult<Vec<Document>> {
    let Some(filter) = filter else {
        return Ok(Vec::new());
    };
    collection
        .find(filter)
        .optional(projection, |find, p| find.projection(p))
        // All in the first answer (up to 16 MB): one round trip.
        .batch_size(FIND_BATCH)
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)
}

fn parked_from_document(d: &Document) -> Option<StatusChange> {
    Some(StatusChange {
        message_id: d.get_str("messageId").ok()?.to_owned(),
        status: d.get_str("status").ok()?.into(),
        timestamp: super::documents::date_from_bson(d.get("timestamp")?)?,
        conversation_id: d.get_str("conversationId").ok()?.to_owned(),
        phone_number_id: d.get_str("phoneNumberId").ok().map(str::to_owned),
        errors: d.get("errors").map(|e| e.clone().into_relaxed_extjson()),
        callback: None,
    })
}

/// One write command, and what its answer must show.
struct Write {
    command: Document,
    expect: Expect,
    /// Written in order once this one is, only if it succeeded (what
    /// must follow it and nothing else).
    then: Vec<Write>,
}

enum Expect {
    /// Every statement matched or inserted: `n` is this.
    All(i64),
    /// Inserted, or already there (archived bodies, parked statuses).
    DuplicatesAllowed,
    /// Inserted; a duplicate means another writer stored it: a conflict.
    NoDuplicates,
    /// Best effort (journal cleanup): a statement may match nothing.
    Anything,
}

impl Write {
    fn check(&self, answer: &Document) -> StoreResult<()> {
        let errors = super::documents::write_errors(answer)?;
        let mut duplicates = 0;
        for error in errors.iter().filter_map(Bson::as_document) {
            let code = error.get("code").and_then(super::documents::integer);
            if code == Some(i64::from(DUPLICATE_KEY)) {
                duplicates += 1;
                continue;
            }
            return Err(Error::rejected(format!(
                "MongoDB refused a write: {}",
                error.get_str("errmsg").unwrap_or_default()
            )));
        }
        let n = answer
            .get("n")
            .and_then(super::documents::integer)
            .unwrap_or(0);
        match self.expect {
            Expect::All(expected) if duplicates > 0 || n != expected => Err(Error::conflict(
                format!("{} of {expected} guarded changes applied", n),
            )),
            Expect::NoDuplicates if duplicates > 0 => Err(Error::conflict(format!(
                "{duplicates} message(s) stored meanwhile by another writer"
            ))),
            _ => Ok(()),
        }
    }
}

/// Several failures: the one that says most about what to do.
fn first_failure(results: Vec<StoreResult<()>>) -> StoreResult<()> {
    let mut conflict = None;
    for result in results {
        match result {
            Ok(()) => {}
            Err(e) if e.kind == wa_store::error::ErrorKind::Conflict => conflict = Some(e),
            Err(e) => return Err(e),
        }
    }
    conflict.map_or(Ok(()), Err)
}

/// The change set's write commands, step by step (empty ones left out):
/// each step is sent once the previous one is written, so a crash stops
/// between steps, never with a later step before an earlier one.
fn steps(changes: &ChangeSet) -> StoreResult<Vec<Vec<Write>>> {
    Ok([
        queue_step(changes)?,
        record_step(changes)?,
        summary_step(changes)?,
        settle_step(changes),
        cleanup_step(changes),
    ]
    .into_iter()
    .filter(|step| !step.is_empty())
    .collect())
}

/// The documents a change set's guarded writes need to exist, by
/// collection and `_id`: the numbers' whose conversation counters it
/// increments and another number's stats documents (only the home
/// number's exist from the start). Empty until first needed; written
/// before the change set and outside its transaction: a duplicate key
/// aborts a transaction, and concurrent change sets may create the same
/// one.
fn prelude(changes: &ChangeSet) -> BTreeSet<(&'static str, String)> {
    let numbers = created_per_number(changes)
        .into_keys()
        .map(|number| (NUMBERS, number.to_owned()));
    let stats = changes
        .stats
        .iter()
        .filter(|change| !change.shard.number.is_empty())
        .map(|change| (STATS, stats_id(&change.shard)));
    numbers.chain(stats).collect()
}

/// Upserts creating the [`prelude`]'s documents if absent, one command per
/// collection.
fn prelude_writes(documents: &BTreeSet<(&'static str, String)>) -> Vec<Write> {
    [(NUMBERS, "conversations"), (STATS, "messages")]
        .into_iter()
        .filter_map(|(collection, counter)| {
            let statements: Vec<Document> = documents
                .iter()
                .filter(|(of, _)| *of == collection)
                .map(|(_, id)| {
                    doc! {"q": {"_id": id}, "u": {"$setOnInsert": {counter: 0_i64}}, "upsert": true}
                })
                .collect();
            (!statements.is_empty())
                .then(|| update(collection, statements, Expect::DuplicatesAllowed))
        })
        .collect()
}

/// The sends the change set queues, in a step before everything else.
fn queue_step(changes: &ChangeSet) -> StoreResult<Vec<Write>> {
    let mut queue = Vec::new();
    if !changes.enqueue.is_empty() {
        let statements = changes
            .enqueue
            .iter()
            .map(|send| {
                Ok(doc! {"q": {"_id": &send.id}, "u": {"$setOnInsert": send_document(send)?}, "upsert": true})
            })
            .collect::<StoreResult<Vec<_>>>()?;
        queue.push(update(SENDS, statements, Expect::Anything));
    }
    Ok(queue)
}

/// What is recorded as it came: raw payloads, refused items, new and
/// changed messages, statuses parked until their message arrives.
fn record_step(changes: &ChangeSet) -> StoreResult<Vec<Write>> {
    let mut first = Vec::new();
    let archived = changes.payloads.iter().map(|p| {
        doc! {
            "_id": &p.id,
            "body": String::from_utf8_lossy(&p.body).into_owned(),
            "receivedAt": to_bson_date(p.received_at),
        }
    });
    first.extend(inserts(
        PAYLOADS,
        archived.collect(),
        Expect::DuplicatesAllowed,
    ));
    let rejected = changes
        .rejected
        .iter()
        .map(|r| {
            Ok(doc! {
                "_id": &r.id,
                "payloadId": &r.payload_id,
                "path": &r.path,
                "reason": &r.reason,
                "item": bson::to_bson(&r.item).map_err(store_error)?,
                "at": bson::DateTime::now(),
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    first.extend(inserts(REJECTED, rejected, Expect::DuplicatesAllowed));
    let messages = changes
        .inserts
        .iter()
        .map(message_to_document)
        .collect::<StoreResult<Vec<_>>>()?;
    first.extend(inserts(MESSAGES, messages, Expect::NoDuplicates));
    first.extend(message_updates(&changes.updates)?);
    if !changes.park.is_empty() {
        let statements = changes
            .park
            .iter()
            .map(|change| {
                Ok(doc! {"q": {"_id": parked_key(change)}, "u": {"$setOnInsert": parked_document(change)?}, "upsert": true})
            })
            .collect::<StoreResult<Vec<_>>>()?;
        first.push(update(
            PENDING_STATUSES,
            statements,
            Expect::DuplicatesAllowed,
        ));
    }
    Ok(first)
}

/// The summaries a change set creates, per business number (those of no
/// number yet are counted when adopted).
fn created_per_number(changes: &ChangeSet) -> BTreeMap<&str, i64> {
    let mut created = BTreeMap::new();
    for change in changes.conversations.iter().filter(|c| c.create) {
        if let Some(number) = &change.phone_number_id {
            *created.entry(number.as_str()).or_default() += 1;
        }
    }
    created
}

/// What follows from the records: summaries and counters (with their
/// journal entries), the events, and parked statuses now applied.
fn summary_step(changes: &ChangeSet) -> StoreResult<Vec<Write>> {
    let mut second = Vec::new();
    let (mut must, mut forward) = (Vec::new(), Vec::new());
    for change in &changes.conversations {
        conversation_statements(change, &mut must, &mut forward);
    }
    if !must.is_empty() {
        let n = must.len() as i64;
        // Each number's count of conversations, once its new summaries
        // are created: in the transaction on a replica set. Without one,
        // right after the creations and only if they all succeeded, so a
        // retry (which finds the summaries created and creates nothing)
        // never counts them again; a crash between the two round trips
        // leaves the number's count short of this change set's creations
        // (`migrate::count_conversations` recounts).
        let counted = created_per_number(changes);
        let then = if counted.is_empty() {
            Vec::new()
        } else {
            let statements: Vec<Document> = counted
                .iter()
                .map(|(number, n)| {
                    doc! {"q": {"_id": *number}, "u": {"$inc": {"conversations": *n}}}
                })
                .collect();
            let expected = statements.len() as i64;
            vec![update(NUMBERS, statements, Expect::All(expected))]
        };
        // In order: a summary's creation before its further counters.
        second.push(Write {
            command: doc! {"update": CONVERSATIONS, "updates": must, "ordered": true},
            expect: Expect::All(n),
            then,
        });
    }
    if !forward.is_empty() {
        second.push(update(CONVERSATIONS, forward, Expect::Anything));
    }
    if !changes.stats.is_empty() {
        // The counter statements never upsert (a guard that no longer
        // holds matches nothing): another number's documents are created
        // before, by the prelude.
        let statements: Vec<Document> = changes.stats.iter().flat_map(stats_statements).collect();
        let n = statements.len() as i64;
        second.push(update(STATS, statements, Expect::All(n)));
    }
    // The events, committed with what they announce (before settling: a
    // retry announces again what was not settled, once per event id).
    second.extend(inserts(
        OUTBOX,
        outbox_documents(&changes.events)?,
        Expect::DuplicatesAllowed,
    ));
    if !changes.unpark.is_empty() {
        second.push(Write {
            command: doc! {
                "delete": PENDING_STATUSES,
                "deletes": [{"q": {"_id": {"$in": &changes.unpark}}, "limit": 0}],
            },
            expect: Expect::Anything,
            then: Vec::new(),
        });
    }
    Ok(second)
}

/// The messages settled at their status, and finished sends dequeued.
fn settle_step(changes: &ChangeSet) -> Vec<Write> {
    let mut third = Vec::new();
    if !changes.settle.is_empty() {
        let mut by_status: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, status) in &changes.settle {
            by_status.entry(status).or_default().push(id);
        }
        let statements = by_status
            .into_iter()
            .map(|(status, ids)| {
                doc! {"q": {"_id": {"$in": ids}}, "u": {"$set": {SETTLED: status}}, "multi": true}
            })
            .collect();
        third.push(update(MESSAGES, statements, Expect::Anything));
    }
    if !changes.dequeue.is_empty() {
        third.push(Write {
            command: doc! {
                "delete": SENDS,
                "deletes": [{"q": {"_id": {"$in": &changes.dequeue}}, "limit": 0}],
            },
            expect: Expect::Anything,
            then: Vec::new(),
        });
    }
    third
}

/// The journal entries of settled messages, no longer needed.
fn cleanup_step(changes: &ChangeSet) -> Vec<Write> {
    let mut fourth = Vec::new();
    let mut cleanups: BTreeMap<&Counter, Vec<(&str, &str)>> = BTreeMap::new();
    for cleanup in &changes.cleanup {
        cleanups
            .entry(&cleanup.counter)
            .or_default()
            .push((&cleanup.key, &cleanup.status));
    }
    let (mut conversations, mut stats) = (Vec::new(), Vec::new());
    for (counter, entries) in cleanups {
        let (id, statements) = match counter {
            Counter::Conversation(id) => (Bson::String(id.clone()), &mut conversations),
            Counter::Stats(shard) => (Bson::String(stats_id(shard)), &mut stats),
        };
        for chunk in entries.chunks(ENTRIES_PER_STATEMENT) {
            let mut filter = doc! {"_id": id.clone()};
            let mut unset = Document::new();
            for (key, status) in chunk {
                filter.insert(format!("{JOURNAL}.{key}"), *status);
                unset.insert(format!("{JOURNAL}.{key}"), "");
            }
            statements.push(doc! {"q": filter, "u": {"$unset": unset}});
        }
    }
    for (collection, statements) in [(CONVERSATIONS, conversations), (STATS, stats)] {
        if !statements.is_empty() {
            fourth.push(update(collection, statements, Expect::Anything));
        }
    }
    fourth
}

fn update(collection: &str, statements: Vec<Document>, expect: Expect) -> Write {
    Write {
        command: doc! {"update": collection, "updates": statements, "ordered": false},
        expect,
        then: Vec::new(),
    }
}

/// Insert commands for `documents`, each under the size MongoDB accepts.
/// Events per outbox document at most, and their bytes.
const OUTBOX_EVENTS: usize = 256;
const OUTBOX_BYTES: usize = 1024 * 1024;

/// A change set's events as outbox documents: a few documents of many
/// events in order (one document per event made the outbox the largest
/// write of a batch). A document's `_id` is its first event's id, so
/// forgetting relayed events by their ids finds their documents.
/// `at` in milliseconds: plain integers sort the same everywhere.
pub(super) fn outbox_documents(events: &[Event]) -> StoreResult<Vec<Document>> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut documents = Vec::new();
    let mut chunk: Vec<Bson> = Vec::new();
    let mut first = String::new();
    let mut bytes = 0;
    let flush = |chunk: &mut Vec<Bson>, first: &str, documents: &mut Vec<Document>| {
        if !chunk.is_empty() {
            let n = documents.len() as i64;
            documents.push(doc! {"_id": first, "events": std::mem::take(chunk), "at": now, "n": n});
        }
    };
    for event in events {
        let document = bson::to_document(event).map_err(store_error)?;
        let len = bson::to_vec(&document).map_or(0, |b| b.len());
        if chunk.len() == OUTBOX_EVENTS || (bytes + len > OUTBOX_BYTES && !chunk.is_empty()) {
            flush(&mut chunk, &first, &mut documents);
            bytes = 0;
        }
        if chunk.is_empty() {
            first = event.id();
        }
        bytes += len;
        chunk.push(Bson::Document(document));
    }
    flush(&mut chunk, &first, &mut documents);
    Ok(documents)
}

fn inserts(collection: &str, documents: Vec<Document>, expect: Expect) -> Vec<Write> {
    let mut commands = Vec::new();
    let mut chunk: Vec<Document> = Vec::new();
    let mut size = 0;
    let flush = |chunk: Vec<Document>, commands: &mut Vec<Write>| {
        if chunk.is_empty() {
            return;
        }
        commands.push(match expect {
            Expect::NoDuplicates => Write {
                command: doc! {"insert": collection, "documents": chunk, "ordered": false},
                expect: Expect::NoDuplicates,
                then: Vec::new(),
            },
            // Where one may be there already (a redelivery), an upsert that
            // inserts only if absent: a duplicate-key error, even one
            // ignored, aborts a MongoDB transaction.
            _ => {
                let statements = chunk
                    .into_iter()
                    .map(|mut document| {
                        let id = document.remove("_id").unwrap_or(Bson::Null);
                        doc! {"q": {"_id": id}, "u": {"$setOnInsert": document}, "upsert": true}
                    })
                    .collect();
                update(collection, statements, Expect::DuplicatesAllowed)
            }
        });
    };
    for document in documents {
        let len = bson::to_vec(&document).map_or(0, |b| b.len());
        if size + len > INSERT_BYTES && !chunk.is_empty() {
            flush(std::mem::take(&mut chunk), &mut commands);
            size = 0;
        }
        size += len;
        chunk.push(document);
    }
    flush(chunk, &mut commands);
    commands
}

/// Status updates of stored messages, guarded by the rank they were
/// planned from; identical ones (a conversation marked read) share one
/// statement.
fn message_updates(updates: &[Update]) -> StoreResult<Option<Write>> {
    if updates.is_empty() {
        return Ok(None);
    }
    let mut groups: Vec<(i32, Document, Vec<&str>)> = Vec::new();
    for update in updates {
        let m = &update.message;
        let mut set = doc! {
            "status": m.status.as_str(),
            "statusRank": m.status.stored_rank(),
        };
        if update.renamed_from.is_some() {
            set.insert("messageId", &m.message_id);
        }
        for status in &update.new_times {
            if let Some(at) = m.status_timestamps.get(status) {
                set.insert(format!("statusTimestamps.{status}"), to_bson_date(*at));
            }
        }
        if update.errors_changed {
            set.insert("errors", bson::to_bson(&m.errors).map_err(store_error)?);
        }
        match groups
            .iter_mut()
            .find(|(rank, s, _)| *rank == update.expected_rank && *s == set)
        {
            Some((_, _, ids)) => ids.push(&m.id),
            None => groups.push((update.expected_rank, set, vec![&m.id])),
        }
    }
    let statements = groups
        .into_iter()
        .map(|(rank, set, ids)| {
            doc! {"q": {"_id": {"$in": ids}, "statusRank": rank}, "u": {"$set": set}, "multi": true}
        })
        .collect();
    Ok(Some(update(
        MESSAGES,
        statements,
        Expect::All(updates.len() as i64),
    )))
}

fn parked_document(change: &StatusChange) -> StoreResult<Document> {
    let mut parked = doc! {
        "messageId": &change.message_id,
        "status": change.status.as_str(),
        "timestamp": to_bson_date(change.timestamp),
        "conversationId": &change.conversation_id,
        "parkedAt": bson::DateTime::now(),
    };
    if let Some(number) = &change.phone_number_id {
        parked.insert("phoneNumberId", number);
    }
    if let Some(errors) = &change.errors {
        parked.insert("errors", bson::to_bson(errors).map_err(store_error)?);
    }
    Ok(parked)
}

/// Journal entries per statement at the most. MongoDB takes thousands;
/// the MongoDB-wire stand-in the tests use mishandles an update of more
/// than about 60 fields (dotted paths taken literally, `$unset` ignored).
const ENTRIES_PER_STATEMENT: usize = 40;

/// Counter statements for one document: its journal entries in chunks,
/// each guarded by what its entries replace and adding their counts; the
/// first also carries `first` (filter and `$set` additions).
fn counter_statements(
    id: &Bson,
    journal: &[Entry],
    fields: impl Fn(&Counts) -> Document,
    first: (Document, Document),
    upsert: bool,
) -> Vec<Document> {
    let mut chunks: Vec<&[Entry]> = journal.chunks(ENTRIES_PER_STATEMENT).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let mut extra = Some(first);
    chunks
        .into_iter()
        .map(|entries| {
            let mut filter = doc! {"_id": id.clone()};
            let mut set = doc! {"updatedAt": bson::DateTime::now()};
            let mut counts = Counts::default();
            for entry in entries {
                let field = format!("{JOURNAL}.{}", entry.key);
                match &entry.expected {
                    Some(expected) => filter.insert(field.clone(), expected),
                    None => filter.insert(field.clone(), doc! {"$exists": false}),
                };
                set.insert(field, &entry.status);
                counts.add(&entry.counts);
            }
            let mut statement = doc! {};
            if let Some((more_filter, more_set)) = extra.take() {
                filter.extend(more_filter);
                set.extend(more_set);
                statement.insert("upsert", upsert);
            }
            let mut update = doc! {"$set": set};
            let inc = fields(&counts);
            if !inc.is_empty() {
                update.insert("$inc", inc);
            }
            statement.insert("q", filter);
            statement.insert("u", update);
            statement
        })
        .collect()
}

fn conversation_counts(counts: &Counts) -> Document {
    doc! {"messageCount": counts.messages, "unreadCount": counts.unread}
}

/// A conversation's statements: counters and journal, or the whole new
/// summary (must apply), and what only moves forward (applies if newer).
fn conversation_statements(
    change: &ConversationChange,
    must: &mut Vec<Document>,
    forward: &mut Vec<Document>,
) {
    let id = Bson::String(change.conversation_id.clone());
    if change.create {
        // Refused (duplicate key) if another writer created it first.
        let mut set = doc! {"conversationId": &change.conversation_id};
        if let Some(number) = &change.phone_number_id {
            set.insert("phoneNumberId", number);
        }
        if let Some(display) = &change.business_number {
            set.insert("businessNumber", display);
        }
        if let Some(last) = &change.last {
            set.extend(last_fields(last));
        }
        if let Some(name) = &change.name {
            set.extend(name_fields(name));
        }
        if let Some(at) = change.last_inbound {
            set.insert(LAST_INBOUND, to_bson_date(at));
        }
        let filter = doc! {"sortKey": {"$exists": false}};
        must.extend(counter_statements(
            &id,
            &change.journal,
            conversation_counts,
            (filter, set),
            true,
        ));
        return;
    }
    if !change.journal.is_empty() {
        must.extend(counter_statements(
            &id,
            &change.journal,
            conversation_counts,
            Default::default(),
            false,
        ));
    }
    let mut writes: Vec<Forward<'_>> = change.forward().collect();
    // The usual case: the newest message brings the name too (a name is
    // never newer than the last message, so the last one's guard does).
    if let (Some(last), Some(name)) = (&change.last, &change.name)
        && name.key == last.key
    {
        writes.retain(|w| !matches!(w, Forward::Last(_) | Forward::Name(_)));
        let mut set = last_fields(last);
        set.extend(name_fields(name));
        forward.push(doc! {"q": {"_id": &id, "sortKey": {"$lt": &last.key}}, "u": {"$set": set}});
    }
    forward.extend(
        writes
            .into_iter()
            .flat_map(|write| forward_statements(&id, write)),
    );
}

/// The updates a forward-only write stands for: their filter is
/// `Forward::holds` (wa_core::plan::forward) in MongoDB's terms.
fn forward_statements(id: &Bson, write: Forward<'_>) -> Vec<Document> {
    let one = match write {
        Forward::Last(last) => doc! {
            "q": {"_id": id, "sortKey": {"$lt": &last.key}},
            "u": {"$set": last_fields(last)},
        },
        Forward::Name(name) => doc! {
            "q": {"_id": id, "nameKey": {"$lt": &name.key}},
            "u": {"$set": name_fields(name)},
        },
        Forward::Status(moved) => {
            let mut set =
                doc! {"lastMessageStatus": moved.status.as_str(), "lastStatusRank": moved.rank};
            let shown_as = match &moved.renamed_from {
                // Shown under its old id until now: the new id and its key.
                Some(old) => {
                    set.insert("lastMessageId", &moved.message_id);
                    set.insert("sortKey", &moved.key);
                    vec![&moved.message_id, old]
                }
                None => vec![&moved.message_id],
            };
            doc! {
                "q": {"_id": id, "lastMessageId": {"$in": shown_as}, "lastStatusRank": {"$lt": moved.rank}},
                "u": {"$set": set},
            }
        }
        // Unset or older: two statements rather than one `$or`, which
        // the MongoDB-wire stand-in of the tests applies to whichever
        // document matches it, ignoring `_id` (on MongoDB both mean the
        // same; at most one of the two applies).
        Forward::Inbound(at) => {
            let at = to_bson_date(at);
            return vec![
                doc! {
                    "q": {"_id": id, LAST_INBOUND: {"$exists": false}},
                    "u": {"$set": {LAST_INBOUND: at}},
                },
                doc! {
                    "q": {"_id": id, LAST_INBOUND: {"$lt": at}},
                    "u": {"$set": {LAST_INBOUND: at}},
                },
            ];
        }
    };
    vec![one]
}

fn stats_statements(change: &StatsChange) -> Vec<Document> {
    let fields = |counts: &Counts| -> Document {
        counts
            .fields()
            .into_iter()
            .map(|(name, n)| (name, Bson::Int64(n)))
            .collect()
    };
    let id = Bson::String(stats_id(&change.shard));
    counter_statements(&id, &change.journal, fields, Default::default(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wa_core::domain::{Status, StatusUpdate};

    #[test]
    fn outbox_documents_hold_the_events_in_order_named_by_their_first() {
        let events: Vec<Event> = (0..600)
            .map(|n| {
                Event::StatusUpdate(StatusUpdate {
                    message_id: format!("wamid.{n}"),
                    status: Status::Read,
                    conversation_id: "conv_1".to_owned(),
                    phone_number_id: None,
                    business_number: None,
                    timestamp: chrono::DateTime::UNIX_EPOCH,
                    client_message_id: None,
                    previous_message_id: None,
                    errors: None,
                })
            })
            .collect();
        let documents = outbox_documents(&events).unwrap_or_default();
        let ids: Vec<&str> = documents
            .iter()
            .filter_map(|d| d.get_str("_id").ok())
            .collect();
        assert_eq!(
            ids,
            ["s:wamid.0:read", "s:wamid.256:read", "s:wamid.512:read"]
        );
        let back: Vec<Event> = documents
            .iter()
            .flat_map(|d| d.get_array("events").cloned().unwrap_or_default())
            .filter_map(|e| bson::from_bson(e).ok())
            .collect();
        assert_eq!(back, events);
        let order: Vec<i64> = documents
            .iter()
            .filter_map(|d| d.get_i64("n").ok())
            .collect();
        assert_eq!(order, [0, 1, 2]);
    }
}
