//! The webhook queue on JetStream: enqueue with de-duplication, pull in
//! batches, settle each delivery.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, AckKind, consumer};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use wa_broker::retry::{self, Backoff};
use wa_broker::{
    BatchLimits, BrokerError, Cause, Delivery, Enqueued, Ingest, NotReady, Queue, Settle,
};

use super::*;

/// How long one wait for the first message of a batch lasts on the server;
/// a request lost with a restarted server is given up 5 s after that.
pub(crate) const PULL_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for the rest of a batch (answered at once, normally).
pub(crate) const FETCH_WAIT: Duration = Duration::from_secs(5);
/// How a publish is retried within the publish deadline: 50 ms doubling
/// to 500 ms (a leader election takes a few seconds), jittered so that
/// the gateways publishing during an election do not all come back at
/// the same instant.
pub(crate) const PUBLISH_RETRY: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_millis(500));

/// Waits for one message, then takes whatever else is there, within
/// `limits`, without waiting.
pub(crate) async fn take(
    consumer: &consumer::PullConsumer,
    limits: BatchLimits,
) -> Result<Vec<jetstream::Message>, BrokerError> {
    let first = loop {
        let mut one = consumer
            .batch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(BrokerError::unavailable)?;
        match one.next().await {
            Some(message) => break message.map_err(BrokerError::unavailable)?,
            // Nothing came: ask again.
            None => continue,
        }
    };
    let mut bytes = body_size(&first);
    let mut batch = vec![first];
    if limits.count > 1 && bytes < limits.bytes {
        let fetched = consumer
            .fetch()
            .max_messages(limits.count - 1)
            .max_bytes(limits.bytes - bytes)
            .messages()
            .await;
        let mut rest = match fetched {
            Ok(rest) => rest,
            // The one in hand is worked on; the rest waits for the next batch.
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch more for this batch");
                return Ok(batch);
            }
        };
        // A fetch has no deadline of its own: a request that the consumer's
        // leader took with it when it died would be waited for forever.
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            let message = match tokio::time::timeout_at(deadline, rest.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(None) => break,
                // What was on its way comes back after the ack wait.
                Err(_) => {
                    tracing::warn!("a fetch went unanswered; taking what came");
                    break;
                }
                // What came is taken; the rest stays for the next batch.
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "pull error");
                    break;
                }
            };
            // A reference counts as the body it stands for (the fetch's
            // byte limit saw only the reference): one that would take the
            // batch past its bytes goes back at once, for the next batch.
            let size = body_size(&message);
            if bytes + size > limits.bytes {
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(error = %e, "nak failed; redelivered after the ack wait");
                }
                continue;
            }
            bytes += size;
            batch.push(message);
        }
    }
    Ok(batch)
}

impl NatsBroker {
    /// One attempt at [`Queue::enqueue`].
    pub(crate) async fn enqueue_once(
        &self,
        kind: Ingest,
        id: &str,
        body: &Bytes,
    ) -> Result<Enqueued, BrokerError> {
        let subject = match kind {
            Ingest::Webhook => self.names.webhooks(),
            Ingest::Send => self.names.sends(),
        };
        let result = match self.send(subject.clone(), id, body).await {
            // NATS lost its streams (e.g. restarted without storage): recreate them once.
            Err(SendError::Publish(e)) if e.kind() == PublishErrorKind::StreamNotFound => {
                if let Err(e) = self.ensure_streams().await {
                    let detail = format!("{e:#}");
                    let no_room = no_room_in_text(&detail);
                    let detail = Cause::new(detail, e);
                    return Err(match no_room {
                        Some(reason) => BrokerError::Full { reason, detail },
                        None => BrokerError::Unavailable(detail),
                    });
                }
                self.send(subject, id, body).await
            }
            other => other,
        };
        match result {
            Ok(ack) => Ok(Enqueued {
                duplicate: ack.duplicate,
            }),
            // Only if even a reference does not fit: a server with a tiny limit.
            Err(SendError::Publish(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(BrokerError::TooLarge(Cause::of(e)))
            }
            Err(e) => Err(match e.no_room() {
                Some(reason) => BrokerError::Full {
                    reason,
                    detail: Cause::of(e),
                },
                None => BrokerError::unavailable(e),
            }),
        }
    }
}

#[async_trait]
impl Queue for NatsBroker {
    async fn enqueue(&self, kind: Ingest, id: &str, body: Bytes) -> Result<Enqueued, BrokerError> {
        let started = tokio::time::Instant::now();
        let mut attempts = 0_u32;
        loop {
            // Only an outage (an election, a timeout) is waited out: a
            // JetStream without room says so at once, and is answered so.
            let result = self.enqueue_once(kind, id, &body).await;
            attempts = attempts.saturating_add(1);
            let pause = retry::wait(&PUBLISH_RETRY, attempts);
            match result {
                Err(BrokerError::Unavailable(e))
                    if started.elapsed() + pause < self.publish_deadline =>
                {
                    tracing::debug!(error = %e, "publish failed; trying again");
                    metrics::counter!("publish_retries_total").increment(1);
                    tokio::time::sleep(pause).await;
                }
                Err(BrokerError::Full { reason, detail }) => {
                    self.health.out_of_space(reason);
                    return Err(BrokerError::Full { reason, detail });
                }
                Ok(enqueued) => {
                    self.health.wrote();
                    return Ok(enqueued);
                }
                other => return other,
            }
        }
    }

    async fn next_batch(&self, limits: BatchLimits) -> Result<Vec<Delivery>, BrokerError> {
        loop {
            let messages = self.pull(limits).await?;
            // Referenced bodies are fetched side by side.
            let deliveries: Vec<Delivery> =
                futures::future::join_all(messages.into_iter().map(|m| self.delivery(m)))
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            // All of them handed back for later: wait for others.
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
        }
    }

    /// Connected, and JetStream answers: a server that froze keeps the
    /// connection open while every publish times out.
    async fn ready(&self) -> Result<(), NotReady> {
        let unreachable = |why: Cause| Err(NotReady::Unreachable(why));
        match self.client.connection_state() {
            async_nats::connection::State::Connected => {}
            other => return unreachable(format!("NATS is {other}").into()),
        }
        // The account info request, answered by any JetStream server (its
        // content is not read: the client's parser fails on a cluster's).
        let asked = self.client.request("$JS.API.INFO", Bytes::new());
        match tokio::time::timeout(READY_TIMEOUT, asked).await {
            Ok(Ok(answer)) if !answer.payload.is_empty() => {}
            Ok(Ok(_)) => return unreachable("JetStream gave an empty answer".into()),
            Ok(Err(e)) => {
                return unreachable(Cause::new(format!("JetStream does not answer: {e}"), e));
            }
            Err(_) => {
                return unreachable(
                    format!("JetStream did not answer within {READY_TIMEOUT:?}").into(),
                );
            }
        }
        // Reachable; but a write that failed for lack of room stands until
        // a later one (or a probe, at most once a second) succeeds.
        match self.health.due_for_probe() {
            None => Ok(()),
            Some((reason, false)) => Err(NotReady::CannotStore(reason)),
            Some((reason, true)) => match self.probe(reason).await {
                Ok(()) => {
                    self.health.wrote();
                    Ok(())
                }
                Err(reason) => Err(NotReady::CannotStore(reason)),
            },
        }
    }

    fn redelivered_after(&self) -> Duration {
        self.ack_wait
    }
}

impl NatsSettle {
    /// Deletes the object a processed message referred to, freeing its
    /// space now rather than when the bucket's `max_age` expires it. A
    /// failure only leaves it to expire.
    /// The object this message refers to, and its bucket.
    pub(crate) fn body_ref(&self) -> Option<(&str, &str)> {
        let headers = self.message.headers.as_ref()?;
        Some((
            headers.get(BODY_REF)?.as_str(),
            headers.get(BODY_BUCKET)?.as_str(),
        ))
    }

    pub(crate) async fn forget_body(&self) {
        let Some((name, bucket)) = self.body_ref() else {
            return;
        };
        let deleted = async {
            let store = self.js.get_object_store(bucket).await?;
            store.delete(name).await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(e) = deleted.await {
            tracing::debug!(error = %e, object = name, "a processed body is left to expire");
        }
    }
}

/// Settles a JetStream message.
pub(crate) struct NatsSettle {
    pub(crate) message: jetstream::Message,
    pub(crate) js: jetstream::Context,
    pub(crate) dead_letters: String,
    /// Where a dead letter's body goes when it is too large for a message.
    pub(crate) dead_bodies: Bucket,
    pub(crate) sequence: u64,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(&self) -> Result<(), BrokerError> {
        if self.body_ref().is_none() {
            return self.message.ack().await.map_err(BrokerError::unavailable);
        }
        // A reference is acknowledged with the server's reply (double
        // ack): only then is it certain the stream dropped it, and its
        // body may go too.
        self.message
            .double_ack()
            .await
            .map_err(BrokerError::unavailable)?;
        self.forget_body().await;
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(BrokerError::unavailable)
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), BrokerError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(BrokerError::unavailable)
    }

    async fn dead_letter(&self, body: &Bytes, reason: &str) -> Result<(), BrokerError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Dlq-Reason",
            reason
                .replace(['\r', '\n'], " ")
                .chars()
                .take(1000)
                .collect::<String>(),
        );
        headers.insert("Dlq-Stream-Sequence", self.sequence.to_string());
        headers.insert("Nats-Msg-Id", format!("dlq-{}", self.sequence));
        // The full body, as for any payload; one too large for a message
        // is copied to a bucket kept as long as the dead letters (the
        // queue's bucket expires sooner) and the dead letter refers to it.
        publish_body(
            &self.js,
            self.dead_letters.clone(),
            headers,
            body,
            &self.dead_bodies,
        )
        .await
        .map_err(BrokerError::unavailable)?;
        // Term: never redelivered (the stream keeps it, Limits retention).
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(BrokerError::unavailable)
    }
}
