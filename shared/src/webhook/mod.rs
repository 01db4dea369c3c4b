//! Turning a webhook body into the messages and status changes it carries.
//!
//! This is the one place that interprets WhatsApp payloads: the gateway calls
//! [`parse`] to reject malformed bodies with a clear 400, and the processor
//! calls it again to get the domain objects it stores.

mod body;
pub mod model;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

pub use body::readable_body;
use model::{Contact, InboundMessage, MessagesValue, Payload, UnixTime};

use crate::domain::{self, BUSINESS_USER_NAME, Direction, Message, RECEIVED, StatusChange};

/// Why a body is not a webhook we can process; shown to the sender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// Everything a webhook body carries that we act on.
#[derive(Debug, Default)]
pub struct Parsed {
    pub messages: Vec<Message>,
    pub statuses: Vec<StatusChange>,
    /// Changes of other fields (`account_update`, ...): acknowledged, not stored.
    pub ignored: usize,
    /// `value.errors`: system-, app- or account-level errors from WhatsApp,
    /// for the logs.
    pub whatsapp_errors: Vec<Value>,
}

const NOT_A_WEBHOOK: &str = "body is not a WhatsApp webhook: expected {\"object\": ..., \"entry\": [...]} or {\"metaData\": {...}}";

/// Parses a raw webhook body (either envelope form).
pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() || e.to_string().contains("recursion limit") {
            PayloadError(format!("body is not valid JSON: {e}"))
        } else {
            PayloadError(NOT_A_WEBHOOK.to_owned())
        }
    })?;
    let envelope = payload
        .into_envelope()
        .ok_or_else(|| PayloadError(NOT_A_WEBHOOK.to_owned()))?;
    let mut parsed = Parsed::default();
    for (e, entry) in envelope.entry.into_iter().enumerate() {
        for (c, change) in entry.changes.into_iter().enumerate() {
            let path = format!("entry[{e}].changes[{c}].value");
            if change.field.as_deref().unwrap_or("messages") != "messages" {
                parsed.ignored += 1;
                continue;
            }
            let value = change.value.as_deref().map_or("null", RawValue::get);
            let value = serde_json::from_str::<MessagesValue>(value)
                .map_err(|err| PayloadError(format!("{path}: {err}")))?;
            parse_messages_value(&value, &path, &mut parsed)?;
        }
    }
    Ok(parsed)
}

fn parse_messages_value(
    value: &MessagesValue,
    path: &str,
    out: &mut Parsed,
) -> Result<(), PayloadError> {
    let metadata = value.metadata.clone().unwrap_or_default();
    let business_number = metadata
        .display_phone_number
        .as_deref()
        .map(digits)
        .unwrap_or_default();
    for (i, raw) in value.messages.iter().enumerate() {
        let path = format!("{path}.messages[{i}]");
        let message = InboundMessage::deserialize(raw)
            .map_err(|err| PayloadError(format!("{path}: {err}")))?;
        out.messages.push(build_message(
            message,
            raw,
            &value.contacts,
            &business_number,
            &metadata,
            &path,
        )?);
    }
    for status in &value.statuses {
        let recipient = digits(&status.recipient_id);
        out.statuses.push(StatusChange {
            message_id: status.id.clone(),
            status: status.status.clone(),
            timestamp: to_datetime(status.timestamp),
            conversation_id: domain::conversation_id(&recipient),
            errors: status.errors.clone(),
        });
    }
    out.whatsapp_errors.extend(value.errors.iter().cloned());
    Ok(())
}

fn build_message(
    message: InboundMessage,
    raw: &Value,
    contacts: &[Contact],
    business_number: &str,
    metadata: &model::Metadata,
    path: &str,
) -> Result<Message, PayloadError> {
    let from = message.from.as_deref().map(digits).unwrap_or_default();
    let first_contact = contacts
        .first()
        .and_then(|c| c.wa_id.as_deref())
        .map(digits);
    let outbound = !business_number.is_empty() && from == business_number;
    let customer = if outbound {
        first_contact.or_else(|| raw.get("to").and_then(Value::as_str).map(digits))
    } else {
        Some(from.clone())
            .filter(|f| !f.is_empty())
            .or(first_contact)
    }
    .filter(|c| !c.is_empty())
    .ok_or_else(|| {
        PayloadError(format!(
            "{path}: cannot tell the customer's WhatsApp id (no `from`, contact or `to`)"
        ))
    })?;

    let contact_name = contacts
        .iter()
        .find(|c| c.wa_id.as_deref().map(digits).as_deref() == Some(customer.as_str()))
        .or(contacts.first())
        .and_then(|c| c.profile.as_ref()?.name.clone())
        .filter(|n| !n.trim().is_empty());
    let timestamp = to_datetime(message.timestamp);
    let (direction, user_name, status, sender, recipient) = if outbound {
        (
            Direction::Outbound,
            BUSINESS_USER_NAME.to_owned(),
            "sent",
            from,
            customer.clone(),
        )
    } else {
        let name = contact_name
            .clone()
            .unwrap_or_else(|| format!("+{customer}"));
        (
            Direction::Inbound,
            name,
            RECEIVED,
            customer.clone(),
            business_number.to_owned(),
        )
    };
    let mut status_timestamps = BTreeMap::new();
    status_timestamps.insert(status.to_owned(), timestamp);
    Ok(Message {
        id: message.id.clone(),
        body: readable_body(&message.kind, raw),
        content: raw.get(&message.kind).cloned().map(storable),
        message_id: message.id,
        conversation_id: domain::conversation_id(&customer),
        wa_id: customer,
        from: sender,
        to: recipient,
        timestamp,
        kind: message.kind,
        status: status.to_owned(),
        user_name,
        direction,
        contact_name,
        phone_number_id: metadata.phone_number_id.clone(),
        context: message.context.map(storable),
        referral: message.referral.map(storable),
        errors: message.errors.map(storable),
        status_timestamps,
    })
}

/// Deepest nesting kept from WhatsApp's objects; MongoDB refuses documents
/// nested more than 100 levels, and real payloads are a few levels deep.
const MAX_KEPT_DEPTH: usize = 32;

/// Makes an object from a webhook safe to store anywhere: integers beyond
/// 64-bit signed range (BSON has no unsigned integers) become strings, and
/// anything nested deeper than [`MAX_KEPT_DEPTH`] is kept as JSON text.
fn storable(value: Value) -> Value {
    fn walk(value: Value, depth: usize) -> Value {
        match value {
            Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Value::String(n.to_string()),
            Value::Array(_) | Value::Object(_) if depth >= MAX_KEPT_DEPTH => {
                Value::String(value.to_string())
            }
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| walk(v, depth + 1)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, walk(v, depth + 1)))
                    .collect(),
            ),
            other => other,
        }
    }
    walk(value, 0)
}

/// WhatsApp ids are phone numbers; Meta sometimes writes them with `+`.
fn digits(id: &str) -> String {
    id.chars().filter(char::is_ascii_digit).collect()
}

fn to_datetime(UnixTime(seconds): UnixTime) -> DateTime<Utc> {
    // The range was checked when the timestamp was parsed.
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(value: Value) -> Vec<u8> {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn inbound_and_business_messages_land_in_the_customers_conversation() {
        let body = envelope(json!({
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "9"},
            "contacts": [{"wa_id": "4477", "profile": {"name": "Ann"}}],
            "messages": [
                {"from": "4477", "id": "wamid.in", "timestamp": "1754400000", "type": "text", "text": {"body": "hi"}},
                {"from": "15550001111", "id": "wamid.out", "timestamp": 1754400001, "type": "text", "text": {"body": "hello"}}
            ]
        }));
        let parsed = parse(&body).unwrap();
        let [inbound, outbound] = &parsed.messages[..] else {
            panic!("two messages expected")
        };
        assert_eq!(
            (inbound.conversation_id.as_str(), inbound.user_name.as_str()),
            ("conv_4477", "Ann")
        );
        assert_eq!(
            (inbound.direction, inbound.status.as_str()),
            (Direction::Inbound, "received")
        );
        assert_eq!(
            (
                outbound.conversation_id.as_str(),
                outbound.user_name.as_str()
            ),
            ("conv_4477", "Business")
        );
        assert_eq!(
            (outbound.direction, outbound.to.as_str()),
            (Direction::Outbound, "4477")
        );
        assert_eq!(outbound.timestamp.timestamp(), 1_754_400_001);
    }

    #[test]
    fn inbound_without_a_profile_name_falls_back_to_the_number() {
        let body = envelope(json!({
            "metadata": {"display_phone_number": "1555"},
            "messages": [{"from": "+4477", "id": "w", "timestamp": "1", "type": "system", "system": {"body": "changed"}}]
        }));
        let message = &parse(&body).unwrap().messages[0];
        assert_eq!(
            (message.user_name.as_str(), message.body.as_str()),
            ("+4477", "changed")
        );
    }

    #[test]
    fn statuses_and_the_sample_wrapper_are_understood() {
        let body = json!({"payload_type": "whatsapp_webhook", "metaData": {"entry": [{"changes": [{"field": "messages", "value": {
            "statuses": [{"id": "wamid.out", "status": "read", "timestamp": "1754400040", "recipient_id": "4477"}]
        }}]}]}});
        let parsed = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.statuses[0].conversation_id, "conv_4477");
        assert_eq!(parsed.statuses[0].status, "read");
    }

    #[test]
    fn a_metadata_field_that_is_no_envelope_leaves_the_plain_form() {
        let body = json!({"metaData": "from a proxy", "object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
            "statuses": [{"id": "wamid.out", "status": "sent", "timestamp": "1754400040", "recipient_id": "4477"}]
        }}]}]});
        let parsed = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.statuses.len(), 1);
        let neither = json!({"metaData": "from a proxy"});
        assert!(parse(neither.to_string().as_bytes()).is_err());
    }

    #[test]
    fn other_fields_are_acknowledged_not_refused() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "account_update", "value": {"event": "X"}}]}]});
        let parsed = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!((parsed.messages.len(), parsed.ignored), (0, 1));
    }

    #[test]
    fn kept_objects_are_storable_anywhere() {
        let deep = (0..60).fold(json!("bottom"), |inner, _| json!({ "x": inner }));
        let kept = storable(json!({"big": u64::MAX, "small": 7, "deep": deep}));
        assert_eq!(kept["big"], json!(u64::MAX.to_string()));
        assert_eq!(kept["small"], json!(7));
        let mut depth = 0;
        let mut node = &kept["deep"];
        while let Some(inner) = node.get("x") {
            node = inner;
            depth += 1;
        }
        assert!(
            depth < MAX_KEPT_DEPTH && node.is_string(),
            "deep objects are cut off as text"
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        assert!(parse(b"not json").unwrap_err().0.contains("not valid JSON"));
        assert!(
            parse(b"{\"hello\": 1}")
                .unwrap_err()
                .0
                .contains("not a WhatsApp webhook")
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(deep.as_bytes()).is_err());
        let no_id =
            envelope(json!({"messages": [{"from": "1", "timestamp": "1", "type": "text"}]}));
        assert!(parse(&no_id).unwrap_err().0.contains("messages[0]"));
        let bad_time = envelope(
            json!({"messages": [{"from": "1", "id": "w", "timestamp": "yesterday", "type": "text"}]}),
        );
        assert!(parse(&bad_time).unwrap_err().0.contains("timestamp"));
    }
}
