//! A conversation's summary: its last message (which only moves forward
//! in time) and the customer's name (from the newest message that carried
//! one).

use chrono::{DateTime, Utc};

use crate::domain::{Direction, Message, Status};

/// Key under which conversations are ordered: newest last message first,
/// ties broken by message id, so paging is stable. Also orders the
/// candidates for a summary's last message and name.
pub fn sort_key(timestamp: DateTime<Utc>, message_id: &str) -> String {
    format!("{:015}|{message_id}", timestamp.timestamp_millis().max(0))
}

/// Characters of the last message a conversation summary shows: a list of
/// conversations stays small whatever the messages' size.
pub const PREVIEW_CHARS: usize = 200;

/// The start of `body`, at most [`PREVIEW_CHARS`] characters (an ellipsis
/// says it was cut).
pub fn preview(body: &str) -> String {
    match body.char_indices().nth(PREVIEW_CHARS) {
        None => body.to_owned(),
        Some((end, _)) => format!("{}…", &body[..end]),
    }
}

/// What a summary shows of its last message.
#[derive(Debug, Clone, PartialEq)]
pub struct Last {
    pub key: String,
    pub message_id: String,
    pub body: String,
    pub timestamp: DateTime<Utc>,
    pub status: Status,
    pub status_rank: i32,
    pub direction: Direction,
    /// The customer's WhatsApp id.
    pub wa_id: String,
    /// The customer and the business number.
    pub participants: Vec<String>,
}

impl Last {
    pub fn of(message: &Message) -> Self {
        let business = match message.direction {
            Direction::Outbound => &message.from,
            Direction::Inbound => &message.to,
        };
        Self {
            key: sort_key(message.timestamp, &message.message_id),
            message_id: message.message_id.clone(),
            body: preview(&message.body),
            timestamp: message.timestamp,
            status: message.status.clone(),
            status_rank: message.status.stored_rank(),
            direction: message.direction,
            wa_id: message.wa_id.clone(),
            participants: [&message.wa_id, business]
                .into_iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect(),
        }
    }
}

/// The name shown for a conversation, and the key of the message it came
/// from (a newer message's name wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub name: String,
    pub key: String,
}

impl Name {
    pub fn of(message: &Message) -> Option<Self> {
        Some(Self {
            name: message.contact_name.clone()?,
            key: sort_key(message.timestamp, &message.message_id),
        })
    }

    /// Shown until a message brings the customer's profile name.
    pub fn fallback(wa_id: &str) -> String {
        format!("+{wa_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_keeps_short_bodies_and_cuts_long_ones_on_a_character() {
        assert_eq!(preview("hello"), "hello");
        let exact = "é".repeat(PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
        let long = "é".repeat(PREVIEW_CHARS + 1);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), PREVIEW_CHARS + 1);
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
    }

    #[test]
    fn sort_keys_order_by_time_then_id() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap_or_default();
        assert!(sort_key(t(2), "a") > sort_key(t(1), "z"));
        assert!(sort_key(t(1), "b") > sort_key(t(1), "a"));
        assert!(sort_key(t(100_000_000), "a") > sort_key(t(99_999_999), "a"));
    }

    #[test]
    fn the_last_message_names_both_parties() {
        let t = DateTime::from_timestamp(5, 0).unwrap_or_default();
        let m = Message::outbound_text("w".into(), "4477", "1555".into(), "hi".into(), t);
        let last = Last::of(&m);
        assert_eq!(last.participants, ["4477", "1555"]);
        assert_eq!((last.status.as_str(), last.status_rank), ("sent", 1));
        assert_eq!(Name::of(&m), None, "no profile name on a business message");
        assert_eq!(Name::fallback("4477"), "+4477");
    }
}
