//! The rules, without a store: `Known` is written by hand.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::*;
use crate::domain::{Direction, Message, RECEIVED, RawPayload, Status, StatusChange};

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

fn inbound(id: &str, customer: &str, seconds: i64, name: Option<&str>) -> Message {
    let mut m = Message::outbound_text(
        id.to_owned(),
        customer,
        customer.to_owned(),
        format!("text of {id}"),
        at(seconds),
    );
    m.to = "1555".to_owned();
    m.direction = Direction::Inbound;
    m.status = Status::Received;
    m.status_timestamps = BTreeMap::from([(RECEIVED.to_owned(), at(seconds))]);
    m.contact_name = name.map(str::to_owned);
    m.user_name = name.map_or_else(|| format!("+{customer}"), str::to_owned);
    m
}

fn outbound(id: &str, customer: &str, seconds: i64) -> Message {
    Message::outbound_text(
        id.to_owned(),
        customer,
        "1555".to_owned(),
        format!("text of {id}"),
        at(seconds),
    )
}

fn status(id: &str, status: &str, seconds: i64) -> StatusChange {
    StatusChange {
        phone_number_id: None,
        message_id: id.to_owned(),
        status: status.into(),
        timestamp: at(seconds),
        conversation_id: "conv_4477".to_owned(),
        errors: None,
        callback: None,
    }
}

fn batch(messages: Vec<Message>, statuses: Vec<StatusChange>) -> Batch {
    Batch {
        messages,
        statuses,
        ..Batch::default()
    }
}

/// `message` stored and settled, in a conversation whose summary shows it.
fn known_with(messages: &[Message]) -> Known {
    let mut known = Known::default();
    for m in messages {
        known.messages.insert(
            m.message_id.clone(),
            Stored {
                message: m.clone(),
                settled: Some(m.status.to_string()),
            },
        );
        let last = summary::Last::of(m);
        let entry = known
            .summaries
            .entry(m.conversation_id.clone())
            .or_default();
        if last.key > entry.last_key {
            entry.last_key = last.key;
            entry.last_message_id = last.message_id;
            entry.last_status_rank = last.status_rank;
        }
    }
    known
}

fn statuses_announced(changes: &ChangeSet) -> Vec<(String, String)> {
    changes
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StatusUpdate(s) => Some((s.message_id.clone(), s.status.to_string())),
            Event::NewMessage(_) => None,
        })
        .collect()
}

fn new_messages_announced(changes: &ChangeSet) -> Vec<String> {
    changes
        .events
        .iter()
        .filter_map(|e| match e {
            Event::NewMessage(m) => Some(m.message_id.clone()),
            Event::StatusUpdate(_) => None,
        })
        .collect()
}

fn stats_total(changes: &ChangeSet) -> Counts {
    let mut total = Counts::default();
    for s in &changes.stats {
        total.add(&s.counts);
    }
    total
}

#[test]
fn a_new_conversation_is_created_counted_named_and_announced() {
    let messages = vec![
        inbound("a", "4477", 10, Some("Ann")),
        inbound("b", "4477", 12, None),
        outbound("c", "4477", 11),
    ];
    let changes = plan_batch(&batch(messages, vec![]), &Known::default());
    assert_eq!(changes.inserts.len(), 3);
    assert_eq!(new_messages_announced(&changes), ["a", "b", "c"]);
    let [conversation] = &changes.conversations[..] else {
        panic!("one conversation: {:?}", changes.conversations)
    };
    assert!(conversation.create);
    assert_eq!(
        (conversation.counts.messages, conversation.counts.unread),
        (3, 2)
    );
    let last = conversation.last.as_ref().map(|l| l.message_id.as_str());
    assert_eq!(last, Some("b"), "the newest message");
    assert_eq!(
        conversation.name.as_ref().map(|n| n.name.as_str()),
        Some("Ann")
    );
    let total = stats_total(&changes);
    assert_eq!((total.messages, total.inbound, total.outbound), (3, 2, 1));
    assert_eq!(total.by_status["received"], 2);
    assert_eq!(changes.settle.len(), 3);
}

#[test]
fn a_conversation_without_a_profile_name_shows_the_number() {
    let changes = plan_batch(
        &batch(vec![outbound("c", "4477", 11)], vec![]),
        &Known::default(),
    );
    let name = changes.conversations[0]
        .name
        .as_ref()
        .map(|n| n.name.as_str());
    assert_eq!(name, Some("+4477"));
}

#[test]
fn a_redelivered_settled_message_changes_and_announces_nothing() {
    let a = inbound("a", "4477", 10, Some("Ann"));
    let changes = plan_batch(&batch(vec![a.clone()], vec![]), &known_with(&[a]));
    assert!(changes.changes_nothing(), "{changes:?}");
    assert!(changes.events.is_empty());
}

#[test]
fn the_same_message_twice_in_a_batch_is_stored_and_announced_once() {
    let a = inbound("a", "4477", 10, None);
    let changes = plan_batch(&batch(vec![a.clone(), a], vec![]), &Known::default());
    assert_eq!(changes.inserts.len(), 1);
    assert_eq!(new_messages_announced(&changes), ["a"]);
    assert_eq!(changes.conversations[0].counts.messages, 1);
}

#[test]
fn statuses_wait_for_their_message_and_apply_in_order_when_it_arrives() {
    let early = batch(
        vec![],
        vec![status("m", "read", 30), status("m", "delivered", 20)],
    );
    let changes = plan_batch(&early, &Known::default());
    assert_eq!(changes.park.len(), 2);
    assert!(changes.events.is_empty());

    let known = Known {
        parked: changes.park,
        ..Known::default()
    };
    let arrival = batch(
        vec![outbound("m", "4477", 10)],
        vec![status("m", "sent", 11)],
    );
    let changes = plan_batch(&arrival, &known);
    let [inserted] = &changes.inserts[..] else {
        panic!("one insert")
    };
    assert_eq!(
        inserted.status, "read",
        "stored with the statuses that waited"
    );
    assert_eq!(changes.unpark, ["m|delivered", "m|read"]);
    assert_eq!(new_messages_announced(&changes), ["m"]);
    assert_eq!(
        statuses_announced(&changes),
        [
            ("m".into(), "delivered".into()),
            ("m".into(), "read".into())
        ]
    );
    assert_eq!(stats_total(&changes).by_status["read"], 1);
    let last = changes.conversations[0].last.as_ref();
    assert_eq!(last.map(|l| l.status.as_str()), Some("read"));
}

#[test]
fn a_stored_message_moves_forward_under_a_guard_and_stale_statuses_only_note_their_time() {
    let m = outbound("m", "4477", 10);
    let known = known_with(std::slice::from_ref(&m));
    let changes = plan_batch(
        &batch(
            vec![],
            vec![status("m", "delivered", 20), status("m", "sent", 11)],
        ),
        &known,
    );
    let [update] = &changes.updates[..] else {
        panic!("one update")
    };
    assert_eq!(
        (update.expected_rank, update.message.status.as_str()),
        (1, "delivered")
    );
    assert_eq!(update.new_times, ["delivered"]);
    assert_eq!(
        statuses_announced(&changes),
        [("m".into(), "delivered".into())]
    );
    let total = stats_total(&changes);
    assert_eq!(
        total.by_status,
        BTreeMap::from([("delivered".to_owned(), 1), ("sent".to_owned(), -1)])
    );
    assert_eq!(total.messages, 0);
    let conversation = &changes.conversations[0];
    assert!(
        conversation.counts.is_zero(),
        "an outbound status is no unread change"
    );
    let last_status = conversation
        .last_status
        .as_ref()
        .map(|s| (s.message_id.as_str(), s.rank));
    assert_eq!(
        last_status,
        Some(("m", 2)),
        "if it is still the last message"
    );

    // Delivered again, and an older status: nothing to announce.
    let mut delivered = m;
    status::apply(&mut delivered, &status("m", "delivered", 20));
    let changes = plan_batch(
        &batch(vec![], vec![status("m", "delivered", 21)]),
        &known_with(&[delivered]),
    );
    assert!(changes.changes_nothing() && changes.events.is_empty());
}

#[test]
fn the_last_message_and_the_name_only_move_forward() {
    let newer = inbound("n", "4477", 50, Some("Ann"));
    let known = {
        let mut known = known_with(std::slice::from_ref(&newer));
        if let Some(s) = known.summaries.get_mut("conv_4477") {
            s.name_key = summary::sort_key(at(50), "n");
        }
        known
    };
    let late = inbound("o", "4477", 40, Some("Old name"));
    let changes = plan_batch(&batch(vec![late], vec![]), &known);
    let conversation = &changes.conversations[0];
    assert_eq!(conversation.last, None, "an older message is not the last");
    assert_eq!(conversation.name, None, "nor does its name win");
    assert_eq!(
        (conversation.counts.messages, conversation.counts.unread),
        (1, 1)
    );

    let newest = inbound("p", "4477", 60, Some("Ann B."));
    let changes = plan_batch(&batch(vec![newest], vec![]), &known);
    let conversation = &changes.conversations[0];
    assert_eq!(
        conversation.last.as_ref().map(|l| l.message_id.as_str()),
        Some("p")
    );
    assert_eq!(
        conversation.name.as_ref().map(|n| n.name.as_str()),
        Some("Ann B.")
    );
    assert!(!conversation.create);
}

#[test]
fn marking_read_moves_unread_inbound_messages_and_their_counts() {
    let a = inbound("a", "4477", 10, None);
    let b = inbound("b", "4477", 11, None);
    let known = known_with(&[a, b]);
    let changes = plan_mark_read("conv_4477", at(99), &known);
    assert_eq!(changes.updates.len(), 2);
    assert!(
        changes
            .updates
            .iter()
            .all(|u| u.expected_rank == 0 && u.message.status == "read")
    );
    assert_eq!(
        statuses_announced(&changes),
        [("a".into(), "read".into()), ("b".into(), "read".into())]
    );
    let conversation = &changes.conversations[0];
    assert_eq!(
        (conversation.counts.messages, conversation.counts.unread),
        (0, -2)
    );
    let last_status = conversation
        .last_status
        .as_ref()
        .map(|s| (s.message_id.as_str(), s.rank));
    assert_eq!(last_status, Some(("b", 3)), "the newest one read");
    let total = stats_total(&changes);
    assert_eq!(total.by_status["read"], 2);
    assert_eq!(total.by_status["received"], -2);
}

#[test]
fn a_crash_after_some_counters_is_finished_without_counting_twice() {
    // A change set stored `a` and counted it in its conversation, then
    // crashed before the stats and before settling it.
    let a = inbound("a", "4477", 10, None);
    let key = counts::journal_key("a");
    let mut known = Known::default();
    known.messages.insert(
        "a".into(),
        Stored {
            message: a.clone(),
            settled: None,
        },
    );
    known.summaries.insert(
        "conv_4477".into(),
        Summary {
            last_key: summary::sort_key(at(10), "a"),
            last_message_id: "a".into(),
            last_status_rank: 0,
            name_key: String::new(),
            last_inbound: Some(at(10)),
            journal: BTreeMap::from([(key.clone(), RECEIVED.to_owned())]),
        },
    );
    let changes = plan_batch(&batch(vec![a], vec![]), &known);
    assert!(changes.inserts.is_empty());
    assert!(
        changes
            .conversations
            .iter()
            .all(|c| c.counts.is_zero() && c.journal.is_empty()),
        "its conversation counted it already"
    );
    let total = stats_total(&changes);
    assert_eq!((total.messages, total.inbound), (1, 1), "the stats had not");
    assert_eq!(changes.stats[0].journal[0].expected, None);
    assert_eq!(
        new_messages_announced(&changes),
        ["a"],
        "announced after all"
    );
    assert_eq!(changes.settle, [("a".to_owned(), RECEIVED.to_owned())]);
    assert!(
        changes
            .cleanup
            .iter()
            .any(|c| c.counter == Counter::Conversation("conv_4477".into()) && c.key == key)
    );

    // The stats had counted it too, in another shard: nothing is counted.
    known.stats_journals.insert(
        StatsKey::home((stats_shard("") + 1) % STATS_SHARDS),
        BTreeMap::from([(key.clone(), RECEIVED.to_owned())]),
    );
    let changes = plan_batch(&batch(vec![], vec![]), &known);
    assert!(changes.stats.is_empty() && changes.conversations.is_empty());
    assert_eq!(changes.cleanup.len(), 2);
    assert_eq!(changes.settle.len(), 1);
}

#[test]
fn a_crash_after_settling_leaves_only_journal_entries_to_drop() {
    let a = inbound("a", "4477", 10, None);
    let key = counts::journal_key("a");
    let mut known = known_with(std::slice::from_ref(&a));
    if let Some(s) = known.summaries.get_mut("conv_4477") {
        s.journal.insert(key.clone(), RECEIVED.to_owned());
    }
    known.stats_journals.insert(
        StatsKey::home(3),
        BTreeMap::from([(key, RECEIVED.to_owned())]),
    );
    let changes = plan_batch(&batch(vec![a], vec![]), &known);
    assert!(changes.events.is_empty() && changes.settle.is_empty());
    assert!(changes.conversations.is_empty() && changes.stats.is_empty());
    assert_eq!(changes.cleanup.len(), 2);
}

#[test]
fn a_counted_but_unsettled_message_that_moves_on_is_counted_from_where_its_journal_says() {
    // Read by the business, counted as read in its conversation, not
    // settled (settled says received); marking read again finds nothing,
    // but a redelivery settles it.
    let mut a = inbound("a", "4477", 10, None);
    status::mark_read(&mut a, at(20));
    let key = counts::journal_key("a");
    let mut known = known_with(std::slice::from_ref(&a));
    if let Some(stored) = known.messages.get_mut("a") {
        stored.settled = Some(RECEIVED.to_owned());
    }
    if let Some(s) = known.summaries.get_mut("conv_4477") {
        s.journal.insert(key, "read".to_owned());
    }
    let changes = plan_batch(&batch(vec![a], vec![]), &known);
    assert!(changes.conversations.is_empty(), "unread already taken off");
    assert_eq!(stats_total(&changes).by_status["read"], 1);
    assert_eq!(statuses_announced(&changes), [("a".into(), "read".into())]);
}

#[test]
fn stats_documents_are_picked_per_message_unless_the_change_set_is_applied_at_once() {
    let messages: Vec<Message> = (0..20)
        .map(|n| inbound(&format!("m{n}"), "4477", n, None))
        .collect();
    let shard_of: BTreeMap<String, u32> = messages
        .iter()
        .map(|m| {
            (
                counts::journal_key(&m.message_id),
                stats_shard(&m.message_id),
            )
        })
        .collect();
    let mut b = batch(messages, vec![]);
    b.payloads.push(RawPayload {
        id: "payload".into(),
        body: Default::default(),
        received_at: at(0),
    });
    // In steps: each message in a document picked by its id, so that two
    // writers counting the same message meet on its journal.
    let in_steps = plan_batch(&b, &Known::default());
    assert!(in_steps.stats.len() > 1);
    for change in &in_steps.stats {
        assert!(
            change
                .journal
                .iter()
                .all(|e| shard_of[&e.key] == change.shard.shard)
        );
    }
    // At once: one document for the change set.
    let at_once = plan_batch(
        &b,
        &Known {
            atomic: true,
            ..Known::default()
        },
    );
    assert_eq!(at_once.stats.len(), 1);
    assert_eq!(
        at_once.stats[0].shard,
        StatsKey::home(stats_shard("payload"))
    );
    assert_eq!(at_once.stats[0].counts.messages, 20);
}

#[test]
fn a_new_last_message_also_raises_the_status_of_the_same_last_set_by_another_writer() {
    // Another replica may be storing `b` as `sent` while this one stores it
    // with its `read` status: besides the new last message (guarded by its
    // key, which both writers share) the plan raises the status.
    let a = inbound("a", "4477", 10, None);
    let known = known_with(std::slice::from_ref(&a));
    let b = outbound("b", "4477", 20);
    let read = StatusChange {
        phone_number_id: None,
        message_id: "b".into(),
        status: "read".into(),
        timestamp: at(30),
        conversation_id: "conv_4477".into(),
        errors: None,
        callback: None,
    };
    let changes = plan_batch(&batch(vec![b], vec![read]), &known);
    let conversation = &changes.conversations[0];
    assert_eq!(
        conversation
            .last
            .as_ref()
            .map(|l| (l.message_id.as_str(), l.status.as_str())),
        Some(("b", "read"))
    );
    assert_eq!(
        conversation
            .last_status
            .as_ref()
            .map(|s| (s.message_id.as_str(), s.rank)),
        Some(("b", 3))
    );
}

/// Ours, waiting to be sent: key and WhatsApp id both `local`.
fn pending(local: &str, seconds: i64) -> Message {
    let mut m = outbound(local, "4477", seconds);
    m.status = Status::Pending;
    m.status_timestamps = BTreeMap::from([(PENDING.to_owned(), at(seconds))]);
    m
}

fn naming(mut change: StatusChange, local: &str) -> StatusChange {
    change.callback = Some(local.to_owned());
    change
}

#[test]
fn a_status_naming_a_message_still_waiting_gives_it_the_wamid_and_the_status() {
    let waiting = pending("local.a1", 10);
    let known = known_with(std::slice::from_ref(&waiting));
    let delivered = naming(status("wamid.X", "delivered", 12), "local.a1");
    let lookup = batch(vec![], vec![delivered.clone()]).lookup();
    let Lookup::Items { message_ids, .. } = lookup else {
        panic!("items")
    };
    assert!(
        message_ids.contains(&"local.a1".to_owned()),
        "the callback is read too"
    );

    let changes = plan_batch(&batch(vec![], vec![delivered]), &known);
    assert!(changes.park.is_empty(), "applied, not parked");
    let update = &changes.updates[0];
    assert_eq!(update.message.id, "local.a1");
    assert_eq!(update.message.message_id, "wamid.X");
    assert_eq!(update.message.status, "delivered");
    assert_eq!(update.renamed_from.as_deref(), Some("local.a1"));
}

#[test]
fn a_status_for_the_first_of_two_sends_applies_to_the_message_by_its_callback() {
    // Sent twice: it took the second send's id, then the first's statuses come.
    let mut sent = pending("local.b2", 10);
    sent.message_id = "wamid.SECOND".to_owned();
    sent.status = Status::Sent;
    let known = known_with(std::slice::from_ref(&sent));
    let read = naming(status("wamid.FIRST", "read", 15), "local.b2");
    let changes = plan_batch(&batch(vec![], vec![read]), &known);
    assert!(
        changes.park.is_empty(),
        "not parked for a message that never comes"
    );
    let update = &changes.updates[0];
    assert_eq!(update.message.message_id, "wamid.SECOND");
    assert_eq!(update.message.status, "read");
    assert_eq!(
        statuses_announced(&changes),
        [("wamid.SECOND".to_owned(), "read".to_owned())]
    );
}

#[test]
fn a_callback_naming_nothing_of_ours_changes_nothing() {
    let known = known_with(&[inbound("wamid.in", "4477", 10, None)]);
    // An inbound message's id, or an unknown one: parked as ever.
    for callback in ["wamid.in", "local.unknown"] {
        let change = naming(status("wamid.Y", "delivered", 12), callback);
        let changes = plan_batch(&batch(vec![], vec![change]), &known);
        assert!(changes.updates.is_empty(), "{callback}");
        assert_eq!(changes.park.len(), 1, "{callback}");
    }
}

#[test]
fn a_callback_naming_another_conversations_message_is_not_taken_at_its_word() {
    let waiting = pending("local.c3", 10);
    let known = known_with(std::slice::from_ref(&waiting));
    let mut elsewhere = naming(status("wamid.Z", "delivered", 12), "local.c3");
    elsewhere.conversation_id = "conv_9999".to_owned();
    let changes = plan_batch(&batch(vec![], vec![elsewhere]), &known);
    assert!(changes.updates.is_empty(), "{:?}", changes.updates);
    assert_eq!(changes.park.len(), 1);
}

#[test]
fn a_failed_status_of_the_other_copy_does_not_fail_the_message() {
    let mut sent = pending("local.d4", 10);
    sent.message_id = "wamid.SECOND".to_owned();
    sent.status = Status::Delivered;
    let known = known_with(std::slice::from_ref(&sent));
    let failed = naming(status("wamid.FIRST", "failed", 15), "local.d4");
    let changes = plan_batch(&batch(vec![], vec![failed]), &known);
    assert!(changes.updates.is_empty(), "{:?}", changes.updates);
}
