//! The domain: messages, their statuses, conversations, and the events the
//! processor emits. These are the shapes of the REST API and Socket.IO events
//! (camelCase, ISO-8601 times); stores map them to their own rows.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name businesses' own messages are shown under.
pub const BUSINESS_USER_NAME: &str = "Business";
/// Status of an inbound message until the business reads it.
pub const RECEIVED: &str = "received";
/// Status of a business message until WhatsApp accepts it.
pub const PENDING: &str = "pending";
/// How long after the customer's last message free-form messages may be
/// sent (WhatsApp's customer service window); templates are always allowed.
pub const SERVICE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The home number's conversation with a customer (see
/// [`crate::numbers`] for other numbers').
pub fn conversation_id(wa_id: &str) -> String {
    format!("conv_{wa_id}")
}

/// True for `conv_<digits>` and `conv_<digits>_<digits>`, the only
/// conversation ids we ever create.
pub fn is_conversation_id(id: &str) -> bool {
    crate::numbers::parse_conversation_id(id).is_some()
}

/// A message's status, in the forward-only order `received`/`pending` <
/// `sent` < `delivered` < `read` < `played` < `failed` (terminal).
/// WhatsApp may add statuses: an unknown one is kept as it came (its time
/// is recorded, it is never applied), so nothing it said is lost. On the
/// wire and in stores it is its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Status {
    /// An inbound message the business has not read.
    Received,
    /// A business message WhatsApp has not accepted yet.
    Pending,
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
    /// A status this version does not know.
    Other(String),
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Received => RECEIVED,
            Self::Pending => PENDING,
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
            Self::Failed => "failed",
            Self::Other(name) => name,
        }
    }

    /// Its place in the forward-only order; an unknown status has none.
    pub fn rank(&self) -> Option<i32> {
        Some(match self {
            Self::Received | Self::Pending => 0,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Played => 4,
            Self::Failed => 5,
            Self::Other(_) => return None,
        })
    }

    /// The rank a stored message's status counts as: unknown statuses are
    /// never applied, so a stored one is known; were one not, it would
    /// rank lowest and anything would move it on.
    pub fn stored_rank(&self) -> i32 {
        self.rank().unwrap_or(0)
    }
}

impl From<&str> for Status {
    fn from(name: &str) -> Self {
        match name {
            RECEIVED => Self::Received,
            PENDING => Self::Pending,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "played" => Self::Played,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl From<String> for Status {
    fn from(name: String) -> Self {
        match Self::from(name.as_str()) {
            Self::Other(_) => Self::Other(name),
            known => known,
        }
    }
}

impl From<Status> for String {
    fn from(status: Status) -> Self {
        match status {
            Status::Other(name) => name,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::ops::Deref for Status {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Status {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The rank of a status by its name (see [`Status::rank`]).
pub fn status_rank(status: &str) -> Option<i32> {
    Status::from(status).rank()
}

/// Whether an id is one we give a message the business sends, until
/// WhatsApp gives it its own (`local.<32 hex or uuid>`).
pub fn is_local_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .strip_prefix("local.")
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Status names safe to use as a field name in a store (`statusTimestamps.<s>`).
pub fn is_safe_status_name(status: &str) -> bool {
    !status.is_empty()
        && status.len() <= 32
        && status.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// A stored WhatsApp message, inbound or sent by the business.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The message's permanent key: the WhatsApp id for messages that
    /// arrived by webhook, the local id for messages sent through the API
    /// (whose `message_id` becomes WhatsApp's id once WhatsApp accepts them).
    #[serde(rename = "_id")]
    pub id: String,
    /// WhatsApp's id (`wamid...`), or `local...` until WhatsApp accepted it.
    pub message_id: String,
    /// The sender's own id for a message sent through the API (its
    /// `Idempotency-Key`), kept when `message_id` becomes WhatsApp's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    pub conversation_id: String,
    /// The customer's WhatsApp id (the other party, whatever the direction).
    pub wa_id: String,
    pub from: String,
    pub to: String,
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: String,
    pub body: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: Status,
    pub user_name: String,
    pub direction: Direction,
    /// The customer's profile name, when the webhook carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    /// The business number the message was sent to or from (the
    /// webhook's `metadata.phone_number_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// That number's display number (digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_number: Option<String>,
    /// The type-specific object exactly as WhatsApp sent it (`image`,
    /// `location`, ...): media ids, mime types, captions, file names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
    /// When each status was reached, by status name.
    #[serde(default)]
    pub status_timestamps: BTreeMap<String, DateTime<Utc>>,
    /// Where the API serves an inbound media message's bytes
    /// (`/api/media/<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
}

/// Message types whose content names a media object WhatsApp keeps.
pub const MEDIA_KINDS: [&str; 5] = ["image", "audio", "video", "document", "sticker"];

/// Unread: a customer's message the business has not read yet (what
/// `unreadCount` counts and marking a conversation read reads). Stores
/// that select unread messages in their own query language say the same.
pub fn is_unread(direction: Direction, status: &str) -> bool {
    direction == Direction::Inbound && status == RECEIVED
}

impl Message {
    /// See [`is_unread`].
    pub fn is_unread(&self) -> bool {
        is_unread(self.direction, &self.status)
    }

    /// The id of a media message's media object (`content.id`): what
    /// stores find a media object's conversation by.
    pub fn media_id(&self) -> Option<&str> {
        if !MEDIA_KINDS.contains(&self.kind.as_str()) {
            return None;
        }
        self.content.as_ref()?.get("id")?.as_str()
    }

    /// Sets `media_url` for a media message whose content has an id.
    pub fn with_media_url(mut self) -> Self {
        if self.media_url.is_none() {
            let id = self
                .media_id()
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()));
            self.media_url = id.map(|id| format!("/api/media/{id}"));
        }
        self
    }

    /// A text the business sends from the API: stored as `sent`, like the
    /// business's own messages that arrive by webhook.
    pub fn outbound_text(
        message_id: String,
        wa_id: &str,
        from: String,
        text: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: message_id.clone(),
            message_id,
            client_message_id: None,
            conversation_id: conversation_id(wa_id),
            wa_id: wa_id.to_owned(),
            from,
            to: wa_id.to_owned(),
            timestamp: now,
            kind: "text".to_owned(),
            content: Some(serde_json::json!({"body": text})),
            body: text,
            status: Status::Sent,
            user_name: BUSINESS_USER_NAME.to_owned(),
            direction: Direction::Outbound,
            contact_name: None,
            phone_number_id: None,
            business_number: None,
            context: None,
            referral: None,
            errors: None,
            status_timestamps: BTreeMap::from([("sent".to_owned(), now)]),
            media_url: None,
        }
    }
}

/// A message waiting to be sent through WhatsApp: the send queue holds
/// one per message, committed with the message, until WhatsApp answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedSend {
    /// The message's permanent key ([`Message::id`]).
    pub id: String,
    pub conversation_id: String,
    /// The business number it goes out through (`None`: queued before
    /// numbers existed: the default number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// The Graph API request body.
    pub request: Value,
    /// When it is next due: at once, after a retry's backoff, or when the
    /// lease of a sender that stopped answering runs out.
    pub due: DateTime<Utc>,
    /// When it was queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// WhatsApp's id for it, noted the moment WhatsApp accepted it, so a
    /// sender that stops before storing the outcome never sends it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wamid: Option<String>,
    /// Why the last attempt did not go through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Waiting behind an earlier send of its conversation (its due time is
    /// then that one's), not in backoff: whoever finishes the earlier one
    /// may take it at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl QueuedSend {
    /// Its place in its conversation's queue (microseconds since the
    /// epoch it was queued at; ties go by id): sends to a customer leave
    /// in this order.
    pub fn order(&self) -> i64 {
        self.queued_at.unwrap_or(self.due).timestamp_micros()
    }
}

/// A webhook body exactly as received, kept because Meta offers no way to
/// fetch a webhook again.
#[derive(Debug, Clone)]
pub struct RawPayload {
    /// SHA-256 of the body, hex: the same id the gateway gives the broker.
    pub id: String,
    pub body: Bytes,
    pub received_at: DateTime<Utc>,
}

/// A status webhook for one of the business's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    pub message_id: String,
    pub status: Status,
    pub timestamp: DateTime<Utc>,
    /// `conv_<recipient_id>`, then the conversation of its number
    /// ([`crate::numbers::route`]).
    pub conversation_id: String,
    /// The business number the webhook came for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
    /// The local id of our message this status is for, when WhatsApp
    /// echoes it (`biz_opaque_callback_data`): it names the message even
    /// if its sender never stored WhatsApp's id (killed in between).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
}

/// A conversation's precomputed summary, as listed by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub conversation_id: String,
    pub user_name: String,
    pub last_message_id: String,
    pub last_message_body: String,
    pub last_timestamp: DateTime<Utc>,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub last_message_status: Status,
    pub last_message_direction: Direction,
    pub message_count: i64,
    pub unread_count: i64,
    pub participants: Vec<String>,
    /// When WhatsApp's 24-hour customer service window closes (24 hours
    /// after the customer's last message; `null`: the customer never
    /// wrote). After it, only templates may be sent.
    pub window_expires_at: Option<DateTime<Utc>>,
    /// The business number of the conversation (`null` only for data
    /// stored before numbers existed and not migrated yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// Its display number (digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_number: Option<String>,
}

/// Totals for `GET /api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_messages: i64,
    pub total_conversations: i64,
    pub inbound: i64,
    pub outbound: i64,
    /// Messages per status; every known status is listed, zero or not.
    pub status_breakdown: BTreeMap<String, i64>,
    /// Malformed webhook items refused (each kept with its reason).
    pub rejected_items: i64,
    /// The number these totals are narrowed to (`?phoneNumberId=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
}

/// Statuses every stats breakdown lists.
pub const KNOWN_STATUSES: [&str; 7] = [
    RECEIVED,
    PENDING,
    "sent",
    "delivered",
    "read",
    "played",
    "failed",
];

/// A page of a newest-first listing: at most `limit` items older than
/// `before`; with `before_id` (the id of the last item of the previous page:
/// a message id, or a conversation's last message id), items at exactly
/// `before` with a smaller id too, so items sharing a second aren't skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub before: Option<DateTime<Utc>>,
    pub before_id: Option<String>,
}

/// What the processor publishes after a write that changed something.
// A status update is a few strings (~260 bytes); boxing it would cost an
// allocation per event for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "camelCase")]
pub enum Event {
    NewMessage(Box<Message>),
    StatusUpdate(StatusUpdate),
}

/// Payload of the `statusUpdate` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    pub message_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: Status,
    pub conversation_id: String,
    /// The business number of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_number: Option<String>,
    pub timestamp: DateTime<Utc>,
    /// For messages sent through the API: the sender's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// The message's id until now, when WhatsApp's acceptance gave it a
    /// new one (`local...` → `wamid...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_message_id: Option<String>,
    /// Why a message failed (WhatsApp's errors), with `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
}

impl Event {
    pub fn conversation_id(&self) -> &str {
        match self {
            Event::NewMessage(m) => &m.conversation_id,
            Event::StatusUpdate(s) => &s.conversation_id,
        }
    }

    /// The change the event announces, as an id: a message stored, or a
    /// message reaching a status (each happens once, statuses only move
    /// forward). Outboxes and event logs keep one event per id.
    pub fn id(&self) -> String {
        match self {
            Event::NewMessage(m) => format!("m:{}", m.message_id),
            Event::StatusUpdate(s) => format!("s:{}:{}", s.message_id, s.status),
        }
    }

    /// Socket.IO's event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::NewMessage(_) => "newMessage",
            Event::StatusUpdate(_) => "statusUpdate",
        }
    }
}

/// An event in the deployment's event log: `seq` orders every event of
/// every conversation, the same on every api-gateway replica. Serialised
/// as `{"seq", "event", "data"}` (`GET /api/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced {
    pub seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

impl Sequenced {
    /// What a Socket.IO client receives: the event's data with `seq` in it.
    pub fn payload(&self) -> Value {
        let mut data = match &self.event {
            Event::NewMessage(m) => serde_json::to_value(m.as_ref()),
            Event::StatusUpdate(s) => serde_json::to_value(s),
        }
        .unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut data {
            fields.insert("seq".to_owned(), self.seq.into());
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_its_name_and_an_unknown_one_is_kept_as_it_came() {
        for name in [
            "received",
            "pending",
            "sent",
            "delivered",
            "read",
            "played",
            "failed",
        ] {
            let status = Status::from(name);
            assert!(!matches!(status, Status::Other(_)), "{name}");
            assert_eq!(status.as_str(), name);
            assert_eq!(String::from(status.clone()), name);
            assert_eq!(
                serde_json::to_value(&status).unwrap(),
                serde_json::json!(name)
            );
        }
        let deleted: Status = serde_json::from_value(serde_json::json!("deleted")).unwrap();
        assert_eq!(deleted, Status::Other("deleted".to_owned()));
        assert_eq!(deleted, "deleted");
        assert_eq!(
            serde_json::to_value(&deleted).unwrap(),
            serde_json::json!("deleted")
        );
        assert_eq!(deleted.rank(), None);
        assert_eq!(deleted.stored_rank(), 0);
    }

    #[test]
    fn statuses_only_move_forward_and_failed_is_terminal() {
        let order = ["received", "sent", "delivered", "read", "played", "failed"];
        let ranks: Vec<i32> = order.iter().filter_map(|s| status_rank(s)).collect();
        assert_eq!(ranks.len(), order.len());
        assert!(ranks.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(status_rank("deleted"), None);
    }

    #[test]
    fn conversation_ids_are_conv_and_digits() {
        assert!(is_conversation_id("conv_919937320320"));
        for bad in ["conv_", "conv_12a", "919937320320", "conv_1 ", "conv_$gt"] {
            assert!(!is_conversation_id(bad), "{bad}");
        }
    }
}
