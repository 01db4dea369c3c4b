//! The event log on JetStream: appended once, numbered by the stream
//! (`seq`), read live and replayed for clients that resume.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::config::StreamSettings;
use wa_broker::{BrokerError, Cause, EventBus, ReadError};
use wa_core::domain::{Event, Sequenced};

use super::*;

/// Reads the event log (the `<NS>_EVENTS` stream) by sequence number:
/// each read is a short-lived consumer from a given `seq`, so a reader
/// never depends on a long-lived consumer surviving a NATS restart.
#[derive(Clone)]
pub(crate) struct EventLog {
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    pub(crate) streams: StreamSettings,
}

impl EventLog {
    /// The stream, created if NATS lost it.
    pub(crate) async fn stream(&self) -> Result<stream::Stream, BrokerError> {
        match self.js.get_stream(self.names.events_stream()).await {
            Ok(stream) => Ok(stream),
            Err(_) => {
                ensure_streams(&self.js, &self.names, &self.streams)
                    .await
                    .map_err(BrokerError::unavailable)?;
                self.js
                    .get_stream(self.names.events_stream())
                    .await
                    .map_err(BrokerError::unavailable)
            }
        }
    }

    /// The stream, the oldest kept and the last `seq`.
    pub(crate) async fn bounds(&self) -> Result<(stream::Stream, u64, u64), BrokerError> {
        // Looking the stream up fetched its state: one request, not two.
        let stream = self.stream().await?;
        let state = stream.cached_info().state.clone();
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        Ok((stream, first, state.last_sequence))
    }

    pub(crate) async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError> {
        let (stream, first, last) = self.bounds().await?;
        if after.saturating_add(1) < first {
            return Err(ReadError::Gone { after, first });
        }
        if after > last {
            return Err(ReadError::Ahead { after, last });
        }
        let mut events = Vec::new();
        let mut cursor = after;
        // Events that are not understood are skipped: read on past them.
        while events.is_empty() && cursor < last && limit > 0 {
            let (page, read_to) = match self.page(&stream, cursor, last, limit).await {
                Ok(page) => page,
                // What was read in order stands.
                Err(_) if !events.is_empty() => break,
                Err(e) => return Err(e.into()),
            };
            events.extend(page);
            if read_to == cursor {
                break;
            }
            cursor = read_to;
        }
        Ok(events)
    }

    /// One consumer's worth: events after `after`, and the last `seq` read.
    pub(crate) async fn page(
        &self,
        stream: &stream::Stream,
        after: u64,
        last: u64,
        limit: usize,
    ) -> Result<(Vec<Sequenced>, u64), BrokerError> {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.names.events(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(BrokerError::unavailable)?;
        let name = consumer.cached_info().name.clone();
        let wanted = usize::try_from(last - after)
            .unwrap_or(usize::MAX)
            .min(limit);
        let mut events = Vec::with_capacity(wanted);
        let mut read_to = after;
        let read = tokio::time::timeout(READ_TIMEOUT, async {
            let mut messages = consumer
                .fetch()
                .max_messages(wanted)
                .messages()
                .await
                .map_err(BrokerError::unavailable)?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(BrokerError::unavailable)?;
                let seq = message
                    .info()
                    .map_err(BrokerError::unavailable)?
                    .stream_sequence;
                if seq <= read_to {
                    continue; // never backwards
                }
                // A fresh consumer skips only sequence numbers the stream
                // no longer holds (deleted by hand, or aged out since the
                // bounds were read).
                read_to = seq;
                events.extend(decode(seq, &message.payload));
            }
            Ok::<(), BrokerError>(())
        })
        .await;
        // Not needed any more (it would expire anyway).
        let owned = stream.clone();
        tokio::spawn(async move { owned.delete_consumer(&name).await.ok() });
        match read {
            Ok(Ok(())) if read_to == after => self.nothing_read(stream, after, last).await,
            Ok(Ok(())) => Ok((events, read_to)),
            Ok(Err(_)) | Err(_) if read_to > after => Ok((events, read_to)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BrokerError::Unavailable(
                "the event log did not answer in time".into(),
            )),
        }
    }

    /// A consumer that delivered nothing although the stream's last event
    /// (`last`) is after `after`: either no event in between is kept any
    /// more (deleted by hand), or the consumer sits on a replica still
    /// catching up (a restarted node), and saying "nothing in between"
    /// would make readers skip events. The stream's leader has the next
    /// event kept: it is the answer.
    pub(crate) async fn nothing_read(
        &self,
        stream: &stream::Stream,
        after: u64,
        last: u64,
    ) -> Result<(Vec<Sequenced>, u64), BrokerError> {
        let next = stream
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(self.names.events())
            .send()
            .await;
        match next {
            Ok(message) => Ok((
                decode(message.sequence, &message.payload)
                    .into_iter()
                    .collect(),
                message.sequence,
            )),
            // None kept up to the last (which the stream still counts).
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                Ok((Vec::new(), last))
            }
            Err(e) => Err(BrokerError::unavailable(e)),
        }
    }

    /// Events after `head` as they are appended: reads on, and waits for
    /// a ring (every append rings `<ns>.events.ring`) when caught up. Ends
    /// when the log can't be read; the reader reads what it missed and
    /// follows again.
    pub(crate) async fn follow(
        &self,
        client: &Client,
        head: u64,
    ) -> Result<BoxStream<'static, Sequenced>, BrokerError> {
        let doorbell = client
            .subscribe(self.names.events_ring())
            .await
            .map_err(BrokerError::unavailable)?;
        let state = (
            self.clone(),
            doorbell,
            head,
            std::collections::VecDeque::new(),
        );
        Ok(futures::stream::unfold(
            state,
            |(log, mut doorbell, mut cursor, mut ready)| async move {
                loop {
                    if let Some(event) = ready.pop_front() {
                        return Some((event, (log, doorbell, cursor, ready)));
                    }
                    // Rings so far are answered by the read that follows.
                    while let Some(Some(_)) = doorbell.next().now_or_never() {}
                    match log.read(cursor, FOLLOW_PAGE).await {
                        Ok(events) if !events.is_empty() => {
                            cursor = events.last().map_or(cursor, |e: &Sequenced| e.seq);
                            ready.extend(events);
                        }
                        Ok(_) => {
                            // Caught up: until something is appended (or a
                            // while, in case a ring was lost).
                            if let Ok(None) =
                                tokio::time::timeout(FOLLOW_IDLE, doorbell.next()).await
                            {
                                return None;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "event log interrupted");
                            return None;
                        }
                    }
                }
            },
        )
        .boxed())
    }
}

/// An event of the log; one that is not understood is skipped (logged).
pub(crate) fn decode(seq: u64, payload: &[u8]) -> Option<Sequenced> {
    match serde_json::from_slice(payload) {
        Ok(event) => Some(Sequenced { seq, event }),
        Err(e) => {
            tracing::error!(error = %e, seq, "an event that is not understood is skipped");
            None
        }
    }
}

/// Events read per round while following the log.
pub(crate) const FOLLOW_PAGE: usize = 1_000;
/// Longest wait for an append's ring before reading again anyway.
pub(crate) const FOLLOW_IDLE: Duration = Duration::from_secs(1);
/// Room kept in a message for its headers.
pub(crate) const HEADROOM: usize = 4 * 1024;
/// A too-large event's body is cut to this many characters.
pub(crate) const SLIM_BODY_CHARS: usize = 4 * 1024;

/// An event as a message body: within `max_payload`, a message too large
/// (a huge text, a large WhatsApp object) is announced without its
/// WhatsApp objects and with its body cut; REST has it whole.
pub(crate) fn event_body(event: &Event, max_payload: usize) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(event)?;
    let limit = max_payload.saturating_sub(HEADROOM);
    match event {
        Event::NewMessage(message) if body.len() > limit => {
            let mut slim = message.as_ref().clone();
            slim.content = None;
            slim.context = None;
            slim.referral = None;
            slim.errors = None;
            if slim.body.chars().count() > SLIM_BODY_CHARS {
                slim.body = slim.body.chars().take(SLIM_BODY_CHARS).collect::<String>() + "…";
            }
            tracing::warn!(
                message_id = %message.message_id,
                bytes = body.len(),
                "event too large for a NATS message: announced without its WhatsApp objects"
            );
            serde_json::to_vec(&Event::NewMessage(Box::new(slim)))
        }
        _ => Ok(body),
    }
}

#[async_trait]
impl EventBus for NatsBroker {
    async fn append(&self, events: &[Event]) -> Result<(), BrokerError> {
        let max_payload = self.client.server_info().max_payload;
        // Sent in order on one connection, acknowledged a window at a time:
        // async-nats holds at most 5,000 unacknowledged publishes and waits
        // for a free one, so sending a whole large batch before awaiting
        // any acknowledgement never finished.
        for window in events.chunks(APPEND_WINDOW) {
            if let Err(e) = self.append_window(window, max_payload).await {
                if let BrokerError::Full { reason, .. } = &e {
                    self.health.out_of_space(reason);
                }
                return Err(e);
            }
        }
        if !events.is_empty() {
            self.health.wrote();
        }
        if !events.is_empty() {
            // Followers wake up (a lost ring only delays them a little).
            self.client
                .publish(self.names.events_ring(), Bytes::new())
                .await
                .ok();
        }
        Ok(())
    }

    async fn live(&self) -> Result<(u64, BoxStream<'static, Sequenced>), BrokerError> {
        let (_, _, head) = self.events.bounds().await?;
        Ok((head, self.events.follow(&self.client, head).await?))
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Sequenced>, ReadError> {
        self.events.read(after, limit).await
    }
}

/// Events published before their acknowledgements are awaited.
pub(crate) const APPEND_WINDOW: usize = 1_000;

impl NatsBroker {
    pub(crate) async fn append_window(
        &self,
        events: &[Event],
        max_payload: usize,
    ) -> Result<(), BrokerError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let body = event_body(event, max_payload).map_err(BrokerError::unavailable)?;
            let message = PublishMessage::build()
                .payload(body.into())
                .message_id(event.id());
            let ack = match self
                .js
                .send_publish(self.names.events(), message.clone())
                .await
            {
                Ok(ack) => ack,
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    self.events.stream().await?;
                    self.js
                        .send_publish(self.names.events(), message)
                        .await
                        .map_err(BrokerError::unavailable)?
                }
                Err(e) => return Err(BrokerError::unavailable(e)),
            };
            acks.push(ack);
        }
        let acks = acks.into_iter().map(std::future::IntoFuture::into_future);
        for ack in futures::future::join_all(acks).await {
            ack.map_err(|e| match no_room(&e) {
                Some(reason) => BrokerError::Full {
                    reason,
                    detail: Cause::of(e),
                },
                None => BrokerError::unavailable(e),
            })?;
        }
        Ok(())
    }
}
