//! What the business sends through WhatsApp: a `POST /api/messages` body
//! read into a draft (the message to store and the Graph API request to
//! queue), whether it may be sent now (`window`), what is stored for it
//! (`message`), and how often a send is tried. Pure functions, no I/O.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::retry::Backoff;

mod message;
mod window;

pub use message::{Addressed, Outgoing, business_number, fresh_local_id, keyed_local_id, outgoing};
pub use window::{Refusal, may_send};

/// Longest text WhatsApp sends.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest media caption.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Media kinds the API sends, by link or by an uploaded media id.
pub const SENDABLE_MEDIA: [&str; 4] = ["image", "document", "audio", "video"];
/// Attempts of a send before a retryable error counts as final.
pub const MAX_ATTEMPTS: u32 = 10;

/// A message the business sends, read from the request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// WhatsApp's message type: `text`, `template`, `reaction`, or a media kind.
    pub kind: String,
    /// The type's object in the Graph API request (and stored as content).
    pub content: Value,
    /// What the conversation shows: the text, caption, emoji or template name.
    pub body: String,
    /// The message replied to (a WhatsApp id), if any.
    pub reply_to: Option<String>,
}

/// Why a body is not a message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

impl Draft {
    /// Reads a request body: `message` (or `body`) for a text, or exactly
    /// one of `template`, `reaction`, `image`, `document`, `audio`, `video`;
    /// `replyTo` (or `context.messageId`) for a reply.
    pub fn from_body(fields: &Map<String, Value>) -> Result<Self, Invalid> {
        let present = |name: &str| fields.get(name).is_some_and(|v| !v.is_null());
        let mut kinds: Vec<&str> = ["template", "reaction"]
            .into_iter()
            .chain(SENDABLE_MEDIA)
            .filter(|k| present(k))
            .collect();
        if present("message") || present("body") {
            kinds.push("text");
        }
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => {
                return invalid(
                    "message is required (or body, template, reaction, image, document, audio, video)",
                );
            }
            _ => {
                return invalid(format!(
                    "send one kind of message, not {}",
                    kinds.join(" and ")
                ));
            }
        };
        let reply_to = reply_to(fields)?;
        let (content, body) = match kind {
            "text" => text(fields)?,
            "template" => template(&fields["template"])?,
            "reaction" => reaction(&fields["reaction"])?,
            media => self::media(media, &fields[media])?,
        };
        if reply_to.is_some() && kind == "reaction" {
            return invalid("a reaction cannot be a reply");
        }
        Ok(Self {
            kind: kind.to_owned(),
            content,
            body,
            reply_to,
        })
    }

    /// Templates may be sent at any time; anything else only within 24
    /// hours of the customer's last message.
    pub fn needs_open_window(&self) -> bool {
        self.kind != "template"
    }

    /// The Graph API request that sends it to `wa_id`; `tracking` comes
    /// back in the status webhooks (`biz_opaque_callback_data`).
    pub fn request(&self, wa_id: &str, tracking: &str) -> Value {
        let mut request = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": wa_id,
            "type": self.kind,
            "biz_opaque_callback_data": tracking,
        });
        request[self.kind.as_str()] = self.content.clone();
        if let Some(id) = &self.reply_to {
            request["context"] = json!({"message_id": id});
        }
        request
    }

    /// The message ids it refers to (reaction target, reply), for the API
    /// to resolve local ids into WhatsApp's.
    pub fn referenced_id_mut(&mut self) -> Vec<&mut String> {
        let mut ids = Vec::new();
        if let Some(id) = self.reply_to.as_mut() {
            ids.push(id);
        }
        if self.kind == "reaction"
            && let Some(Value::String(id)) = self.content.get_mut("message_id")
        {
            ids.push(id);
        }
        ids
    }
}

fn string<'v>(value: &'v Value, name: &str) -> Result<Option<&'v str>, Invalid> {
    match value.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => invalid(format!("{name} must be a string")),
    }
}

fn reply_to(fields: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    let object = Value::Object(fields.clone());
    let direct = string(&object, "replyTo")?;
    let nested = match fields.get("context") {
        None | Some(Value::Null) => None,
        Some(context @ Value::Object(_)) => {
            string(context, "messageId")?.or(string(context, "message_id")?)
        }
        Some(_) => return invalid("context must be an object with messageId"),
    };
    let id = direct.or(nested).map(str::trim).filter(|id| !id.is_empty());
    if let Some(id) = id
        && id.len() > 256
    {
        return invalid("replyTo is too long");
    }
    Ok(id.map(str::to_owned))
}

fn checked_text(text: &str, name: &str, max: usize) -> Result<String, Invalid> {
    if text.trim().is_empty() {
        return invalid(format!("{name} must not be empty"));
    }
    if text.chars().count() > max {
        return invalid(format!("{name} must be at most {max} characters"));
    }
    Ok(text.to_owned())
}

fn text(fields: &Map<String, Value>) -> Result<(Value, String), Invalid> {
    let object = Value::Object(fields.clone());
    let text = match (string(&object, "message")?, string(&object, "body")?) {
        (Some(text), _) | (None, Some(text)) => checked_text(text, "message", MAX_TEXT_CHARS)?,
        (None, None) => return invalid("message is required (or body)"),
    };
    let mut content = json!({"body": text});
    match fields.get("previewUrl") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(preview)) => content["preview_url"] = (*preview).into(),
        Some(_) => return invalid("previewUrl must be true or false"),
    }
    Ok((content, text))
}

fn template(value: &Value) -> Result<(Value, String), Invalid> {
    let Value::Object(_) = value else {
        return invalid("template must be an object: {name, language: {code}, components}");
    };
    let name = string(value, "name")?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| Invalid("template.name is required".to_owned()))?;
    if name.len() > 512 {
        return invalid("template.name is too long");
    }
    let code = match value.get("language") {
        Some(Value::String(code)) => code.as_str(),
        Some(language @ Value::Object(_)) => string(language, "code")?.unwrap_or_default(),
        _ => "",
    };
    if code.trim().is_empty() {
        return invalid("template.language.code is required (e.g. en_US)");
    }
    let mut content = json!({"name": name, "language": {"code": code}});
    match value.get("components") {
        None | Some(Value::Null) => {}
        Some(components @ Value::Array(_)) => content["components"] = components.clone(),
        Some(_) => return invalid("template.components must be an array"),
    }
    Ok((content, format!("[template: {name}]")))
}

fn reaction(value: &Value) -> Result<(Value, String), Invalid> {
    let Value::Object(_) = value else {
        return invalid("reaction must be an object: {messageId, emoji}");
    };
    let target = string(value, "messageId")?
        .or(string(value, "message_id")?)
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| Invalid("reaction.messageId is required".to_owned()))?;
    // An empty emoji removes the reaction.
    let emoji = string(value, "emoji")?.unwrap_or_default();
    if emoji.chars().count() > 16 {
        return invalid("reaction.emoji must be one emoji");
    }
    Ok((
        json!({"message_id": target, "emoji": emoji}),
        emoji.to_owned(),
    ))
}

fn media(kind: &str, value: &Value) -> Result<(Value, String), Invalid> {
    let Value::Object(_) = value else {
        return invalid(format!("{kind} must be an object: {{link or id, caption}}"));
    };
    let link = string(value, "link")?.filter(|l| !l.is_empty());
    let id = string(value, "id")?.filter(|i| !i.is_empty());
    let mut content = match (link, id) {
        (Some(link), None) => {
            if !(link.starts_with("https://") || link.starts_with("http://")) {
                return invalid(format!("{kind}.link must be an http(s) URL"));
            }
            json!({"link": link})
        }
        (None, Some(id)) => {
            if !id.bytes().all(|b| b.is_ascii_alphanumeric()) || id.len() > 64 {
                return invalid(format!("{kind}.id must be a media id from POST /api/media"));
            }
            json!({"id": id})
        }
        _ => return invalid(format!("{kind} needs exactly one of link and id")),
    };
    let caption = match string(value, "caption")? {
        Some(_) if kind == "audio" => return invalid("audio has no caption"),
        Some(caption) => checked_text(caption, "caption", MAX_CAPTION_CHARS)?,
        None => String::new(),
    };
    if !caption.is_empty() {
        content["caption"] = caption.clone().into();
    }
    if kind == "document"
        && let Some(filename) = string(value, "filename")?
    {
        content["filename"] = filename.into();
    }
    Ok((content, caption))
}

/// The local ids (`local...`: messages of ours not accepted by WhatsApp
/// when the request was made) a Graph request names: a reply's context, a
/// reaction's target.
pub fn local_references(request: &Value) -> Vec<String> {
    [
        request.pointer("/context/message_id"),
        request.pointer("/reaction/message_id"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_str)
    .filter(|id| id.starts_with("local."))
    .map(str::to_owned)
    .collect()
}

/// Replaces a referenced id (see [`local_references`]) with `new`.
pub fn replace_reference(request: &mut Value, old: &str, new: &str) {
    for path in ["/context/message_id", "/reaction/message_id"] {
        if let Some(id) = request.pointer_mut(path)
            && id.as_str() == Some(old)
        {
            *id = Value::String(new.to_owned());
        }
    }
}

/// How long after a failed attempt a send is tried again: doubling from
/// 1 s up to 5 minutes, jittered so that sends that failed together (an
/// outage of WhatsApp's) spread out. The wait is stored as the send's due
/// time, so whichever sender comes next honours it.
pub const SEND_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(body: Value) -> Result<Draft, Invalid> {
        match body {
            Value::Object(fields) => Draft::from_body(&fields),
            _ => invalid("not an object"),
        }
    }

    #[test]
    fn a_text_with_a_reply_becomes_a_graph_text_request_with_context() {
        let d = draft(json!({"message": "hello", "replyTo": "wamid.A"}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(d.body, "hello");
        assert_eq!(
            d.request("4477", "local.1"),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "4477",
                   "type": "text", "text": {"body": "hello"}, "context": {"message_id": "wamid.A"},
                   "biz_opaque_callback_data": "local.1"})
        );
        assert!(d.needs_open_window());
    }

    #[test]
    fn templates_reactions_and_media_have_their_graph_shapes() {
        let t = draft(json!({"template": {"name": "hello_world", "language": {"code": "en_US"}}}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            t.content,
            json!({"name": "hello_world", "language": {"code": "en_US"}})
        );
        assert!(!t.needs_open_window());
        let r = draft(json!({"reaction": {"messageId": "wamid.B", "emoji": "👍"}}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.content, json!({"message_id": "wamid.B", "emoji": "👍"}));
        let i = draft(json!({"image": {"link": "https://example.com/a.jpg", "caption": "look"}}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            i.content,
            json!({"link": "https://example.com/a.jpg", "caption": "look"})
        );
        assert_eq!(i.body, "look");
        let d = draft(json!({"document": {"id": "1234", "filename": "a.pdf"}}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(d.content, json!({"id": "1234", "filename": "a.pdf"}));
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        for (body, expected) in [
            (json!({}), "message is required"),
            (json!({"message": "  "}), "must not be empty"),
            (json!({"message": "a".repeat(4097)}), "at most 4096"),
            (
                json!({"message": "a", "template": {"name": "x"}}),
                "one kind",
            ),
            (json!({"template": {"name": "x"}}), "language.code"),
            (json!({"image": {"link": "ftp://x"}}), "http(s)"),
            (
                json!({"image": {"link": "https://x", "id": "1"}}),
                "exactly one",
            ),
            (json!({"audio": {"id": "1", "caption": "no"}}), "no caption"),
            (json!({"reaction": {"emoji": "x"}}), "messageId"),
            (json!({"message": 5}), "must be a string"),
        ] {
            let error = draft(body.clone()).err().map(|e| e.0).unwrap_or_default();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn local_references_are_found_and_replaced() {
        let mut reply = json!({"type": "text", "context": {"message_id": "local.1"}});
        assert_eq!(local_references(&reply), ["local.1"]);
        replace_reference(&mut reply, "local.1", "wamid.X");
        assert_eq!(reply["context"]["message_id"], "wamid.X");
        assert!(local_references(&reply).is_empty());
        let reaction =
            json!({"type": "reaction", "reaction": {"message_id": "local.2", "emoji": "👍"}});
        assert_eq!(local_references(&reaction), ["local.2"]);
    }

    #[test]
    fn sends_are_retried_doubling_from_a_second_up_to_five_minutes() {
        assert_eq!(SEND_RETRY.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(SEND_RETRY.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(SEND_RETRY.delay(40, 0.0), Duration::from_secs(300));
        assert_eq!(SEND_RETRY.delay(2, 1.0), Duration::from_secs(1));
    }
}
