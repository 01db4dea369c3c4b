//! Message statuses: they only move forward, a status can wait for its
//! message, and the events a change of status announces.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{
    Direction, Message, RECEIVED, Status, StatusChange, is_safe_status_name, status_rank,
};

/// How long a status may wait for its message before it is forgotten.
pub const PARKED_STATUS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a status webhook did to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The status moved forward.
    Moved,
    /// Not applied (stale, repeated or unknown), but its time was noted.
    Noted,
    /// Nothing at all.
    Unchanged,
}

/// Applies a status webhook to a message. Statuses are about the
/// business's own messages (`sent < delivered < read < played`, `failed`
/// terminal); a stale or repeated status changes nothing but, the first
/// time, its time is kept; an unknown status is only noted.
pub fn apply(message: &mut Message, change: &StatusChange) -> Outcome {
    if message.direction != Direction::Outbound || !is_safe_status_name(&change.status) {
        return Outcome::Unchanged;
    }
    let current = message.status.stored_rank();
    match change.status.rank() {
        Some(rank) if rank > current => {
            message.status.clone_from(&change.status);
            message
                .status_timestamps
                .insert(change.status.to_string(), change.timestamp);
            if change.errors.is_some() {
                message.errors.clone_from(&change.errors);
            }
            Outcome::Moved
        }
        _ if message
            .status_timestamps
            .contains_key(change.status.as_str()) =>
        {
            Outcome::Unchanged
        }
        _ => {
            message
                .status_timestamps
                .insert(change.status.to_string(), change.timestamp);
            Outcome::Noted
        }
    }
}

/// The business read an inbound message: `received` becomes `read`.
pub fn mark_read(message: &mut Message, at: DateTime<Utc>) -> bool {
    if !message.is_unread() {
        return false;
    }
    message.status = Status::Read;
    message.status_timestamps.insert("read".to_owned(), at);
    true
}

/// The status a message is stored with when it arrives.
pub fn initial(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => RECEIVED,
        Direction::Outbound => "sent",
    }
}

/// Order in which statuses of one batch are applied: per message, lowest
/// rank first (unknown ones last), then oldest first, so a batch holding
/// `read` and `delivered` of one message applies both.
pub fn application_order(change: &StatusChange) -> (&str, i32, DateTime<Utc>) {
    (
        change.message_id.as_str(),
        change.status.rank().unwrap_or(i32::MAX),
        change.timestamp,
    )
}

/// The statuses a message reached after `since` (`None`: after the status
/// it arrived with), in order, with their times: what a client that knew
/// it `since` has not been told.
pub fn reached_since<'m>(
    message: &'m Message,
    since: Option<&str>,
) -> Vec<(&'m str, DateTime<Utc>)> {
    let floor = status_rank(since.unwrap_or(initial(message.direction))).unwrap_or(0);
    let current = message.status.stored_rank();
    let mut reached: Vec<(i32, &str, DateTime<Utc>)> = message
        .status_timestamps
        .iter()
        .filter_map(|(status, at)| {
            let rank = status_rank(status)?;
            (rank > floor && rank <= current).then_some((rank, status.as_str(), *at))
        })
        .collect();
    reached.sort();
    reached.into_iter().map(|(_, s, at)| (s, at)).collect()
}

/// A parked status is kept once per message and status value.
pub fn parked_key(change: &StatusChange) -> String {
    format!("{}|{}", change.message_id, change.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Message;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn sent(id: &str) -> Message {
        Message::outbound_text(
            id.to_owned(),
            "4477",
            "1555".to_owned(),
            "hi".to_owned(),
            at(10),
        )
    }

    fn change(status: &str, seconds: i64) -> StatusChange {
        StatusChange {
            phone_number_id: None,
            message_id: "m".to_owned(),
            status: status.into(),
            timestamp: at(seconds),
            conversation_id: "conv_4477".to_owned(),
            errors: None,
            callback: None,
        }
    }

    #[test]
    fn statuses_move_forward_only_and_keep_their_first_time() {
        let mut m = sent("m");
        assert_eq!(apply(&mut m, &change("read", 30)), Outcome::Moved);
        assert_eq!(apply(&mut m, &change("delivered", 20)), Outcome::Noted);
        assert_eq!(apply(&mut m, &change("delivered", 25)), Outcome::Unchanged);
        assert_eq!(apply(&mut m, &change("read", 31)), Outcome::Unchanged);
        assert_eq!(m.status, "read");
        assert_eq!(m.status_timestamps["delivered"], at(20));
        assert_eq!(m.status_timestamps["read"], at(30));
    }

    #[test]
    fn failed_is_terminal_and_keeps_its_errors() {
        let mut m = sent("m");
        let mut failed = change("failed", 12);
        failed.errors = Some(serde_json::json!([{"code": 131047}]));
        assert_eq!(apply(&mut m, &failed), Outcome::Moved);
        assert_eq!(apply(&mut m, &change("read", 13)), Outcome::Noted);
        assert_eq!(m.status, "failed");
        assert!(m.errors.is_some());
    }

    #[test]
    fn unknown_statuses_are_noted_never_applied_and_inbound_messages_ignore_statuses() {
        let mut m = sent("m");
        assert_eq!(apply(&mut m, &change("deleted", 14)), Outcome::Noted);
        assert_eq!(apply(&mut m, &change("$set", 14)), Outcome::Unchanged);
        assert_eq!(m.status, "sent");
        let mut inbound = sent("m");
        inbound.direction = Direction::Inbound;
        inbound.status = Status::Received;
        assert_eq!(apply(&mut inbound, &change("read", 15)), Outcome::Unchanged);
        assert!(mark_read(&mut inbound, at(16)));
        assert!(!mark_read(&mut inbound, at(17)), "read once");
        assert!(!mark_read(&mut sent("m"), at(16)), "only inbound messages");
    }

    #[test]
    fn what_was_reached_since_a_status_is_told_in_order() {
        let mut m = sent("m");
        apply(&mut m, &change("read", 30));
        apply(&mut m, &change("delivered", 20));
        apply(&mut m, &change("deleted", 21));
        let names = |since| -> Vec<&str> {
            reached_since(&m, since)
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        assert_eq!(names(None), ["delivered", "read"]);
        assert_eq!(names(Some("delivered")), ["read"]);
        assert!(names(Some("read")).is_empty());
    }
}
