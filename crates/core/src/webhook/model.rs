//! Serde types for what Meta posts to the webhook.
//!
//! Two envelope forms are accepted: Meta's own
//! `{"object": "whatsapp_business_account", "entry": [...]}` and the sample
//! files' wrapper `{"metaData": {<Meta's envelope>}, ...}`.
//!
//! The types are deliberately lenient: every field Meta may omit is optional,
//! and a message keeps its type-specific object verbatim, so a type we have
//! never heard of is stored rather than refused.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Meta's envelope, or the sample-file wrapper around it.
///
/// One struct with optional fields rather than an untagged enum: an untagged
/// enum buffers the whole document before choosing, which cost the gateway
/// a fifth of its CPU.
#[derive(Debug, Deserialize)]
pub struct Payload {
    /// Kept raw: a `metaData` that is not an envelope falls back to the
    /// plain form, as it always did.
    #[serde(rename = "metaData", default)]
    meta_data: Option<Box<RawValue>>,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    entry: Option<Vec<Entry>>,
}

impl Payload {
    /// The envelope: the wrapped one if there is a wrapper.
    pub fn into_envelope(self) -> Option<Envelope> {
        let wrapped = self
            .meta_data
            .and_then(|raw| serde_json::from_str::<Envelope>(raw.get()).ok());
        wrapped.or_else(|| {
            self.entry.map(|entry| Envelope {
                object: self.object,
                entry,
            })
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub object: Option<String>,
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub field: Option<String>,
    /// Kept as raw JSON text: only `field == "messages"` is interpreted, and
    /// other fields (`account_update`, ...) have values of their own shapes.
    #[serde(default)]
    pub value: Option<Box<RawValue>>,
}

/// `value` of a `messages` change.
#[derive(Debug, Default, Deserialize)]
pub struct MessagesValue {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub messages: Vec<Value>,
    /// Each read on its own ([`Status`]): one malformed status is rejected
    /// alone.
    #[serde(default)]
    pub statuses: Vec<Value>,
    #[serde(default)]
    pub errors: Vec<Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub display_phone_number: Option<String>,
    #[serde(default)]
    pub phone_number_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub name: Option<String>,
}

/// One entry of `value.messages[]`. The type-specific object (`text`,
/// `image`, ...) stays in the raw JSON and is read by [`super::body`].
#[derive(Debug, Deserialize)]
pub struct InboundMessage {
    pub id: String,
    #[serde(default)]
    pub from: Option<String>,
    pub timestamp: UnixTime,
    #[serde(rename = "type", default = "unknown_type")]
    pub kind: String,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub referral: Option<Value>,
    #[serde(default)]
    pub errors: Option<Value>,
}

fn unknown_type() -> String {
    "unknown".to_owned()
}

/// One entry of `value.statuses[]`.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub id: String,
    pub status: String,
    pub timestamp: UnixTime,
    pub recipient_id: String,
    #[serde(default)]
    pub errors: Option<Value>,
    /// What the send carried as `biz_opaque_callback_data` (our local id).
    #[serde(default)]
    pub biz_opaque_callback_data: Option<Value>,
}

/// Meta sends Unix seconds as a string; accept a number too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixTime(pub i64);

impl<'de> Deserialize<'de> for UnixTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        let seconds = match Raw::deserialize(d)? {
            Raw::Number(n) => n,
            Raw::Text(s) => s.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!("timestamp {s:?} is not Unix seconds"))
            })?,
        };
        // Anything outside years 1970..9999 is not a WhatsApp timestamp.
        if !(0..=253_402_300_799).contains(&seconds) {
            return Err(serde::de::Error::custom(format!(
                "timestamp {seconds} is out of range"
            )));
        }
        Ok(UnixTime(seconds))
    }
}
