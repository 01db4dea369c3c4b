//! What `POST /api/messages` stores for a [`Draft`]: the message (with
//! its local id, derived from the client's key so a repeat finds it) and,
//! when WhatsApp is configured, its send for the sender to take. The
//! handler reads the request and the store; everything it stores is built
//! here.

use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Draft;
use crate::domain::{BUSINESS_USER_NAME, Conversation, Direction, Message, PENDING, QueuedSend};

/// The local id of a message sent with the client's key (`Idempotency-Key`
/// or `clientMessageId`): derived from the key whatever its characters,
/// so a repeat with it finds the first message.
pub fn keyed_local_id(key: &str) -> String {
    format!(
        "local.{}",
        &hex::encode(Sha256::digest(key.as_bytes()))[..32]
    )
}

/// The local id of a message sent without a key; `unique` is fresh for
/// each message (a UUID in its simple form: letters and digits only).
pub fn fresh_local_id(unique: &str) -> String {
    format!("local.{unique}")
}

impl Draft {
    /// What a repeat with the same key must match, as a hash: the
    /// conversation, the kind, the Graph API content and the message
    /// replied to.
    pub fn fingerprint(&self, conversation_id: &str) -> String {
        let what = json!([conversation_id, self.kind, self.content, self.reply_to]);
        hex::encode(Sha256::digest(what.to_string().as_bytes()))
    }

    /// Whether `stored`, the message first sent with a key, is this draft
    /// to `conversation_id` again (else the key was used for another
    /// message).
    pub fn is_repeated_by(&self, conversation_id: &str, stored: &Message) -> bool {
        stored.conversation_id == conversation_id
            && stored.kind == self.kind
            && stored.body == self.body
    }
}

/// The business number a message goes from: the one the client gave, else
/// the conversation's other participant, else none (empty; WhatsApp sends
/// from the configured number anyway).
pub fn business_number(
    given: Option<&str>,
    conversation: Option<&Conversation>,
    wa_id: &str,
) -> String {
    given
        .map(str::to_owned)
        .or_else(|| conversation.and_then(|c| c.participants.iter().find(|p| *p != wa_id).cloned()))
        .unwrap_or_default()
}

/// Who a message goes to and under which names, besides its [`Draft`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressed<'a> {
    /// Its local id ([`keyed_local_id`] or [`fresh_local_id`]).
    pub local_id: &'a str,
    /// The client's key, if it gave one.
    pub key: Option<&'a str>,
    /// The customer's WhatsApp id.
    pub wa_id: &'a str,
    /// The conversation: the customer's with the business number it goes
    /// out through (see [`crate::numbers::conversation_id`]).
    pub conversation_id: &'a str,
    /// The conversation's business number and its display number, kept on
    /// the message (whether WhatsApp is configured or not).
    pub number: Option<&'a str>,
    pub business_number: Option<&'a str>,
    /// The business number ([`business_number`]).
    pub from: &'a str,
    /// The business number's id when WhatsApp is configured for it: the
    /// message is then `pending` with its send queued through it. Without it,
    /// nothing can send it: it is stored as `sent`, queued nowhere.
    pub phone_number_id: Option<&'a str>,
}

/// What is stored for a message the business sends, in one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message: Message,
    /// Its send, for the sender (none without WhatsApp).
    pub send: Option<QueuedSend>,
}

/// The message and its send for `draft` (its references already resolved
/// to WhatsApp's ids), accepted at `at`. The message keeps `at` to the
/// millisecond (what every store keeps); the send keeps it to the
/// microsecond, the order of a conversation's sends.
pub fn outgoing(draft: &Draft, to: &Addressed<'_>, at: DateTime<Utc>) -> Outgoing {
    let now = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
    let status = if to.phone_number_id.is_some() {
        PENDING
    } else {
        "sent"
    };
    let message = Message {
        id: to.local_id.to_owned(),
        message_id: to.local_id.to_owned(),
        client_message_id: Some(to.key.unwrap_or(to.local_id).to_owned()),
        conversation_id: to.conversation_id.to_owned(),
        wa_id: to.wa_id.to_owned(),
        from: to.from.to_owned(),
        to: to.wa_id.to_owned(),
        timestamp: now,
        kind: draft.kind.clone(),
        body: draft.body.clone(),
        status: status.into(),
        user_name: BUSINESS_USER_NAME.to_owned(),
        direction: Direction::Outbound,
        contact_name: None,
        phone_number_id: to.number.or(to.phone_number_id).map(str::to_owned),
        business_number: to.business_number.map(str::to_owned),
        content: Some(draft.content.clone()),
        context: draft.reply_to.as_ref().map(|id| json!({"id": id})),
        referral: None,
        errors: None,
        status_timestamps: [(status.to_owned(), now)].into(),
        media_url: None,
    };
    let send = to.phone_number_id.map(|number| QueuedSend {
        id: to.local_id.to_owned(),
        conversation_id: message.conversation_id.clone(),
        phone_number_id: Some(number.to_owned()),
        request: draft.request(to.wa_id, to.local_id),
        due: now,
        queued_at: Some(at),
        attempts: 0,
        wamid: None,
        last_error: None,
        held: false,
    });
    Outgoing { message, send }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Status, is_local_id};
    use serde_json::Value;

    fn draft(body: Value) -> Draft {
        match body {
            Value::Object(fields) => Draft::from_body(&fields).unwrap_or_else(|e| panic!("{e:?}")),
            _ => panic!("not an object"),
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default()
    }

    fn conversation(participants: &[&str]) -> Conversation {
        Conversation {
            conversation_id: "conv_4477".to_owned(),
            user_name: "Ada".to_owned(),
            last_message_id: "wamid.A".to_owned(),
            last_message_body: "hi".to_owned(),
            last_timestamp: at(),
            last_message_status: Status::Received,
            last_message_direction: Direction::Inbound,
            message_count: 1,
            unread_count: 1,
            participants: participants.iter().map(|p| (*p).to_owned()).collect(),
            window_expires_at: None,
            phone_number_id: None,
            business_number: None,
        }
    }

    #[test]
    fn local_ids_are_derived_from_keys_and_are_local_ids() {
        let a = keyed_local_id("order 17 / näive");
        assert_eq!(a, keyed_local_id("order 17 / näive"));
        assert_ne!(a, keyed_local_id("order 18"));
        assert!(is_local_id(&a), "{a}");
        assert_eq!(a.len(), "local.".len() + 32);
        assert!(is_local_id(&fresh_local_id(
            "0190a1b2c3d4e5f60718293a4b5c6d7e"
        )));
    }

    #[test]
    fn with_whatsapp_a_text_is_stored_pending_with_its_send_queued() {
        let d = draft(json!({"message": "hello", "replyTo": "wamid.A"}));
        let to = Addressed {
            local_id: "local.1",
            key: Some("k1"),
            wa_id: "4477",
            conversation_id: "conv_4477",
            number: None,
            business_number: None,
            from: "1555",
            phone_number_id: Some("PN1"),
        };
        let Outgoing { message, send } = outgoing(&d, &to, at());
        let ms = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap_or_default();
        assert_eq!(message.id, "local.1");
        assert_eq!(message.message_id, "local.1");
        assert_eq!(message.client_message_id.as_deref(), Some("k1"));
        assert_eq!(message.conversation_id, "conv_4477");
        assert_eq!(
            (message.from.as_str(), message.to.as_str()),
            ("1555", "4477")
        );
        assert_eq!(message.status, PENDING);
        assert_eq!(message.status_timestamps, [(PENDING.to_owned(), ms)].into());
        assert_eq!(message.timestamp, ms);
        assert_eq!(message.user_name, BUSINESS_USER_NAME);
        assert_eq!(message.direction, Direction::Outbound);
        assert_eq!(message.phone_number_id.as_deref(), Some("PN1"));
        assert_eq!(message.content, Some(json!({"body": "hello"})));
        assert_eq!(message.context, Some(json!({"id": "wamid.A"})));
        let send = send.unwrap_or_else(|| panic!("no send queued"));
        assert_eq!(send.id, "local.1");
        assert_eq!(send.conversation_id, "conv_4477");
        assert_eq!(send.request, d.request("4477", "local.1"));
        assert_eq!(send.due, ms);
        assert_eq!(send.queued_at, Some(at()), "to the microsecond");
        assert_eq!((send.attempts, send.held), (0, false));
    }

    #[test]
    fn without_whatsapp_it_is_stored_sent_and_queued_nowhere() {
        let d = draft(json!({"template": {"name": "hello_world", "language": {"code": "en_US"}}}));
        let to = Addressed {
            local_id: "local.2",
            key: None,
            wa_id: "4477",
            conversation_id: "conv_4477",
            number: None,
            business_number: None,
            from: "",
            phone_number_id: None,
        };
        let Outgoing { message, send } = outgoing(&d, &to, at());
        assert_eq!(message.status, "sent");
        assert!(message.status_timestamps.contains_key("sent"));
        assert_eq!(message.client_message_id.as_deref(), Some("local.2"));
        assert_eq!(message.body, "[template: hello_world]");
        assert_eq!(message.context, None);
        assert_eq!(message.phone_number_id, None);
        assert_eq!(send, None);
    }

    #[test]
    fn the_business_number_is_the_given_one_else_the_conversations() {
        let c = conversation(&["4477", "1555"]);
        assert_eq!(business_number(Some("1999"), Some(&c), "4477"), "1999");
        assert_eq!(business_number(None, Some(&c), "4477"), "1555");
        assert_eq!(
            business_number(None, Some(&conversation(&["4477"])), "4477"),
            ""
        );
        assert_eq!(business_number(None, None, "4477"), "");
    }

    #[test]
    fn a_repeat_must_be_the_same_message_to_the_same_conversation() {
        let d = draft(json!({"message": "hello"}));
        let to = Addressed {
            local_id: "local.3",
            key: Some("k"),
            wa_id: "4477",
            conversation_id: "conv_4477",
            number: None,
            business_number: None,
            from: "1555",
            phone_number_id: None,
        };
        let stored = outgoing(&d, &to, at()).message;
        assert!(d.is_repeated_by("conv_4477", &stored));
        assert!(!d.is_repeated_by("conv_4478", &stored));
        assert!(!draft(json!({"message": "bye"})).is_repeated_by("conv_4477", &stored));
    }

    #[test]
    fn fingerprints_differ_by_conversation_content_and_reply() {
        let d = draft(json!({"message": "hello"}));
        let same = d.fingerprint("conv_4477");
        assert_eq!(
            same,
            draft(json!({"body": "hello"})).fingerprint("conv_4477")
        );
        assert_eq!(same.len(), 64);
        for other in [
            d.fingerprint("conv_4478"),
            draft(json!({"message": "hello!"})).fingerprint("conv_4477"),
            draft(json!({"message": "hello", "replyTo": "wamid.A"})).fingerprint("conv_4477"),
            draft(json!({"message": "hello", "previewUrl": true})).fingerprint("conv_4477"),
        ] {
            assert_ne!(same, other);
        }
    }
}
