//! Counters kept instead of counted: per conversation (`messageCount`,
//! `unreadCount`) and per deployment (`/api/stats`). Every message
//! contributes according to its direction and status, so a status change
//! moves its contribution from one status to the other.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::domain::{Direction, KNOWN_STATUSES, Stats, is_unread};

/// The deployment's counters are spread over this many documents, so that
/// concurrent batches rarely write the same one.
pub const STATS_SHARDS: u32 = 16;

/// Which stats document: one of [`STATS_SHARDS`] of a business number's
/// (`number` `""`: the home number's, the documents that existed before
/// numbers did; see [`crate::numbers::stats_number`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatsKey {
    pub number: String,
    pub shard: u32,
}

impl StatsKey {
    /// A shard of the home number's documents.
    pub fn home(shard: u32) -> Self {
        Self {
            number: String::new(),
            shard,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub messages: i64,
    /// Inbound messages the business has not read.
    pub unread: i64,
    pub inbound: i64,
    pub outbound: i64,
    /// Messages per current status.
    pub by_status: BTreeMap<String, i64>,
}

impl Counts {
    /// What one message in `status` contributes.
    pub fn of(direction: Direction, status: &str) -> Self {
        let inbound = direction == Direction::Inbound;
        Self {
            messages: 1,
            unread: i64::from(is_unread(direction, status)),
            inbound: i64::from(inbound),
            outbound: i64::from(!inbound),
            by_status: BTreeMap::from([(status.to_owned(), 1)]),
        }
    }

    /// What changes when a message counted as `from` (`None`: not counted
    /// yet) is counted as `to` instead.
    pub fn change(direction: Direction, from: Option<&str>, to: &str) -> Self {
        let mut change = Self::of(direction, to);
        if let Some(from) = from {
            change.subtract(&Self::of(direction, from));
        }
        change
    }

    pub fn add(&mut self, other: &Counts) {
        self.combine(other, 1);
    }

    fn subtract(&mut self, other: &Counts) {
        self.combine(other, -1);
    }

    fn combine(&mut self, other: &Counts, sign: i64) {
        self.messages += sign * other.messages;
        self.unread += sign * other.unread;
        self.inbound += sign * other.inbound;
        self.outbound += sign * other.outbound;
        for (status, n) in &other.by_status {
            *self.by_status.entry(status.clone()).or_default() += sign * n;
        }
        self.by_status.retain(|_, n| *n != 0);
    }

    /// Only what a conversation's summary keeps.
    pub fn for_conversation(&self) -> Self {
        Self {
            messages: self.messages,
            unread: self.unread,
            ..Self::default()
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The counters as named fields, as stores keep them (`status.<name>`
    /// per status; status names are safe field names), zeros left out.
    pub fn fields(&self) -> Vec<(String, i64)> {
        [
            ("messages", self.messages),
            ("unread", self.unread),
            ("inbound", self.inbound),
            ("outbound", self.outbound),
        ]
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n))
        .chain(
            self.by_status
                .iter()
                .map(|(status, n)| (format!("{STATUS_FIELD}{status}"), *n)),
        )
        .filter(|(_, n)| *n != 0)
        .collect()
    }

    /// Adds a field named as [`Counts::fields`] names them.
    pub fn add_field(&mut self, name: &str, n: i64) {
        match name {
            "messages" => self.messages += n,
            "unread" => self.unread += n,
            "inbound" => self.inbound += n,
            "outbound" => self.outbound += n,
            _ => {
                if let Some(status) = name.strip_prefix(STATUS_FIELD) {
                    *self.by_status.entry(status.to_owned()).or_default() += n;
                }
            }
        }
    }

    /// The deployment's totals as the API shows them.
    pub fn to_stats(&self, conversations: i64) -> Stats {
        let mut breakdown: BTreeMap<String, i64> = KNOWN_STATUSES
            .iter()
            .map(|s| ((*s).to_owned(), 0))
            .collect();
        for (status, n) in &self.by_status {
            *breakdown.entry(status.clone()).or_default() += n;
        }
        Stats {
            phone_number_id: None,
            total_messages: self.messages,
            total_conversations: conversations,
            inbound: self.inbound,
            outbound: self.outbound,
            status_breakdown: breakdown,
            rejected_items: 0,
        }
    }
}

/// Prefix of the per-status counter fields.
const STATUS_FIELD: &str = "status.";

/// The name under which a message is noted in a counter document's
/// journal: short, and safe as a document field name whatever the id holds.
pub fn journal_key(message_id: &str) -> String {
    hex::encode(&Sha256::digest(message_id.as_bytes())[..8])
}

/// The stats document a batch adds its counts to, picked from `seed`.
pub fn stats_shard(seed: &str) -> u32 {
    let digest = Sha256::digest(seed.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % STATS_SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_inbound_message_is_unread_until_read() {
        let new = Counts::change(Direction::Inbound, None, "received");
        assert_eq!((new.messages, new.unread, new.inbound), (1, 1, 1));
        let read = Counts::change(Direction::Inbound, Some("received"), "read");
        assert_eq!((read.messages, read.unread, read.inbound), (0, -1, 0));
        assert_eq!(
            read.by_status,
            BTreeMap::from([("read".to_owned(), 1), ("received".to_owned(), -1)])
        );
    }

    #[test]
    fn an_outbound_status_change_moves_only_the_status_count() {
        let change = Counts::change(Direction::Outbound, Some("sent"), "delivered");
        assert!(change.for_conversation().is_zero());
        assert_eq!(change.by_status.len(), 2);
        assert!(Counts::change(Direction::Outbound, Some("read"), "read").is_zero());
    }

    #[test]
    fn counters_round_trip_through_their_field_names() {
        let mut counts = Counts::change(Direction::Inbound, None, "received");
        counts.add(&Counts::change(Direction::Outbound, None, "read"));
        let mut back = Counts::default();
        for (name, n) in counts.fields() {
            back.add_field(&name, n);
        }
        assert_eq!(back, counts);
        let stats = counts.to_stats(1);
        assert_eq!(
            (stats.total_messages, stats.inbound, stats.outbound),
            (2, 1, 1)
        );
        assert_eq!(
            stats.status_breakdown["delivered"], 0,
            "every known status listed"
        );
        assert_eq!(stats.status_breakdown["read"], 1);
    }

    #[test]
    fn journal_keys_are_field_names_and_shards_in_range() {
        let key = journal_key("wamid.HBgM$odd.id==");
        assert_eq!(key.len(), 16);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!((0..1000).all(|n| stats_shard(&n.to_string()) < STATS_SHARDS));
    }
}
