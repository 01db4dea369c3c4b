use futures::StreamExt;
use wa_core::domain::Event;

use crate::helpers::spawn_stack;
use test_support::stack::StackConfig;

#[tokio::test]
async fn one_event_per_stored_message_and_applied_status_and_none_for_repeats() {
    let p = spawn_stack(StackConfig::new()).await;
    let mut events = p.nats.subscribe(p.names.events()).await.unwrap();
    p.nats.flush().await.unwrap();
    for (_, body) in test_support::sample_files() {
        p.post(&body).await;
        p.publish_raw(&body).await;
    }
    p.drained().await;
    // A marker published after the drain arrives after every event.
    p.nats
        .publish(p.names.events(), "end".into())
        .await
        .unwrap();

    let (mut new_messages, mut status_updates) = (Vec::new(), Vec::new());
    while let Some(message) = events.next().await {
        if message.payload.as_ref() == b"end" {
            break;
        }
        match serde_json::from_slice::<Event>(&message.payload).unwrap() {
            Event::NewMessage(m) => new_messages.push(m.message_id),
            Event::StatusUpdate(s) => {
                status_updates.push((s.conversation_id, s.status.to_string()))
            }
        }
    }
    assert_eq!(new_messages.len(), 4, "one newMessage per stored message");
    new_messages.sort();
    new_messages.dedup();
    assert_eq!(new_messages.len(), 4, "four different messages");
    status_updates.sort();
    assert_eq!(
        status_updates,
        vec![
            ("conv_919937320320".into(), "read".into()),
            ("conv_929967673820".into(), "delivered".into())
        ],
        "one statusUpdate per applied change; the sample's `sent` for an inbound message changes nothing"
    );
}
