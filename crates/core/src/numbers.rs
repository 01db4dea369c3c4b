//! Several business numbers in one deployment: which conversation a
//! message belongs to, and what a token scoped to numbers may see.
//!
//! A conversation is one customer with one business number (the webhook's
//! `metadata.phone_number_id`). The deployment's *home* number is the first
//! number it ever stored anything for (or, for data stored before numbers
//! existed, the default number): its conversations keep the original ids
//! `conv_<wa_id>`, so a deployment that only ever serves one number looks
//! exactly as before. Every other number's conversations are
//! `conv_<wa_id>_<phone_number_id>`: digits and `_`, URL-safe, and stable,
//! since the home number never changes once recorded.
//!
//! The number of a conversation can thus be read off its id (given the home
//! number), which is what scoping rests on: no store read is needed to tell
//! whether a token may see a conversation, a message or an event.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::domain::{Message, StatusChange};

/// Longest phone number id (or WhatsApp id) kept, in digits.
pub const MAX_DIGITS: usize = 32;

/// True for a phone number id: 1 to 32 ASCII digits (Meta's are ~15).
pub fn is_number_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DIGITS && id.bytes().all(|b| b.is_ascii_digit())
}

/// The conversation of customer `wa_id` with business number `number`
/// (`None`: a webhook without metadata, counted as the home number's).
pub fn conversation_id(wa_id: &str, number: Option<&str>, home: Option<&str>) -> String {
    match number {
        Some(number) if home.is_some_and(|home| home != number) => {
            format!("conv_{wa_id}_{number}")
        }
        _ => format!("conv_{wa_id}"),
    }
}

/// `(wa_id, number)` of a conversation id: `number` is `None` for the home
/// number's `conv_<wa_id>`; `None` altogether for anything else.
pub fn parse_conversation_id(id: &str) -> Option<(&str, Option<&str>)> {
    let rest = id.strip_prefix("conv_")?;
    let (wa_id, number) = match rest.split_once('_') {
        Some((wa_id, number)) => (wa_id, Some(number)),
        None => (rest, None),
    };
    (is_number_id(wa_id) && number.is_none_or(is_number_id)).then_some((wa_id, number))
}

/// The business number a conversation belongs to: the one in its id, or
/// the home number for `conv_<wa_id>`.
pub fn number_of<'a>(conversation_id: &'a str, home: Option<&'a str>) -> Option<&'a str> {
    match parse_conversation_id(conversation_id)? {
        (_, Some(number)) => Some(number),
        (_, None) => home,
    }
}

/// The stats documents a conversation's messages are counted in: `""` for
/// the home number (the documents that existed before numbers did, so
/// counters of data stored then stay where they are), else its number.
pub fn stats_number(conversation_id: &str) -> &str {
    parse_conversation_id(conversation_id)
        .and_then(|(_, number)| number)
        .unwrap_or("")
}

/// The business number whose counters the stats documents of stats
/// number `key` hold (see [`stats_number`]): the home number for `""`.
pub fn stats_owner<'a>(key: &'a str, home: Option<&'a str>) -> Option<&'a str> {
    if key.is_empty() { home } else { Some(key) }
}

/// The stats numbers whose counters count for these business numbers:
/// each one's own, and `""` too for the home number (the inverse of
/// [`stats_owner`]).
pub fn stats_numbers<'a>(numbers: &'a [String], home: Option<&str>) -> BTreeSet<&'a str> {
    numbers
        .iter()
        .map(String::as_str)
        .filter(|number| !number.is_empty())
        .flat_map(|number| [Some(number), (home == Some(number)).then_some("")])
        .flatten()
        .collect()
}

/// The number a batch's first item came for: what a deployment with no
/// home number yet records as home.
pub fn first_number<'a>(messages: &'a [Message], statuses: &'a [StatusChange]) -> Option<&'a str> {
    messages
        .iter()
        .map(|m| m.phone_number_id.as_deref())
        .chain(statuses.iter().map(|s| s.phone_number_id.as_deref()))
        .flatten()
        .next()
}

/// Gives webhook messages and statuses the conversation of their number.
/// The webhook parser names `conv_<wa_id>`; this adds the number when it
/// is not the home number.
pub fn route(messages: &mut [Message], statuses: &mut [StatusChange], home: Option<&str>) {
    for message in messages {
        message.conversation_id =
            conversation_id(&message.wa_id, message.phone_number_id.as_deref(), home);
    }
    for status in statuses {
        if let Some((wa_id, None)) = parse_conversation_id(&status.conversation_id) {
            status.conversation_id =
                conversation_id(wa_id, status.phone_number_id.as_deref(), home);
        }
    }
}

/// What a token may see: every number, or only some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    All,
    Numbers(BTreeSet<String>),
}

impl Scope {
    pub fn allows_number(&self, number: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Numbers(numbers) => number.is_some_and(|n| numbers.contains(n)),
        }
    }

    /// Whether a conversation (by id) is visible: its number is one of the
    /// scope's. A malformed id is visible to nobody scoped.
    pub fn allows_conversation(&self, conversation_id: &str, home: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Numbers(_) => self.allows_number(number_of(conversation_id, home)),
        }
    }

    /// The numbers a listing is narrowed to: `None` for everything. A
    /// requested number outside the scope narrows to nothing.
    pub fn narrow(&self, requested: Option<&str>) -> Option<Vec<String>> {
        match (self, requested) {
            (Self::All, None) => None,
            (Self::All, Some(number)) => Some(vec![number.to_owned()]),
            (Self::Numbers(numbers), None) => Some(numbers.iter().cloned().collect()),
            (Self::Numbers(numbers), Some(number)) => Some(
                numbers
                    .contains(number)
                    .then(|| number.to_owned())
                    .into_iter()
                    .collect(),
            ),
        }
    }
}

/// A business number the deployment serves, as `GET /api/numbers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BusinessNumber {
    pub phone_number_id: String,
    /// Its display number (digits), as webhooks give it; `null` until a
    /// webhook came for it.
    pub business_number: Option<String>,
    pub conversations: i64,
    pub unread_count: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_home_number_keeps_the_original_ids() {
        assert_eq!(conversation_id("4477", Some("9"), Some("9")), "conv_4477");
        assert_eq!(conversation_id("4477", None, Some("9")), "conv_4477");
        assert_eq!(conversation_id("4477", Some("9"), None), "conv_4477");
        assert_eq!(conversation_id("4477", Some("8"), Some("9")), "conv_4477_8");
    }

    #[test]
    fn a_conversations_number_is_read_off_its_id() {
        assert_eq!(number_of("conv_4477", Some("9")), Some("9"));
        assert_eq!(number_of("conv_4477_8", Some("9")), Some("8"));
        assert_eq!(number_of("conv_4477", None), None);
        for bad in [
            "conv_",
            "conv_4477_",
            "conv__8",
            "conv_44a",
            "conv_1_2_3",
            "x_1",
        ] {
            assert_eq!(parse_conversation_id(bad), None, "{bad}");
        }
        assert_eq!(stats_number("conv_4477"), "");
        assert_eq!(stats_number("conv_4477_8"), "8");
    }

    #[test]
    fn the_home_numbers_counters_are_those_of_stats_number_empty() {
        let numbers = ["9".to_owned(), "8".to_owned()];
        assert_eq!(
            stats_numbers(&numbers, Some("9")),
            BTreeSet::from(["", "8", "9"])
        );
        assert_eq!(
            stats_numbers(&numbers, Some("7")),
            BTreeSet::from(["8", "9"])
        );
        assert_eq!(stats_numbers(&numbers, None), BTreeSet::from(["8", "9"]));
        assert_eq!(stats_owner("", Some("9")), Some("9"));
        assert_eq!(stats_owner("", None), None);
        assert_eq!(stats_owner("8", Some("9")), Some("8"));
        // Each stats number counts for a number exactly when it owns it.
        for key in ["", "7", "8", "9"] {
            let owner = stats_owner(key, Some("9"));
            assert_eq!(
                stats_numbers(&numbers, Some("9")).contains(key),
                owner.is_some_and(|o| numbers.iter().any(|n| n == o)),
                "{key}"
            );
        }
    }

    #[test]
    fn a_scoped_token_sees_only_its_numbers() {
        let scope = Scope::Numbers(BTreeSet::from(["8".to_owned()]));
        assert!(scope.allows_conversation("conv_1_8", Some("9")));
        assert!(!scope.allows_conversation("conv_1", Some("9")));
        assert!(scope.allows_conversation("conv_1", Some("8")));
        assert!(!scope.allows_conversation("conv_1", None));
        assert!(!scope.allows_conversation("nonsense", Some("8")));
        assert!(Scope::All.allows_conversation("conv_1", None));
        assert_eq!(scope.narrow(None), Some(vec!["8".to_owned()]));
        assert_eq!(scope.narrow(Some("9")), Some(vec![]));
        assert_eq!(Scope::All.narrow(None), None);
        assert_eq!(Scope::All.narrow(Some("9")), Some(vec!["9".to_owned()]));
    }

    #[test]
    fn webhook_items_are_routed_to_their_numbers_conversation() {
        let body = |number: &str, display: &str| {
            serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "metadata": {"display_phone_number": display, "phone_number_id": number},
                "contacts": [{"wa_id": "4477", "profile": {"name": "Ann"}}],
                "messages": [{"from": "4477", "id": format!("wamid.{number}"), "timestamp": "1754400000", "type": "text", "text": {"body": "hi"}}],
                "statuses": [{"id": format!("wamid.out.{number}"), "status": "read", "timestamp": "1754400001", "recipient_id": "4477"}]}}]}]})
            .to_string()
        };
        let mut messages = Vec::new();
        let mut statuses = Vec::new();
        for (number, display) in [("9", "15550009"), ("8", "15550008")] {
            let parsed = crate::webhook::parse(body(number, display).as_bytes()).unwrap();
            messages.extend(parsed.messages);
            statuses.extend(parsed.statuses);
        }
        assert_eq!(first_number(&messages, &statuses), Some("9"));
        route(&mut messages, &mut statuses, Some("9"));
        let routed: Vec<(&str, Option<&str>, Option<&str>)> = messages
            .iter()
            .map(|m| {
                (
                    m.conversation_id.as_str(),
                    m.phone_number_id.as_deref(),
                    m.business_number.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            routed,
            [
                ("conv_4477", Some("9"), Some("15550009")),
                ("conv_4477_8", Some("8"), Some("15550008"))
            ]
        );
        let statuses: Vec<&str> = statuses
            .iter()
            .map(|s| s.conversation_id.as_str())
            .collect();
        assert_eq!(statuses, ["conv_4477", "conv_4477_8"]);
        // A plan counts each number's messages in its own stats documents.
        let batch = crate::plan::Batch {
            messages,
            ..Default::default()
        };
        let plan = crate::plan::plan_batch(&batch, &crate::plan::Known::default());
        let mut numbers: Vec<&str> = plan.stats.iter().map(|s| s.shard.number.as_str()).collect();
        numbers.dedup();
        assert_eq!(numbers, ["", "8"]);
        let created: Vec<Option<&str>> = plan
            .conversations
            .iter()
            .map(|c| c.phone_number_id.as_deref())
            .collect();
        assert_eq!(created, [Some("9"), Some("8")]);
    }

    #[test]
    fn a_number_id_that_is_not_digits_refuses_its_items() {
        let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "metadata": {"display_phone_number": "1555", "phone_number_id": "12_3"},
            "messages": [{"from": "4477", "id": "wamid.x", "timestamp": "1754400000", "type": "text", "text": {"body": "hi"}}]}}]}]})
        .to_string();
        let parsed = crate::webhook::parse(body.as_bytes()).unwrap();
        assert!(parsed.messages.is_empty());
        assert!(
            parsed.rejected[0].reason.contains("phone_number_id"),
            "{:?}",
            parsed.rejected
        );
    }

    proptest! {
        /// Ids are unique per (customer, number), URL-safe, and give back
        /// their customer and number.
        #[test]
        fn ids_are_unique_per_customer_and_number(
            wa_a in "[0-9]{1,15}", wa_b in "[0-9]{1,15}",
            n_a in "[0-9]{1,15}", n_b in "[0-9]{1,15}", home in "[0-9]{1,15}",
        ) {
            let a = conversation_id(&wa_a, Some(&n_a), Some(&home));
            let b = conversation_id(&wa_b, Some(&n_b), Some(&home));
            prop_assert_eq!(a == b, wa_a == wa_b && n_a == n_b);
            prop_assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
            prop_assert_eq!(number_of(&a, Some(&home)), Some(n_a.as_str()));
            prop_assert_eq!(parse_conversation_id(&a).map(|(w, _)| w), Some(wa_a.as_str()));
            prop_assert!(crate::domain::is_conversation_id(&a));
        }
    }
}
