//! The processing rules, as pure functions over plain data.
//!
//! A batch of webhook items (or a conversation being read), together with
//! what the store already holds about them ([`Known`]), becomes one
//! [`ChangeSet`]: messages to insert, status changes, counter and summary
//! changes, and the events that announce them. Stores only read `Known` and
//! apply change sets. A change carries the guard it was planned under (a
//! status rank, a journal entry) and a store refuses one whose guard no
//! longer holds: the processor then reads and plans again. What only moves
//! forward (a summary's last message and name) is applied only if newer
//! ([`forward`]).
//! Races between replicas are the guards' job.
//!
//! ## Counted once, even without transactions
//! Where a change set cannot be applied in one transaction (MongoDB
//! without a replica set), a crash can stop it half-way. So a stored
//! message remembers the status its counters and events were settled for
//! (`settled`), and a counter document keeps a journal of the messages
//! whose contribution it took before they were settled. A retry finds the
//! message unsettled and finishes the job: a counter whose journal has the
//! message is not counted again; one that lacks it is. Then the message is
//! settled and the journal entries are dropped.

pub mod counts;
pub mod forward;
pub mod status;
pub mod summary;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::{
    Direction, Event, Message, PENDING, QueuedSend, RawPayload, Status, StatusChange, StatusUpdate,
};
use counts::{Counts, journal_key, stats_shard};
use forward::Forward;
use summary::{Last, Name};

pub use counts::{STATS_SHARDS, StatsKey};
pub use status::PARKED_STATUS_TTL;

/// What a batch of payloads carries.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub payloads: Vec<RawPayload>,
    pub messages: Vec<Message>,
    pub statuses: Vec<StatusChange>,
    pub rejected: Vec<RejectedItem>,
}

/// A malformed webhook item, kept with the reason it was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedItem {
    /// The payload's id and the item's path in it: the same item refused
    /// again (a redelivery) is kept once.
    pub id: String,
    pub payload_id: String,
    pub path: String,
    pub reason: String,
    pub item: serde_json::Value,
}

impl Batch {
    /// What a store must read before this batch can be planned.
    pub fn lookup(&self) -> Lookup {
        let message_ids: BTreeSet<&str> = self
            .messages
            .iter()
            .map(|m| m.message_id.as_str())
            .chain(self.statuses.iter().map(|s| s.message_id.as_str()))
            .chain(self.statuses.iter().filter_map(|s| s.callback.as_deref()))
            .collect();
        let conversation_ids: BTreeSet<&str> = self
            .messages
            .iter()
            .map(|m| m.conversation_id.as_str())
            .chain(self.statuses.iter().map(|s| s.conversation_id.as_str()))
            .collect();
        Lookup::Items {
            message_ids: message_ids.into_iter().map(str::to_owned).collect(),
            conversation_ids: conversation_ids.into_iter().map(str::to_owned).collect(),
        }
    }
}

/// What a store reads into [`Known`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// These messages (those stored), the statuses parked for them, and the
    /// summaries of these conversations and of the stored messages'.
    Items {
        message_ids: Vec<String>,
        conversation_ids: Vec<String>,
    },
    /// A conversation's inbound messages counted as unread (not read, or
    /// read by a change set not settled yet), and its summary.
    Unread { conversation_id: String },
}

/// What the store holds about a batch, as read just before planning. Also
/// the stats journals (every shard that has entries).
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub messages: HashMap<String, Stored>,
    pub parked: Vec<StatusChange>,
    pub summaries: HashMap<String, Summary>,
    pub stats_journals: BTreeMap<StatsKey, Journal>,
    /// The store applies a change set at once (one transaction): its
    /// stats go to one of the stats documents, picked per change set so
    /// that concurrent transactions rarely write the same one. Otherwise
    /// each message is counted in a document picked by its id, so that
    /// two writers counting the same message meet on its journal.
    pub atomic: bool,
}

/// A stored message and the status its counters and events were settled
/// for (`None`: not yet: it was stored by a change set that did not finish).
#[derive(Debug, Clone)]
pub struct Stored {
    pub message: Message,
    pub settled: Option<String>,
}

/// What a plan needs of a stored conversation summary: where its last
/// message and name stand, and its journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub last_key: String,
    pub last_message_id: String,
    pub last_status_rank: i32,
    /// Key of the message the name came from (`""`: none, the number shows).
    pub name_key: String,
    /// Time of the customer's newest message.
    pub last_inbound: Option<DateTime<Utc>>,
    pub journal: Journal,
}

/// A counter document's journal: journal key of a message → the status
/// under which the document counts it, until the message is settled.
pub type Journal = BTreeMap<String, String>;

/// Everything one batch changes, with the guards it was planned under.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Raw bodies to keep (a body kept before is skipped).
    pub payloads: Vec<RawPayload>,
    /// Malformed items to keep (one kept before is skipped).
    pub rejected: Vec<RejectedItem>,
    /// New messages, in their final state; refused if already stored.
    pub inserts: Vec<Message>,
    /// Stored messages whose status, status times or errors change.
    pub updates: Vec<Update>,
    /// Statuses to keep until their message arrives.
    pub park: Vec<StatusChange>,
    /// Parked statuses (by key) whose message is now stored.
    pub unpark: Vec<String>,
    pub conversations: Vec<ConversationChange>,
    pub stats: Vec<StatsChange>,
    /// Messages now counted and announced at this status.
    pub settle: Vec<(String, String)>,
    /// Journal entries to drop once the messages are settled.
    pub cleanup: Vec<Cleanup>,
    pub events: Vec<Event>,
    /// Messages to send through WhatsApp, queued with the message (kept
    /// if already queued).
    pub enqueue: Vec<QueuedSend>,
    /// Queued sends (by message key) that are done: WhatsApp accepted or
    /// refused them.
    pub dequeue: Vec<String>,
}

/// A stored message's new state, guarded by the status rank it had.
#[derive(Debug, Clone)]
pub struct Update {
    pub message: Message,
    pub expected_rank: i32,
    /// The `message_id` it had, when WhatsApp's acceptance renames it.
    pub renamed_from: Option<String>,
    /// Statuses whose time this update adds.
    pub new_times: Vec<String>,
    pub errors_changed: bool,
}

/// A conversation summary's change. Its last message, the last message's
/// status and its name only ever move forward: each is applied only if it
/// is newer than what is stored then, so concurrent writers need no
/// coordination (an older one simply changes nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationChange {
    pub conversation_id: String,
    /// No summary was stored: this creates it, with a last message and a
    /// name (refused as a conflict if one appeared meanwhile).
    pub create: bool,
    /// Added to the stored counters.
    pub counts: Counts,
    pub journal: Vec<Entry>,
    /// A last message, if newer than the stored one.
    pub last: Option<Last>,
    /// A new status of a message, if it is the summary's last and the
    /// status is further on.
    pub last_status: Option<LastStatus>,
    /// A name, if from a newer message than the stored name.
    pub name: Option<Name>,
    /// The time of the customer's newest message, if newer than stored
    /// (it opens WhatsApp's 24-hour customer service window).
    pub last_inbound: Option<DateTime<Utc>>,
    /// With `create`: the conversation's business number and its display
    /// number, from its messages (a summary's number never changes).
    pub phone_number_id: Option<String>,
    pub business_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastStatus {
    pub message_id: String,
    pub status: Status,
    pub rank: i32,
    /// The id the summary may still show for it, when it was renamed
    /// (`local...` → `wamid...`); the summary then shows the new id and
    /// its key.
    pub renamed_from: Option<String>,
    pub key: String,
}

/// Counts added to one stats document.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsChange {
    pub shard: StatsKey,
    pub counts: Counts,
    pub journal: Vec<Entry>,
}

/// A journal entry written with a counter change, guarded by the entry it
/// replaces (`None`: the document does not count this message yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub expected: Option<String>,
    pub status: String,
    /// The counter change it comes with (part of the document's `counts`).
    pub counts: Counts,
}

/// Which counter document a journal entry is in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    Conversation(String),
    Stats(StatsKey),
}

/// A journal entry to drop (only if it still says `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub counter: Counter,
    pub key: String,
    pub status: String,
}

impl ChangeSet {
    /// True when applying it would change nothing but keep payloads.
    pub fn changes_nothing(&self) -> bool {
        self.rejected.is_empty()
            && self.inserts.is_empty()
            && self.updates.is_empty()
            && self.park.is_empty()
            && self.unpark.is_empty()
            && self.conversations.is_empty()
            && self.stats.is_empty()
            && self.settle.is_empty()
            && self.cleanup.is_empty()
            && self.enqueue.is_empty()
            && self.dequeue.is_empty()
    }
}

/// Plans a batch: inserts its new messages (with the statuses that waited
/// for them), applies its statuses, parks those whose message is unknown,
/// and settles every message it touched.
pub fn plan_batch(batch: &Batch, known: &Known) -> ChangeSet {
    let mut planner = Planner::new(known);
    for message in &batch.messages {
        planner.add_new(message);
    }
    let mut statuses: Vec<(&StatusChange, bool)> = batch
        .statuses
        .iter()
        .map(|s| (s, false))
        .chain(known.parked.iter().map(|s| (s, true)))
        .collect();
    statuses
        .sort_by(|(a, _), (b, _)| status::application_order(a).cmp(&status::application_order(b)));
    for (change, was_parked) in statuses {
        let change = planner.adopt(change);
        planner.apply_status(&change, was_parked);
    }
    let seed = batch.payloads.first().map_or("", |p| p.id.as_str());
    let mut changes = planner.finish(batch.payloads.clone(), seed);
    changes.rejected.clone_from(&batch.rejected);
    changes
}

/// Plans the business reading a conversation: its unread inbound messages
/// become `read` at `at`.
pub fn plan_mark_read(conversation_id: &str, at: DateTime<Utc>, known: &Known) -> ChangeSet {
    let mut planner = Planner::new(known);
    for working in planner.work.values_mut() {
        if working.message.conversation_id == conversation_id
            && status::mark_read(&mut working.message, at)
        {
            working.new_times.insert("read".to_owned());
        }
    }
    planner.finish(Vec::new(), conversation_id)
}

/// Plans a message the business sends: stored (as `pending`) and queued
/// for WhatsApp in one change set. Sent again (a client's retry), it
/// changes nothing, unless the first attempt stopped half-way.
pub fn plan_send(send: &QueuedSend, message: &Message, known: &Known) -> ChangeSet {
    let batch = Batch {
        messages: vec![message.clone()],
        ..Batch::default()
    };
    let mut changes = plan_batch(&batch, known);
    let unfinished = known
        .messages
        .get(&message.message_id)
        .is_none_or(|stored| stored.settled.is_none());
    if unfinished {
        changes.enqueue.push(send.clone());
    }
    changes
}

/// What WhatsApp answered to a queued send.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Accepted: the message takes WhatsApp's id and is `sent`.
    Accepted { wamid: String, at: DateTime<Utc> },
    /// Refused for good: the message is `failed`, with WhatsApp's errors.
    Refused {
        errors: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// Not sent, and its message left as it is: the message is gone (its
    /// store stopped before storing it) or no longer waits to be sent.
    Dropped,
}

impl SendOutcome {
    /// What the store must read to plan it for the message `local_id`.
    pub fn lookup(&self, local_id: &str, conversation_id: &str) -> Lookup {
        let mut message_ids = vec![local_id.to_owned()];
        if let SendOutcome::Accepted { wamid, .. } = self {
            message_ids.push(wamid.clone());
        }
        Lookup::Items {
            message_ids,
            conversation_ids: vec![conversation_id.to_owned()],
        }
    }
}

/// Plans WhatsApp's answer to the send of message `local_id`: accepted,
/// it is renamed to WhatsApp's id and becomes `sent`, and the statuses
/// that arrived for that id before the answer was stored apply; refused,
/// it becomes `failed`. Either way the send leaves the queue. Planned
/// again after a crash, it finishes what is left.
pub fn plan_send_outcome(local_id: &str, outcome: &SendOutcome, known: &Known) -> ChangeSet {
    let mut planner = Planner::new(known);
    match outcome {
        SendOutcome::Accepted { wamid, at } => {
            if let Some(mut working) = planner.work.remove(local_id) {
                working.message.message_id.clone_from(wamid);
                working.renamed_from = Some(local_id.to_owned());
                planner.work.insert(wamid.clone(), working);
            } else if let Some(working) = planner.work.get_mut(wamid)
                && working.message.id == local_id
            {
                // Renamed by a change set that stopped before the summary
                // caught up: the summary may still show the local id.
                working.renamed_from = Some(local_id.to_owned());
            }
            let sent = StatusChange {
                message_id: wamid.clone(),
                status: Status::Sent,
                timestamp: *at,
                conversation_id: String::new(),
                phone_number_id: None,
                errors: None,
                callback: None,
            };
            if planner.work.contains_key(wamid) {
                planner.apply_status(&sent, false);
            }
            let mut parked: Vec<&StatusChange> = known.parked.iter().collect();
            parked.sort_by(|a, b| status::application_order(a).cmp(&status::application_order(b)));
            for change in parked {
                planner.apply_status(change, true);
            }
        }
        SendOutcome::Dropped => {}
        SendOutcome::Refused { errors, at } => {
            let failed = StatusChange {
                message_id: local_id.to_owned(),
                status: Status::Failed,
                timestamp: *at,
                conversation_id: String::new(),
                phone_number_id: None,
                errors: Some(errors.clone()),
                callback: None,
            };
            if planner.work.contains_key(local_id) {
                planner.apply_status(&failed, false);
            }
        }
    }
    let mut changes = planner.finish(Vec::new(), local_id);
    changes.dequeue.push(local_id.to_owned());
    changes
}

/// A message as the plan goes: stored or new, and what changed.
struct Working<'k> {
    message: Message,
    stored: Option<&'k Stored>,
    /// The id it had when it was stored, if the plan renamed it.
    renamed_from: Option<String>,
    /// Statuses whose time the plan added (errors change only with them).
    new_times: BTreeSet<String>,
}

impl Working<'_> {
    /// The status its counters and events were settled for.
    fn settled(&self) -> Option<&str> {
        self.stored.and_then(|s| s.settled.as_deref())
    }
}

/// One conversation's share of the plan.
#[derive(Default)]
struct ConversationPlan<'w> {
    counts: Counts,
    journal: Vec<Entry>,
    /// Messages new to the summary (never settled).
    candidates: Vec<&'w Message>,
    /// Every message whose counters change.
    members: Vec<&'w Message>,
    /// Stored messages whose status moved since settled: the newest may
    /// be the summary's last (with the id the summary knows it by).
    moved: Vec<(&'w Message, &'w str)>,
}

impl<'w> ConversationPlan<'w> {
    /// Takes a message whose counters change: a candidate for the summary
    /// if it was never settled; a moved status if it was stored.
    fn take(&mut self, working: &'w Working<'_>) {
        let message = &working.message;
        if working.stored.is_none() || working.settled().is_none() {
            self.candidates.push(message);
        }
        if working.stored.is_some() {
            // Its status moved since it was settled (maybe by a change set
            // that stopped before the summary caught up), under the id the
            // summary knows it by.
            let known_as = working.renamed_from.as_deref();
            self.moved
                .push((message, known_as.unwrap_or(&message.message_id)));
        }
        self.members.push(message);
    }
}

struct Planner<'k> {
    known: &'k Known,
    /// By message id, so plans (and their writes) come out in one order.
    work: BTreeMap<String, Working<'k>>,
    changes: ChangeSet,
    parked_keys: BTreeSet<String>,
}

impl<'k> Planner<'k> {
    fn new(known: &'k Known) -> Self {
        let work = known
            .messages
            .iter()
            .map(|(id, stored)| {
                let working = Working {
                    message: stored.message.clone(),
                    stored: Some(stored),
                    renamed_from: None,
                    new_times: BTreeSet::new(),
                };
                (id.clone(), working)
            })
            .collect();
        Self {
            known,
            work,
            changes: ChangeSet::default(),
            parked_keys: BTreeSet::new(),
        }
    }

    /// A message from the batch; a stored one (redelivery) changes nothing.
    fn add_new(&mut self, message: &Message) {
        self.work
            .entry(message.message_id.clone())
            .or_insert_with(|| Working {
                message: message.clone(),
                stored: None,
                renamed_from: None,
                new_times: BTreeSet::new(),
            });
    }

    /// A status for a WhatsApp id we do not know that names one of our
    /// messages by its `biz_opaque_callback_data` (its local id):
    /// - still waiting to be sent: WhatsApp accepted it under that id, but
    ///   its sender was stopped before storing the answer. The message
    ///   takes the id, as if the answer had been stored, so its send
    ///   finishes without going out again;
    /// - known by another WhatsApp id: it went out twice (a sender killed
    ///   in between, or an answer lost). The status applies to it all the
    ///   same (forward only), instead of waiting for a message that never
    ///   comes.
    ///
    /// Returns the status to apply.
    fn adopt<'c>(&mut self, change: &'c StatusChange) -> std::borrow::Cow<'c, StatusChange> {
        let unchanged = std::borrow::Cow::Borrowed(change);
        let Some(local) = change.callback.as_deref() else {
            return unchanged;
        };
        if self.work.contains_key(&change.message_id) {
            return unchanged;
        }
        // Ours, sent to the customer the status is about (a callback naming
        // another conversation's message is not taken at its word).
        let Some(current) = self
            .work
            .values()
            .find(|w| {
                w.message.id == local
                    && w.message.direction == Direction::Outbound
                    && w.message.conversation_id == change.conversation_id
            })
            .map(|w| w.message.message_id.clone())
        else {
            return unchanged;
        };
        if current != local {
            if change.status == "failed" {
                // The other copy failed; the one the message is known by
                // may have arrived: kept parked, not applied.
                return unchanged;
            }
            let mut retargeted = change.clone();
            retargeted.message_id = current;
            return std::borrow::Cow::Owned(retargeted);
        }
        let waiting = self
            .work
            .get(local)
            .is_some_and(|w| w.message.status == PENDING);
        if waiting && let Some(mut working) = self.work.remove(local) {
            working.message.message_id.clone_from(&change.message_id);
            working.renamed_from = Some(local.to_owned());
            self.work.insert(change.message_id.clone(), working);
        }
        unchanged
    }

    fn apply_status(&mut self, change: &StatusChange, was_parked: bool) {
        let key = status::parked_key(change);
        let Some(working) = self.work.get_mut(&change.message_id) else {
            // Its message is not stored yet: keep it (once) until it is.
            if !was_parked && self.parked_keys.insert(key) {
                self.changes.park.push(change.clone());
            }
            return;
        };
        match status::apply(&mut working.message, change) {
            status::Outcome::Moved | status::Outcome::Noted => {
                working.new_times.insert(change.status.to_string());
            }
            status::Outcome::Unchanged => {}
        }
        if was_parked && self.parked_keys.insert(key.clone()) {
            self.changes.unpark.push(key);
        }
    }

    /// `seed` picks the stats document of an atomic change set.
    fn finish(mut self, payloads: Vec<RawPayload>, seed: &str) -> ChangeSet {
        self.changes.payloads = payloads;
        let work = std::mem::take(&mut self.work);
        let mut conversations: BTreeMap<&str, ConversationPlan<'_>> = BTreeMap::new();
        let mut stats: BTreeMap<StatsKey, (Counts, Vec<Entry>)> = BTreeMap::new();
        for working in work.values() {
            self.write(working);
            let message = &working.message;
            let conversation = conversations
                .entry(message.conversation_id.as_str())
                .or_default();
            let key = journal_key(&message.id);
            if working.stored.is_some() && working.settled() == Some(message.status.as_str()) {
                // Settled already; drop what a crash may have left in journals.
                let summary = self.known.summaries.get(&message.conversation_id);
                self.cleanup_leftovers(message, &key, summary);
                continue;
            }
            self.changes.events.extend(announce(
                message,
                working.stored.and(working.settled()),
                working.renamed_from.as_deref(),
            ));
            conversation.take(working);
            self.count_in_conversation(working, &key, conversation);
            self.count_in_stats(working, &key, seed, &mut stats);
            self.changes
                .settle
                .push((message.id.clone(), message.status.to_string()));
        }
        for (id, plan) in conversations {
            if let Some(change) = summarise(id, plan, self.known.summaries.get(id)) {
                self.changes.conversations.push(change);
            }
        }
        self.changes.stats = stats
            .into_iter()
            .filter(|(_, (counts, journal))| !counts.is_zero() || !journal.is_empty())
            .map(|(shard, (counts, journal))| StatsChange {
                shard,
                counts,
                journal,
            })
            .collect();
        self.changes
    }

    /// The message's own write: inserted if new, updated if it changed.
    fn write(&mut self, working: &Working<'_>) {
        let message = &working.message;
        match working.stored {
            None => self.changes.inserts.push(message.clone()),
            Some(stored) if !working.new_times.is_empty() || working.renamed_from.is_some() => {
                self.changes.updates.push(Update {
                    message: message.clone(),
                    expected_rank: stored.message.status.stored_rank(),
                    renamed_from: working.renamed_from.clone(),
                    new_times: working.new_times.iter().cloned().collect(),
                    errors_changed: message.errors != stored.message.errors,
                });
            }
            Some(_) => {}
        }
    }

    /// The conversation's counters: from where it was counted (a journal
    /// entry a crash left, or its settled status) to its status now.
    fn count_in_conversation<'w>(
        &mut self,
        working: &'w Working<'_>,
        key: &str,
        conversation: &mut ConversationPlan<'w>,
    ) {
        let message = &working.message;
        let summary = self.known.summaries.get(&message.conversation_id);
        let entry = summary.and_then(|s| s.journal.get(key));
        let from = entry.map(String::as_str).or(working.settled());
        let change = Counts::change(message.direction, from, &message.status).for_conversation();
        self.count(
            Counter::Conversation(message.conversation_id.clone()),
            key,
            entry,
            change,
            &message.status,
            |entry| {
                conversation.counts.add(&entry.counts);
                conversation.journal.push(entry);
            },
        );
    }

    /// The deployment's counters: wherever a crash left this message, or a
    /// shard of its own.
    fn count_in_stats(
        &mut self,
        working: &Working<'_>,
        key: &str,
        seed: &str,
        stats: &mut BTreeMap<StatsKey, (Counts, Vec<Entry>)>,
    ) {
        let message = &working.message;
        let known = self.known;
        let fresh = StatsKey {
            number: crate::numbers::stats_number(&message.conversation_id).to_owned(),
            shard: stats_shard(if known.atomic { seed } else { &message.id }),
        };
        let (shard, entry) = known
            .stats_journals
            .iter()
            .find_map(|(shard, journal)| journal.get(key).map(|e| (shard.clone(), Some(e))))
            .unwrap_or((fresh, None));
        let from = entry.map(String::as_str).or(working.settled());
        let change = Counts::change(message.direction, from, &message.status);
        let (counts, journal) = stats.entry(shard.clone()).or_default();
        self.count(
            Counter::Stats(shard),
            key,
            entry,
            change,
            &message.status,
            |entry| {
                counts.add(&entry.counts);
                journal.push(entry);
            },
        );
    }

    /// Adds a message's counter change to one document, with the journal
    /// entry that makes it count once, and the entry's later cleanup.
    fn count(
        &mut self,
        counter: Counter,
        key: &str,
        entry: Option<&String>,
        change: Counts,
        target: &str,
        add: impl FnOnce(Entry),
    ) {
        if entry.is_some_and(|e| e == target) {
            // Counted as `target` here already, by a change set that crashed.
            self.cleanup(counter, key, target);
            return;
        }
        if change.is_zero() && entry.is_none() {
            return;
        }
        add(Entry {
            key: key.to_owned(),
            expected: entry.cloned(),
            status: target.to_owned(),
            counts: change,
        });
        self.cleanup(counter, key, target);
    }

    fn cleanup(&mut self, counter: Counter, key: &str, status: &str) {
        self.changes.cleanup.push(Cleanup {
            counter,
            key: key.to_owned(),
            status: status.to_owned(),
        });
    }

    /// Journal entries left by a change set that settled the message but
    /// crashed before dropping them.
    fn cleanup_leftovers(&mut self, message: &Message, key: &str, summary: Option<&Summary>) {
        if let Some(status) = summary.and_then(|s| s.journal.get(key)) {
            self.cleanup(
                Counter::Conversation(message.conversation_id.clone()),
                key,
                &status.clone(),
            );
        }
        let leftovers: Vec<(StatsKey, String)> = self
            .known
            .stats_journals
            .iter()
            .filter_map(|(shard, journal)| journal.get(key).map(|s| (shard.clone(), s.clone())))
            .collect();
        for (shard, status) in leftovers {
            self.cleanup(Counter::Stats(shard), key, &status);
        }
    }
}

/// The events a message's change announces, to clients that knew it at
/// `since` (`None`: not at all).
/// `renamed_from`: the id clients knew the message by until now.
fn announce(message: &Message, since: Option<&str>, renamed_from: Option<&str>) -> Vec<Event> {
    let mut events = Vec::new();
    if since.is_none() {
        events.push(Event::NewMessage(Box::new(message.clone())));
    }
    events.extend(
        status::reached_since(message, since)
            .into_iter()
            .map(|(status, at)| {
                Event::StatusUpdate(StatusUpdate {
                    message_id: message.message_id.clone(),
                    status: status.into(),
                    conversation_id: message.conversation_id.clone(),
                    phone_number_id: message.phone_number_id.clone(),
                    business_number: message.business_number.clone(),
                    timestamp: at,
                    client_message_id: message.client_message_id.clone(),
                    previous_message_id: renamed_from.map(str::to_owned),
                    errors: (status == "failed")
                        .then(|| message.errors.clone())
                        .flatten(),
                })
            }),
    );
    events
}

/// A conversation's summary change: counters, and a newer last message,
/// last status or name. `None` when nothing changes.
fn summarise(
    id: &str,
    plan: ConversationPlan<'_>,
    stored: Option<&Summary>,
) -> Option<ConversationChange> {
    let newest = |messages: &[&'_ Message]| -> Option<Last> {
        messages
            .iter()
            .max_by_key(|m| summary::sort_key(m.timestamp, &m.message_id))
            .map(|m| Last::of(m))
    };
    let named = plan
        .candidates
        .iter()
        .filter_map(|m| Name::of(m))
        .max_by(|a, b| a.key.cmp(&b.key));
    let (last, name) = match stored {
        Some(s) => (
            newest(&plan.candidates).filter(|last| Forward::Last(last).holds(s)),
            named.filter(|n| Forward::Name(n).holds(s)),
        ),
        None => {
            // A new summary shows its newest message, whatever brought it
            // here, and a name.
            let last = newest(&plan.candidates).or_else(|| newest(&plan.members))?;
            let name = named.unwrap_or_else(|| Name {
                name: Name::fallback(&last.wa_id),
                key: String::new(),
            });
            (Some(last), Some(name))
        }
    };
    // Whether it is the last message is for the store to see (another
    // writer may just have made it so); only the newest can be.
    // A renamed message is compared under the id the summary knows.
    let last_status = plan
        .moved
        .iter()
        .map(|(m, known_as)| (summary::sort_key(m.timestamp, known_as), *m, *known_as))
        .max_by(|a, b| a.0.cmp(&b.0))
        .filter(|(key, m, _)| {
            let rank = m.status.stored_rank();
            last.is_none()
                && stored.is_none_or(|s| {
                    *key > s.last_key || *key == s.last_key && rank > s.last_status_rank
                })
        })
        .map(|(_, m, known_as)| LastStatus {
            message_id: m.message_id.clone(),
            status: m.status.clone(),
            rank: m.status.stored_rank(),
            renamed_from: (known_as != m.message_id).then(|| known_as.to_owned()),
            key: summary::sort_key(m.timestamp, &m.message_id),
        });
    // A new last message's status also goes as a raise of the status: a
    // writer that set the same last message with an older status (another
    // replica storing it while this one applied its status) is caught up.
    let last_status = last_status.or_else(|| {
        last.as_ref()
            .filter(|l| l.status_rank > 0)
            .map(|l| LastStatus {
                message_id: l.message_id.clone(),
                status: l.status.clone(),
                rank: l.status_rank,
                renamed_from: None,
                key: l.key.clone(),
            })
    });
    let last_inbound = plan
        .candidates
        .iter()
        .filter(|m| m.direction == Direction::Inbound)
        .map(|m| m.timestamp)
        .max()
        .filter(|at| stored.is_none_or(|s| Forward::Inbound(*at).holds(s)));
    let unchanged = stored.is_some()
        && plan.counts.is_zero()
        && plan.journal.is_empty()
        && last.is_none()
        && last_status.is_none()
        && name.is_none()
        && last_inbound.is_none();
    let numbered = || {
        plan.candidates
            .iter()
            .chain(&plan.members)
            .find(|m| m.phone_number_id.is_some())
    };
    let (phone_number_id, business_number) = match stored.is_none().then(numbered).flatten() {
        Some(m) => (m.phone_number_id.clone(), m.business_number.clone()),
        None => (None, None),
    };
    (!unchanged).then(|| ConversationChange {
        conversation_id: id.to_owned(),
        create: stored.is_none(),
        phone_number_id,
        business_number,
        counts: plan.counts,
        journal: plan.journal,
        last,
        last_status,
        name,
        last_inbound,
    })
}

#[cfg(test)]
mod tests;
