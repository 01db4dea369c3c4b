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
use model::{Contact, InboundMessage, MessagesValue, Payload, Status, UnixTime};

use crate::domain::{
    self, BUSINESS_USER_NAME, Direction, Message, RECEIVED, StatusChange, is_local_id,
};

/// Why a body is not a webhook we can process; shown to the sender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// Everything a webhook body carries that we act on.
#[derive(Debug, Default)]
pub struct Parsed {
    pub messages: Vec<Message>,
    pub statuses: Vec<StatusChange>,
    /// Malformed items (a message or status without its id, parties or
    /// timestamp, ...): refused alone, with the reason; the others stand.
    pub rejected: Vec<Rejected>,
    /// Changes of other fields (`account_update`, ...): acknowledged, not stored.
    pub ignored: usize,
    /// `value.errors`: system-, app- or account-level errors from WhatsApp,
    /// for the logs.
    pub whatsapp_errors: Vec<Value>,
}

/// A malformed item of a webhook, as it came, and why it was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Where in the envelope: `entry[0].changes[0].value.messages[2]`.
    pub path: String,
    pub reason: String,
    pub item: Value,
}

/// Longest message id kept: an id must fit where the API takes it back
/// (`beforeId` of a page).
pub const MAX_ID_LEN: usize = 256;

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
            let raw = change.value.as_deref().map_or("null", RawValue::get);
            match serde_json::from_str::<MessagesValue>(raw) {
                Ok(value) => parse_messages_value(&value, &path, &mut parsed),
                Err(err) => parsed.rejected.push(Rejected {
                    reason: format!("not a messages value: {err}"),
                    item: serde_json::from_str(raw)
                        .map(storable)
                        .unwrap_or(Value::Null),
                    path,
                }),
            }
        }
    }
    Ok(parsed)
}

fn parse_messages_value(value: &MessagesValue, path: &str, out: &mut Parsed) {
    let metadata = value.metadata.clone().unwrap_or_default();
    let business_number = metadata
        .display_phone_number
        .as_deref()
        .map(digits)
        .unwrap_or_default();
    let mut reject = |path: String, reason: String, item: &Value| {
        out.rejected.push(Rejected {
            path,
            reason,
            item: storable(item.clone()),
        });
    };
    // A number id must fit in a conversation id; its items are refused
    // otherwise (Meta's ids are digits).
    let number = match metadata.phone_number_id.as_deref() {
        Some(id) if !crate::numbers::is_number_id(id) => Err(format!(
            "metadata.phone_number_id {id:?} is not a phone number id (1 to 32 digits)"
        )),
        id => Ok(id.map(str::to_owned)),
    };
    let mut messages = Vec::new();
    for (i, raw) in value.messages.iter().enumerate() {
        let path = format!("{path}.messages[{i}]");
        let built = number.clone().and_then(|number| {
            InboundMessage::deserialize(raw)
                .map_err(|err| err.to_string())
                .and_then(|message| {
                    build_message(message, raw, &value.contacts, &business_number, number)
                })
        });
        match built {
            Ok(message) => messages.push(message),
            Err(reason) => reject(path, reason, raw),
        }
    }
    let mut statuses = Vec::new();
    for (i, raw) in value.statuses.iter().enumerate() {
        let path = format!("{path}.statuses[{i}]");
        let change = number.clone().and_then(|number| {
            Status::deserialize(raw)
                .map_err(|err| err.to_string())
                .and_then(|status| status_change(status, number))
        });
        match change {
            Ok(change) => statuses.push(change),
            Err(reason) => reject(path, reason, raw),
        }
    }
    out.messages.extend(messages);
    out.statuses.extend(statuses);
    out.whatsapp_errors.extend(value.errors.iter().cloned());
}

/// A status item, checked: its id reachable, its value a status name, its
/// recipient a customer.
fn status_change(status: Status, number: Option<String>) -> Result<StatusChange, String> {
    check_id(&status.id)?;
    if !domain::is_safe_status_name(&status.status) {
        return Err(format!(
            "status {:?} is not a status name (lowercase letters and _, at most 32)",
            status.status
        ));
    }
    let conversation_id = domain::conversation_id(&digits(&status.recipient_id));
    if !domain::is_conversation_id(&conversation_id) {
        return Err(format!(
            "recipient_id {:?} is not a WhatsApp id (1 to 32 digits)",
            status.recipient_id
        ));
    }
    Ok(StatusChange {
        message_id: status.id,
        status: status.status.into(),
        timestamp: to_datetime(status.timestamp),
        conversation_id,
        phone_number_id: number,
        errors: status.errors.map(storable),
        // Only our own local ids: anything else names no message of ours.
        callback: status
            .biz_opaque_callback_data
            .as_ref()
            .and_then(Value::as_str)
            .filter(|c| is_local_id(c))
            .map(str::to_owned),
    })
}

/// A message id is kept only if the API can take it back.
fn check_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("id is empty".to_owned());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is longer than {MAX_ID_LEN} bytes"));
    }
    Ok(())
}

fn build_message(
    message: InboundMessage,
    raw: &Value,
    contacts: &[Contact],
    business_number: &str,
    number: Option<String>,
) -> Result<Message, String> {
    check_id(&message.id)?;
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
        "cannot tell the customer's WhatsApp id (no `from`, contact or `to`)".to_owned()
    })?;
    if !domain::is_conversation_id(&domain::conversation_id(&customer)) {
        return Err(format!(
            "the customer's WhatsApp id {customer:?} is longer than 32 digits"
        ));
    }

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
        // `"text": null` is no content: kept as `Some(null)` it would read
        // back as `None` from JSON and the store.
        content: raw
            .get(&message.kind)
            .filter(|content| !content.is_null())
            .cloned()
            .map(storable),
        message_id: message.id,
        conversation_id: domain::conversation_id(&customer),
        wa_id: customer,
        from: sender,
        to: recipient,
        timestamp,
        kind: message.kind,
        status: status.into(),
        user_name,
        direction,
        contact_name,
        phone_number_id: number,
        business_number: Some(business_number.to_owned()).filter(|b| !b.is_empty()),
        context: message.context.map(storable),
        referral: message.referral.map(storable),
        errors: message.errors.map(storable),
        status_timestamps,
        client_message_id: None,
        media_url: None,
    }
    .with_media_url())
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
    fn a_null_type_object_is_no_content() {
        let body = envelope(json!({"messages": [
            {"from": "4477", "id": "w", "timestamp": "1", "type": "text", "text": null}
        ]}));
        let message = &parse(&body).unwrap().messages[0];
        assert_eq!(
            (message.content.as_ref(), message.body.as_str()),
            (None, "")
        );
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
    fn one_malformed_item_is_refused_alone_and_kept_with_its_reason() {
        let long_id = "w".repeat(MAX_ID_LEN + 1);
        let body = envelope(json!({
            "metadata": {"display_phone_number": "1555"},
            "messages": [
                {"from": "4477", "id": "good.1", "timestamp": "1", "type": "text", "text": {"body": "a"}},
                {"from": "4477", "timestamp": "2", "type": "text"},
                {"from": "4477", "id": "good.2", "timestamp": "3", "type": "text", "text": {"body": "b"}},
                {"from": "4477", "id": "", "timestamp": "4", "type": "text"},
                {"from": "4477", "id": long_id, "timestamp": "5", "type": "text"},
                {"from": "1".repeat(33), "id": "w.6", "timestamp": "6", "type": "text"}
            ],
            "statuses": [
                {"id": "good.1", "status": "read", "timestamp": "7", "recipient_id": "4477"},
                {"id": "good.1", "status": "Read!", "timestamp": "8", "recipient_id": "4477"},
                {"id": "good.1", "status": "read", "timestamp": "9"},
                {"id": "good.1", "status": "read", "timestamp": "10", "recipient_id": ""}
            ]
        }));
        let parsed = parse(&body).unwrap();
        let ids: Vec<&str> = parsed
            .messages
            .iter()
            .map(|m| m.message_id.as_str())
            .collect();
        assert_eq!(ids, ["good.1", "good.2"]);
        assert_eq!(parsed.statuses.len(), 1);
        let rejected: Vec<&str> = parsed.rejected.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            rejected
                .iter()
                .map(|p| p.rsplit('.').next().unwrap_or_default())
                .collect::<Vec<_>>(),
            [
                "messages[1]",
                "messages[3]",
                "messages[4]",
                "messages[5]",
                "statuses[1]",
                "statuses[2]",
                "statuses[3]"
            ]
        );
        assert!(
            parsed
                .rejected
                .iter()
                .all(|r| !r.reason.is_empty() && r.item.is_object())
        );
        // A change whose value is not a messages value at all is one item.
        let broken = envelope(json!({"messages": "not a list"}));
        let parsed = parse(&broken).unwrap();
        assert_eq!(parsed.rejected.len(), 1);
        assert!(parsed.rejected[0].path.ends_with(".value"));
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
        // Items are refused alone, with their reason.
        let no_id =
            envelope(json!({"messages": [{"from": "1", "timestamp": "1", "type": "text"}]}));
        let parsed = parse(&no_id).unwrap();
        assert!(parsed.messages.is_empty());
        assert!(parsed.rejected[0].path.ends_with("messages[0]"));
        assert!(parsed.rejected[0].reason.contains("id"));
        let bad_time = envelope(
            json!({"messages": [{"from": "1", "id": "w", "timestamp": "yesterday", "type": "text"}]}),
        );
        assert!(
            parse(&bad_time).unwrap().rejected[0]
                .reason
                .contains("timestamp")
        );
    }
}
