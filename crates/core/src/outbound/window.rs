//! Whether a message may be sent now: WhatsApp lets a business start a
//! conversation only with a template, and send free-form messages only
//! within 24 hours of the customer's last message (the customer service
//! window, [`crate::domain::SERVICE_WINDOW`]).

use chrono::{DateTime, Utc};

use super::Draft;
use crate::domain::Conversation;

/// Why a message may not be sent (checked before anything is stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such conversation, and the message is not a template.
    #[error("no conversation {0}: the first message to a customer must be a template")]
    FirstNotTemplate(String),
    /// A template to start a conversation whose id is no WhatsApp id.
    #[error(
        "a new conversation needs the customer's WhatsApp id (their number with country code, 7 to 15 digits)"
    )]
    NotAWhatsAppId,
    /// A free-form message outside the customer service window.
    #[error(
        "outside the 24-hour customer service window (the customer's last message is older, or there is none): only a template can be sent"
    )]
    WindowClosed,
}

/// Whether `draft` may go to `conversation_id` (`conversation`: what is
/// stored of it, if anything) at `now`. The window is WhatsApp's rule:
/// without WhatsApp configured (`whatsapp` false) only the first-message
/// rule applies.
pub fn may_send(
    draft: &Draft,
    conversation_id: &str,
    conversation: Option<&Conversation>,
    whatsapp: bool,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let free_form = draft.needs_open_window();
    let Some(conversation) = conversation else {
        if free_form {
            return Err(Refusal::FirstNotTemplate(conversation_id.to_owned()));
        }
        let wa_id =
            crate::numbers::parse_conversation_id(conversation_id).map_or("", |(wa_id, _)| wa_id);
        if !(7..=15).contains(&wa_id.len()) {
            return Err(Refusal::NotAWhatsAppId);
        }
        return Ok(());
    };
    let closed = conversation
        .window_expires_at
        .is_none_or(|closes| closes <= now);
    if free_form && whatsapp && closed {
        return Err(Refusal::WindowClosed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Direction, Status};
    use chrono::TimeDelta;
    use serde_json::{Value, json};

    fn draft(body: Value) -> Draft {
        match body {
            Value::Object(fields) => Draft::from_body(&fields).unwrap_or_else(|e| panic!("{e:?}")),
            _ => panic!("not an object"),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000).unwrap_or_default()
    }

    fn closing(window_expires_at: Option<DateTime<Utc>>) -> Conversation {
        Conversation {
            conversation_id: "conv_447700900123".to_owned(),
            user_name: "Ada".to_owned(),
            last_message_id: "wamid.A".to_owned(),
            last_message_body: "hi".to_owned(),
            last_timestamp: now(),
            last_message_status: Status::Received,
            last_message_direction: Direction::Inbound,
            message_count: 1,
            unread_count: 1,
            participants: vec!["447700900123".to_owned()],
            window_expires_at,
            phone_number_id: None,
            business_number: None,
        }
    }

    #[test]
    fn a_first_message_must_be_a_template_to_a_whatsapp_id() {
        let text = draft(json!({"message": "hello"}));
        let template =
            draft(json!({"template": {"name": "hello_world", "language": {"code": "en_US"}}}));
        assert_eq!(
            may_send(&text, "conv_447700900123", None, true, now()),
            Err(Refusal::FirstNotTemplate("conv_447700900123".to_owned()))
        );
        assert_eq!(
            may_send(&template, "conv_447700900123", None, true, now()),
            Ok(())
        );
        assert_eq!(
            may_send(
                &template,
                "conv_447700900123_106540352242923",
                None,
                true,
                now()
            ),
            Ok(())
        );
        assert_eq!(
            may_send(&template, "conv_123456", None, true, now()),
            Err(Refusal::NotAWhatsAppId)
        );
        assert_eq!(
            may_send(&template, "conv_123456_106540352242923", None, true, now()),
            Err(Refusal::NotAWhatsAppId)
        );
        assert_eq!(
            may_send(&template, "conv_1234567890123456", None, false, now()),
            Err(Refusal::NotAWhatsAppId)
        );
    }

    #[test]
    fn free_form_messages_need_the_window_open_when_whatsapp_sends_them() {
        let text = draft(json!({"message": "hello"}));
        let template =
            draft(json!({"template": {"name": "hello_world", "language": {"code": "en_US"}}}));
        let open = closing(Some(now() + TimeDelta::seconds(1)));
        let closed = closing(Some(now()));
        let never = closing(None);
        let id = "conv_447700900123";
        assert_eq!(may_send(&text, id, Some(&open), true, now()), Ok(()));
        assert_eq!(
            may_send(&text, id, Some(&closed), true, now()),
            Err(Refusal::WindowClosed)
        );
        assert_eq!(
            may_send(&text, id, Some(&never), true, now()),
            Err(Refusal::WindowClosed)
        );
        assert_eq!(may_send(&template, id, Some(&closed), true, now()), Ok(()));
        // Without WhatsApp, nothing is sent to the customer: no window.
        assert_eq!(may_send(&text, id, Some(&closed), false, now()), Ok(()));
    }
}
