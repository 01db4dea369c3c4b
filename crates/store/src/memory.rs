//! The reference store: everything in memory, behind one lock, each
//! method written the plainest way (scans, no indexes). It is what the
//! other stores are compared with in property tests, and a store for
//! tests that need no database. Not for production: nothing is kept, and
//! reads cost what is stored.
//!
//! Like SQLite, it applies a change set whole or not at all (`Known::atomic`),
//! and checks the change set's guards at write time: a message inserted
//! meanwhile, a status rank that moved, a summary created or gone; what
//! only moves forward goes by `wa_core::plan::forward`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use wa_core::domain::{
    Conversation, Direction, Event, Message, Page, QueuedSend, SERVICE_WINDOW, Stats, Status,
    StatusChange, is_local_id,
};
use wa_core::numbers::{BusinessNumber, number_of, stats_owner};
use wa_core::plan::counts::Counts;
use wa_core::plan::forward::Forward;
use wa_core::plan::status::parked_key;
use wa_core::plan::summary::preview;
use wa_core::plan::{ChangeSet, ConversationChange, Known, Lookup, Stored, Summary};
use wa_core::search::{Query, searchable_text};

use crate::{
    KeyClaim, SearchPage, SearchScope, Store, StoreError, StoreResult, conversations_before,
};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default, Clone)]
struct State {
    /// By the message's permanent key (`id`).
    messages: BTreeMap<String, Message>,
    parked: BTreeMap<String, StatusChange>,
    summaries: BTreeMap<String, SummaryState>,
    /// By stats number (`wa_core::numbers::stats_number`).
    counts: BTreeMap<String, Counts>,
    home: Option<String>,
    /// Business numbers and their display numbers.
    numbers: BTreeMap<String, Option<String>>,
    rejected: BTreeSet<String>,
    /// Events not yet relayed, with when they were written.
    outbox: Vec<(DateTime<Utc>, Event)>,
    sends: BTreeMap<String, QueuedSend>,
    keys: HashMap<String, String>,
}

/// A summary: what the API shows, and what its guards compare.
#[derive(Clone)]
struct SummaryState {
    shown: Conversation,
    guards: Summary,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in a test elsewhere must not hide this store's state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn by_message_id(&self, message_id: &str) -> Option<&Message> {
        self.messages
            .values()
            .find(|m| m.message_id == message_id)
            .or_else(|| self.messages.get(message_id))
    }

    /// Applies a change set to a copy, so that a refused guard changes
    /// nothing.
    fn apply(&self, changes: &ChangeSet) -> StoreResult<State> {
        let mut next = self.clone();
        for r in &changes.rejected {
            next.rejected.insert(r.id.clone());
        }
        for m in &changes.inserts {
            if next.messages.contains_key(&m.id) {
                return Err(StoreError::conflict(format!(
                    "{} was stored meanwhile",
                    m.message_id
                )));
            }
            next.messages.insert(m.id.clone(), m.clone());
        }
        for u in &changes.updates {
            let stored = next.messages.get(&u.message.id);
            if stored.map(|s| s.status.stored_rank()) != Some(u.expected_rank) {
                return Err(StoreError::conflict(format!(
                    "{} changed meanwhile",
                    u.message.message_id
                )));
            }
            next.messages
                .insert(u.message.id.clone(), u.message.clone());
        }
        for change in &changes.park {
            next.parked
                .entry(parked_key(change))
                .or_insert_with(|| change.clone());
        }
        for key in &changes.unpark {
            next.parked.remove(key);
        }
        for change in &changes.conversations {
            next.apply_summary(change)?;
        }
        for change in &changes.stats {
            next.counts
                .entry(change.shard.number.clone())
                .or_default()
                .add(&change.counts);
        }
        let now = Utc::now();
        for event in &changes.events {
            if !next.outbox.iter().any(|(_, e)| e.id() == event.id()) {
                next.outbox.push((now, event.clone()));
            }
        }
        for send in &changes.enqueue {
            next.sends
                .entry(send.id.clone())
                .or_insert_with(|| send.clone());
        }
        for id in &changes.dequeue {
            next.sends.remove(id);
        }
        Ok(next)
    }

    fn apply_summary(&mut self, change: &ConversationChange) -> StoreResult<()> {
        let id = &change.conversation_id;
        let summary = match (self.summaries.get_mut(id), change.create) {
            (None, true) => {
                let mut summary = SummaryState::empty(id);
                summary
                    .shown
                    .phone_number_id
                    .clone_from(&change.phone_number_id);
                summary
                    .shown
                    .business_number
                    .clone_from(&change.business_number);
                self.summaries.entry(id.clone()).or_insert(summary)
            }
            (Some(summary), false) => summary,
            (Some(_), true) => {
                return Err(StoreError::conflict(format!(
                    "summary of {id} created meanwhile"
                )));
            }
            (None, false) => return Err(StoreError::conflict(format!("summary of {id} is gone"))),
        };
        summary.shown.message_count += change.counts.messages;
        summary.shown.unread_count += change.counts.unread;
        for write in change.forward() {
            if change.create || write.holds(&summary.guards) {
                summary.apply(write);
            }
        }
        Ok(())
    }
}

impl SummaryState {
    fn empty(id: &str) -> Self {
        Self {
            shown: Conversation {
                conversation_id: id.to_owned(),
                user_name: String::new(),
                last_message_id: String::new(),
                last_message_body: String::new(),
                last_timestamp: DateTime::UNIX_EPOCH,
                last_message_status: Status::Other(String::new()),
                last_message_direction: Direction::Inbound,
                message_count: 0,
                unread_count: 0,
                participants: Vec::new(),
                window_expires_at: None,
                phone_number_id: None,
                business_number: None,
            },
            guards: Summary::default(),
        }
    }

    fn apply(&mut self, write: Forward<'_>) {
        let (shown, guards) = (&mut self.shown, &mut self.guards);
        match write {
            Forward::Last(last) => {
                guards.last_key.clone_from(&last.key);
                guards.last_message_id.clone_from(&last.message_id);
                guards.last_status_rank = last.status_rank;
                shown.last_message_id.clone_from(&last.message_id);
                shown.last_message_body = preview(&last.body);
                shown.last_timestamp = last.timestamp;
                shown.last_message_status.clone_from(&last.status);
                shown.last_message_direction = last.direction;
                shown.participants.clone_from(&last.participants);
            }
            Forward::Name(name) => {
                guards.name_key.clone_from(&name.key);
                shown.user_name.clone_from(&name.name);
            }
            Forward::Status(moved) => {
                guards.last_status_rank = moved.rank;
                shown.last_message_status.clone_from(&moved.status);
                if moved.renamed_from.is_some() {
                    guards.last_message_id.clone_from(&moved.message_id);
                    guards.last_key.clone_from(&moved.key);
                    shown.last_message_id.clone_from(&moved.message_id);
                }
            }
            Forward::Inbound(at) => {
                guards.last_inbound = Some(at);
                shown.window_expires_at = Some(at + SERVICE_WINDOW);
            }
        }
    }
}

/// Whether something of `number` is within `numbers` (`None`: all).
fn in_numbers(numbers: Option<&[String]>, number: Option<&str>) -> bool {
    numbers.is_none_or(|numbers| number.is_some_and(|n| numbers.iter().any(|x| x == n)))
}

impl State {
    /// Whether the stats documents of stats number `key` count for these
    /// business numbers (the home number's are `""`).
    fn counted_in(&self, numbers: Option<&[String]>, key: &str) -> bool {
        numbers.is_none() || in_numbers(numbers, stats_owner(key, self.home.as_deref()))
    }
}

/// Newest first, as the API pages messages: by time, then WhatsApp's id.
fn newest_first(a: &Message, b: &Message) -> std::cmp::Ordering {
    (b.timestamp, &b.message_id).cmp(&(a.timestamp, &a.message_id))
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn prepare(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn load(&self, lookup: &Lookup) -> StoreResult<Known> {
        let state = self.state();
        let mut known = Known {
            atomic: true,
            ..Known::default()
        };
        let (messages, mut conversation_ids): (Vec<&Message>, Vec<String>) = match lookup {
            Lookup::Items {
                message_ids,
                conversation_ids,
            } => {
                known.parked = state
                    .parked
                    .values()
                    .filter(|p| message_ids.contains(&p.message_id))
                    .cloned()
                    .collect();
                let messages = state
                    .messages
                    .values()
                    .filter(|m| {
                        message_ids.contains(&m.message_id)
                            || is_local_id(&m.id) && message_ids.contains(&m.id)
                    })
                    .collect();
                (messages, conversation_ids.clone())
            }
            Lookup::Unread { conversation_id } => (
                state
                    .messages
                    .values()
                    .filter(|m| &m.conversation_id == conversation_id && m.is_unread())
                    .collect(),
                vec![conversation_id.clone()],
            ),
        };
        conversation_ids.extend(messages.iter().map(|m| m.conversation_id.clone()));
        for id in conversation_ids {
            if let Some(summary) = state.summaries.get(&id) {
                known.summaries.insert(id, summary.guards.clone());
            }
        }
        known.messages = messages
            .into_iter()
            .map(|m| {
                let stored = Stored {
                    message: m.clone(),
                    settled: Some(m.status.to_string()),
                };
                (m.message_id.clone(), stored)
            })
            .collect();
        Ok(known)
    }

    async fn apply(&self, changes: &ChangeSet) -> StoreResult<()> {
        let mut state = self.state();
        *state = state.apply(changes)?;
        Ok(())
    }

    async fn conversations(
        &self,
        page: Page,
        numbers: Option<&[String]>,
    ) -> StoreResult<Vec<Conversation>> {
        let before = conversations_before(&page).unwrap_or_else(|| "~".to_owned());
        let state = self.state();
        let mut list: Vec<&SummaryState> = state
            .summaries
            .values()
            .filter(|s| s.guards.last_key < before)
            .filter(|s| in_numbers(numbers, s.shown.phone_number_id.as_deref()))
            .collect();
        list.sort_by(|a, b| b.guards.last_key.cmp(&a.guards.last_key));
        let limit = usize::try_from(page.limit).unwrap_or(0);
        Ok(list
            .into_iter()
            .take(limit)
            .map(|s| s.shown.clone())
            .collect())
    }

    async fn messages(&self, conversation_id: &str, page: Page) -> StoreResult<Vec<Message>> {
        let state = self.state();
        // Pages meet at a millisecond and an id, as the stores keep times.
        let before = page.before.map_or(i64::MAX, |b| b.timestamp_millis());
        let before_id = page.before_id.clone().unwrap_or_default();
        let mut list: Vec<&Message> = state
            .messages
            .values()
            .filter(|m| m.conversation_id == conversation_id)
            .filter(|m| (m.timestamp.timestamp_millis(), &m.message_id) < (before, &before_id))
            .collect();
        list.sort_by(|a, b| newest_first(a, b));
        let limit = usize::try_from(page.limit).unwrap_or(0);
        let mut page: Vec<Message> = list
            .into_iter()
            .take(limit)
            .map(|m| m.clone().with_media_url())
            .collect();
        page.reverse();
        Ok(page)
    }

    async fn message(&self, message_id: &str) -> StoreResult<Option<Message>> {
        let state = self.state();
        Ok(state
            .by_message_id(message_id)
            .map(|m| m.clone().with_media_url()))
    }

    async fn media_conversation(&self, media_id: &str) -> StoreResult<Option<String>> {
        let state = self.state();
        Ok(state
            .messages
            .values()
            .filter(|m| m.media_id() == Some(media_id))
            // The first message naming it owns it: by time, then key.
            .min_by_key(|m| (m.timestamp, &m.id))
            .map(|m| m.conversation_id.clone()))
    }

    async fn conversation(&self, conversation_id: &str) -> StoreResult<Option<Conversation>> {
        Ok(self
            .state()
            .summaries
            .get(conversation_id)
            .map(|s| s.shown.clone()))
    }

    async fn stats(&self, numbers: Option<&[String]>) -> StoreResult<Stats> {
        let state = self.state();
        let mut counts = Counts::default();
        for (number, c) in &state.counts {
            if state.counted_in(numbers, number) {
                counts.add(c);
            }
        }
        let conversations = state
            .summaries
            .values()
            .filter(|s| in_numbers(numbers, s.shown.phone_number_id.as_deref()))
            .count();
        let mut stats = counts.to_stats(i64::try_from(conversations).unwrap_or(i64::MAX));
        stats.rejected_items = i64::try_from(state.rejected.len()).unwrap_or(i64::MAX);
        Ok(stats)
    }

    async fn home_number(&self, candidate: Option<&str>) -> StoreResult<Option<String>> {
        let mut state = self.state();
        if state.home.is_none() {
            state.home = candidate.map(str::to_owned);
        }
        Ok(state.home.clone())
    }

    async fn note_numbers(&self, numbers: &[(String, Option<String>)]) -> StoreResult<()> {
        let mut state = self.state();
        for (number, display) in numbers {
            let known = state.numbers.entry(number.clone()).or_default();
            if display.as_deref().is_some_and(|d| !d.is_empty()) {
                known.clone_from(display);
            }
        }
        Ok(())
    }

    async fn numbers(&self) -> StoreResult<Vec<BusinessNumber>> {
        let state = self.state();
        let mut numbers = state.numbers.clone();
        if let Some(home) = &state.home {
            numbers.entry(home.clone()).or_default();
        }
        Ok(numbers
            .into_iter()
            .map(|(number, display)| {
                let only = [number.clone()];
                let unread = state
                    .counts
                    .iter()
                    .filter(|(n, _)| state.counted_in(Some(&only), n))
                    .map(|(_, c)| c.unread)
                    .sum();
                let conversations = state
                    .summaries
                    .values()
                    .filter(|s| s.shown.phone_number_id.as_deref() == Some(&number))
                    .count();
                BusinessNumber {
                    phone_number_id: number,
                    business_number: display,
                    conversations: i64::try_from(conversations).unwrap_or(i64::MAX),
                    unread_count: unread,
                }
            })
            .collect())
    }

    async fn adopt_numbers(&self, default: Option<&str>) -> StoreResult<Option<String>> {
        let mut state = self.state();
        let untagged = state
            .summaries
            .values()
            .any(|s| s.shown.phone_number_id.is_none())
            || state.messages.values().any(|m| m.phone_number_id.is_none());
        if !untagged {
            return Ok(state.home.clone());
        }
        if state.home.is_none() {
            state.home = default.map(str::to_owned).or_else(|| {
                state
                    .messages
                    .values()
                    .find_map(|m| m.phone_number_id.clone())
            });
        }
        let home = state.home.clone();
        let display = home
            .as_ref()
            .and_then(|h| state.numbers.get(h).cloned().flatten());
        for summary in state.summaries.values_mut() {
            if summary.shown.phone_number_id.is_none() {
                let number = number_of(&summary.shown.conversation_id, home.as_deref());
                summary.shown.phone_number_id = number.map(str::to_owned);
                summary.shown.business_number.clone_from(&display);
            }
        }
        for message in state.messages.values_mut() {
            if message.phone_number_id.is_none() {
                message.phone_number_id =
                    number_of(&message.conversation_id, home.as_deref()).map(str::to_owned);
            }
        }
        for send in state.sends.values_mut() {
            if send.phone_number_id.is_none() {
                send.phone_number_id =
                    number_of(&send.conversation_id, home.as_deref()).map(str::to_owned);
            }
        }
        Ok(home)
    }

    async fn outbox(&self, age: Duration, limit: usize) -> StoreResult<Vec<Event>> {
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let before = Utc::now().checked_sub_signed(age);
        Ok(self
            .state()
            .outbox
            .iter()
            .filter(|(at, _)| before.is_some_and(|before| *at < before))
            .take(limit)
            .map(|(_, event)| event.clone())
            .collect())
    }

    async fn relayed(&self, ids: &[String]) -> StoreResult<()> {
        self.state()
            .outbox
            .retain(|(_, event)| !ids.contains(&event.id()));
        Ok(())
    }

    async fn due_sends(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<QueuedSend>> {
        let state = self.state();
        let mut due: Vec<&QueuedSend> = state.sends.values().filter(|s| s.due <= now).collect();
        due.sort_by_key(|s| s.due);
        Ok(due.into_iter().take(limit).cloned().collect())
    }

    async fn update_send(
        &self,
        send: &QueuedSend,
        expected_due: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        match state.sends.get_mut(&send.id) {
            Some(stored) if stored.due == expected_due => {
                *stored = send.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn hold_sends(
        &self,
        conversation_id: &str,
        first: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<()> {
        for send in self.state().sends.values_mut() {
            if send.conversation_id == conversation_id && send.id != first && send.due < until {
                send.due = until;
                send.held = true;
            }
        }
        Ok(())
    }

    async fn first_send(&self, conversation_id: &str) -> StoreResult<Option<QueuedSend>> {
        Ok(self
            .state()
            .sends
            .values()
            .filter(|s| s.conversation_id == conversation_id)
            .min_by_key(|s| (s.order(), s.id.clone()))
            .cloned())
    }

    async fn claim_key(&self, key: &str, fingerprint: &str) -> StoreResult<KeyClaim> {
        let mut state = self.state();
        Ok(match state.keys.get(key) {
            None => {
                state.keys.insert(key.to_owned(), fingerprint.to_owned());
                KeyClaim::New
            }
            Some(first) if first == fingerprint => KeyClaim::Same,
            Some(_) => KeyClaim::Other,
        })
    }

    async fn release_key(&self, key: &str, fingerprint: &str) -> StoreResult<()> {
        let mut state = self.state();
        if state.keys.get(key).is_some_and(|f| f == fingerprint) {
            state.keys.remove(key);
        }
        Ok(())
    }

    async fn search(
        &self,
        query: &Query,
        scope: &SearchScope,
        limit: usize,
    ) -> StoreResult<SearchPage> {
        // The cursor is the last hit's place: its time and WhatsApp id.
        let after = match scope.before.as_deref() {
            None => None,
            Some(cursor) => {
                let (millis, id) = cursor
                    .split_once('|')
                    .ok_or_else(|| StoreError::rejected("not a cursor of this search (next)"))?;
                let millis = millis
                    .parse::<i64>()
                    .map_err(|_| StoreError::rejected("not a cursor of this search (next)"))?;
                Some((millis, id.to_owned()))
            }
        };
        let state = self.state();
        let mut hits: Vec<&Message> = state
            .messages
            .values()
            .filter(|m| {
                scope
                    .conversation_id
                    .as_ref()
                    .is_none_or(|c| *c == m.conversation_id)
            })
            .filter(|m| in_numbers(scope.numbers.as_deref(), m.phone_number_id.as_deref()))
            .filter(|m| {
                after.as_ref().is_none_or(|(millis, id)| {
                    (m.timestamp.timestamp_millis(), &m.message_id) < (*millis, id)
                })
            })
            .filter(|m| query.matches(&searchable_text(m)))
            .collect();
        hits.sort_by(|a, b| newest_first(a, b));
        hits.truncate(limit);
        let next = (hits.len() == limit)
            .then(|| hits.last())
            .flatten()
            .map(|m| format!("{}|{}", m.timestamp.timestamp_millis(), m.message_id));
        Ok(SearchPage {
            messages: hits
                .into_iter()
                .map(|m| m.clone().with_media_url())
                .collect(),
            next,
        })
    }
}
