//! The readable `body` of every message type, as the contract lists them.

use serde_json::Value;

/// A reaction without an emoji: the customer took theirs back.
pub const REACTION_REMOVED: &str = "[Reaction removed]";

/// Text shown for a message in a chat list or bubble.
pub fn readable_body(kind: &str, message: &Value) -> String {
    let content = message.get(kind).unwrap_or(&Value::Null);
    let text = |key: &str| {
        content
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match kind {
        "text" => text("body").unwrap_or_default().to_owned(),
        "image" => caption_or(content, "[Image]"),
        "video" => caption_or(content, "[Video]"),
        "audio" => caption_or(content, "[Audio]"),
        "sticker" => "[Sticker]".to_owned(),
        "document" => match text("caption") {
            Some(caption) => caption.to_owned(),
            None => format!("[Document: {}]", text("filename").unwrap_or("file")),
        },
        "location" => location_body(content),
        "contacts" => contacts_body(content),
        "interactive" => interactive_body(content),
        "button" => text("text")
            .or_else(|| text("payload"))
            .unwrap_or("[Button]")
            .to_owned(),
        "reaction" => text("emoji").unwrap_or(REACTION_REMOVED).to_owned(),
        "order" => order_body(content),
        "system" => text("body").unwrap_or("[System message]").to_owned(),
        _ => "[Unsupported]".to_owned(),
    }
}

fn caption_or(content: &Value, placeholder: &str) -> String {
    match content.get("caption").and_then(Value::as_str) {
        Some(caption) if !caption.is_empty() => caption.to_owned(),
        _ => placeholder.to_owned(),
    }
}

fn location_body(content: &Value) -> String {
    let field = |key: &str| {
        content
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(name) = field("name") {
        return match field("address") {
            Some(address) => format!("📍 {name}, {address}"),
            None => format!("📍 {name}"),
        };
    }
    let coordinate = |key: &str| content.get(key).and_then(Value::as_f64);
    match (coordinate("latitude"), coordinate("longitude")) {
        (Some(lat), Some(lon)) => format!("📍 {lat}, {lon}"),
        _ => "[Location]".to_owned(),
    }
}

fn contacts_body(content: &Value) -> String {
    let names: Vec<&str> = content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|card| {
            let name = card.get("name")?;
            name.get("formatted_name")
                .or_else(|| name.get("first_name"))
                .and_then(Value::as_str)
        })
        .collect();
    if names.is_empty() {
        "[Contact]".to_owned()
    } else {
        format!("👤 {}", names.join(", "))
    }
}

fn interactive_body(content: &Value) -> String {
    let reply_kind = content
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reply = content.get(reply_kind).unwrap_or(&Value::Null);
    let field = |key: &str| {
        reply
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    field("title")
        .or_else(|| field("body"))
        .or_else(|| field("name"))
        .unwrap_or("[Interactive]")
        .to_owned()
}

fn order_body(content: &Value) -> String {
    let items = content
        .get("product_items")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    match content
        .get("text")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(text) => format!("🛒 Order ({items} items): {text}"),
        None => format!("🛒 Order ({items} items)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_has_a_readable_body() {
        let cases = [
            (json!({"type":"text","text":{"body":"hi"}}), "hi"),
            (json!({"type":"image","image":{"id":"1"}}), "[Image]"),
            (json!({"type":"image","image":{"caption":"look"}}), "look"),
            (json!({"type":"video","video":{}}), "[Video]"),
            (json!({"type":"audio","audio":{"voice":true}}), "[Audio]"),
            (
                json!({"type":"document","document":{"filename":"a.pdf"}}),
                "[Document: a.pdf]",
            ),
            (json!({"type":"sticker","sticker":{}}), "[Sticker]"),
            (
                json!({"type":"location","location":{"latitude":1.5,"longitude":2.0}}),
                "📍 1.5, 2",
            ),
            (
                json!({"type":"location","location":{"name":"Cafe","address":"Main St"}}),
                "📍 Cafe, Main St",
            ),
            (
                json!({"type":"contacts","contacts":[{"name":{"formatted_name":"Ann"}}]}),
                "👤 Ann",
            ),
            (
                json!({"type":"interactive","interactive":{"type":"button_reply","button_reply":{"title":"Yes"}}}),
                "Yes",
            ),
            (
                json!({"type":"button","button":{"text":"Stop","payload":"STOP"}}),
                "Stop",
            ),
            (json!({"type":"reaction","reaction":{"emoji":"👍"}}), "👍"),
            (
                json!({"type":"reaction","reaction":{}}),
                "[Reaction removed]",
            ),
            (
                json!({"type":"order","order":{"product_items":[{},{}]}}),
                "🛒 Order (2 items)",
            ),
            (
                json!({"type":"unsupported","unsupported":{"type":"poll"}}),
                "[Unsupported]",
            ),
            (json!({"type":"poll","poll":{}}), "[Unsupported]"),
        ];
        for (message, expected) in cases {
            let kind = message["type"].as_str().unwrap_or_default();
            assert_eq!(readable_body(kind, &message), expected, "{message}");
        }
    }
}
