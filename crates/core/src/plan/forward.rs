//! "Only if newer", written once.
//!
//! A conversation summary has fields that only ever move forward: its last
//! message, the name it shows, the last message's status and the time the
//! customer last wrote. The planner turns what it wants of them into
//! [`Forward`] writes ([`ConversationChange::forward`]), each with the one
//! definition of when it applies ([`Forward::holds`]). Another writer may
//! get there between planning and writing, so stores check again at write
//! time: SQLite and the in-memory reference store call `holds` against the
//! summary inside their transaction; MongoDB, which cannot run Rust inside
//! an update, translates each variant into the update filter it stands
//! for (wa-store-mongo's `forward_statements`, one arm per variant).

use chrono::{DateTime, Utc};

use super::summary::{Last, Name};
use super::{ConversationChange, LastStatus, Summary};

/// A write to a summary that only moves it forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Forward<'a> {
    /// A newer last message.
    Last(&'a Last),
    /// A name from a newer message.
    Name(&'a Name),
    /// The last message's status, raised.
    Status(&'a LastStatus),
    /// The customer wrote later.
    Inbound(DateTime<Utc>),
}

impl Forward<'_> {
    /// Whether it applies to `stored`, the summary as it is now.
    pub fn holds(&self, stored: &Summary) -> bool {
        match self {
            // Sort keys order by time, then id: a later message, or the
            // same time's higher id (stable whoever writes first).
            Self::Last(last) => last.key > stored.last_key,
            Self::Name(name) => name.key > stored.name_key,
            // Only while the summary still shows that message (under its
            // old id too, until a rename reaches it), and never down.
            Self::Status(moved) => {
                let shown = moved.message_id == stored.last_message_id
                    || moved.renamed_from.as_deref() == Some(stored.last_message_id.as_str());
                shown && moved.rank > stored.last_status_rank
            }
            Self::Inbound(at) => stored.last_inbound.is_none_or(|known| known < *at),
        }
    }
}

impl ConversationChange {
    /// Its forward-only writes, in the order stores apply them (a status
    /// raise after the last message it may be about).
    pub fn forward(&self) -> impl Iterator<Item = Forward<'_>> {
        let last = self.last.iter().map(Forward::Last);
        let name = self.name.iter().map(Forward::Name);
        let status = self.last_status.iter().map(Forward::Status);
        let inbound = self.last_inbound.map(Forward::Inbound);
        last.chain(name).chain(status).chain(inbound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Direction, Status};

    fn last(key: &str) -> Last {
        Last {
            key: key.to_owned(),
            message_id: format!("wamid.{key}"),
            body: String::new(),
            timestamp: DateTime::UNIX_EPOCH,
            status: Status::Sent,
            status_rank: 1,
            direction: Direction::Outbound,
            wa_id: "1".to_owned(),
            participants: Vec::new(),
        }
    }

    fn stored(last_key: &str, last_message_id: &str, rank: i32) -> Summary {
        Summary {
            last_key: last_key.to_owned(),
            last_message_id: last_message_id.to_owned(),
            last_status_rank: rank,
            name_key: last_key.to_owned(),
            ..Summary::default()
        }
    }

    #[test]
    fn a_last_message_or_name_applies_only_if_newer() {
        let summary = stored("2|b", "b", 1);
        assert!(Forward::Last(&last("3|a")).holds(&summary));
        assert!(Forward::Last(&last("2|c")).holds(&summary));
        assert!(!Forward::Last(&last("2|b")).holds(&summary));
        assert!(!Forward::Last(&last("1|z")).holds(&summary));
        let name = |key: &str| Name {
            name: "Ada".to_owned(),
            key: key.to_owned(),
        };
        assert!(Forward::Name(&name("3|a")).holds(&summary));
        assert!(!Forward::Name(&name("2|b")).holds(&summary));
    }

    #[test]
    fn a_status_is_raised_only_on_the_message_shown_and_never_lowered() {
        let raise = |id: &str, renamed_from: Option<&str>, rank: i32| LastStatus {
            message_id: id.to_owned(),
            status: Status::Sent,
            rank,
            renamed_from: renamed_from.map(str::to_owned),
            key: String::new(),
        };
        let summary = stored("2|b", "b", 2);
        assert!(Forward::Status(&raise("b", None, 3)).holds(&summary));
        assert!(!Forward::Status(&raise("b", None, 2)).holds(&summary));
        assert!(!Forward::Status(&raise("b", None, 1)).holds(&summary));
        assert!(!Forward::Status(&raise("c", None, 3)).holds(&summary));
        // Shown under its local id until the rename reaches the summary.
        assert!(Forward::Status(&raise("wamid.b", Some("b"), 3)).holds(&summary));
    }

    #[test]
    fn the_customer_s_last_time_only_moves_later() {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
        let mut summary = stored("", "", 0);
        assert!(Forward::Inbound(at(10)).holds(&summary));
        summary.last_inbound = Some(at(10));
        assert!(Forward::Inbound(at(11)).holds(&summary));
        assert!(!Forward::Inbound(at(10)).holds(&summary));
        assert!(!Forward::Inbound(at(9)).holds(&summary));
    }
}
