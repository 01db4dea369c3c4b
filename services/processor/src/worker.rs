//! The consume loop: pull a batch, store it, publish its events, ack it.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use shared::broker::{self, Names};
use shared::domain::Event;
use shared::processing::{self, Ingest, Processor};
use shared::store::mongo::MongoStore;
use shared::store::{RawPayload, StoreError};
use tokio_util::sync::CancellationToken;

pub struct Worker {
    pub processor: Processor,
    pub store: MongoStore,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
    pub batch_size: usize,
    pub ack_wait: Duration,
    pub max_deliveries: i64,
}

impl Worker {
    /// Consumes until cancelled, re-establishing the consumer whenever NATS
    /// or the stream goes away.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(()) = broker::retry_until("preparing MongoDB indexes", &cancel, || {
            self.store.ensure_indexes()
        })
        .await
        else {
            return;
        };
        while !cancel.is_cancelled() {
            if let Err(e) = self.consume(&cancel).await {
                tracing::warn!(error = %e, "consumer stopped; restarting");
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        tracing::info!("processor worker stopped");
    }

    async fn consume(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let Some(stream) = broker::retry_until("creating JetStream streams", cancel, || {
            broker::ensure_streams(&self.js, &self.names)
        })
        .await
        else {
            return Ok(());
        };
        let consumer = broker::processor_consumer(&stream, &self.names, self.ack_wait).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?;
        // Whatever has arrived, up to a batch, is stored in one go.
        let mut batches = messages.ready_chunks(self.batch_size);
        tracing::info!(batch_size = self.batch_size, "consuming webhooks");
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else {
                anyhow::bail!("message stream ended");
            };
            let messages = batch
                .into_iter()
                .filter_map(|m| m.map_err(|e| tracing::warn!(error = %e, "pull error")).ok())
                .collect();
            self.handle(messages).await;
        }
    }

    /// Stores a batch. On a store failure that may be one payload's fault,
    /// the payloads are retried one by one so a bad one cannot hold back
    /// the others.
    async fn handle(&self, messages: Vec<jetstream::Message>) {
        let mut pending = Vec::with_capacity(messages.len());
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            let kind = if message.subject.as_str() == self.names.sends() {
                Ingest::Send
            } else {
                Ingest::Webhook
            };
            match processing::decode(kind, &message.payload) {
                Ok(parsed) => {
                    batch.push((raw_payload(&message), parsed));
                    pending.push(message);
                }
                Err(e) => {
                    self.dead_letter(&message, &format!("unparseable payload: {e}"))
                        .await
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        match self.processor.process(&batch).await {
            Ok(events) => self.finish(&pending, &events).await,
            Err(e) if e.permanent && pending.len() > 1 => {
                tracing::warn!(error = %e, "batch refused; retrying its payloads one by one");
                for (message, item) in pending.iter().zip(&batch) {
                    match self.processor.process(std::slice::from_ref(item)).await {
                        Ok(events) => self.finish(std::slice::from_ref(message), &events).await,
                        Err(e) => self.retry_later(message, &e).await,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, payloads = pending.len(), "batch failed; will be redelivered");
                for message in &pending {
                    self.retry_later(message, &e).await;
                }
            }
        }
    }

    /// Publishes the events of stored payloads, then acknowledges them.
    async fn finish(&self, messages: &[jetstream::Message], events: &[Event]) {
        let subject = self.names.events();
        for event in events {
            match serde_json::to_vec(event) {
                Ok(bytes) => {
                    if let Err(e) = self.client.publish(subject.clone(), bytes.into()).await {
                        tracing::warn!(error = %e, "event not published");
                    }
                }
                Err(e) => tracing::error!(error = %e, "event not serialisable"),
            }
        }
        metrics::counter!("events_published_total").increment(events.len() as u64);
        for message in messages {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "ack failed; the payload will be redelivered (harmless)");
            }
        }
        metrics::counter!("payloads_processed_total").increment(messages.len() as u64);
    }

    /// Naks with backoff; a payload the store keeps refusing is dead-lettered.
    async fn retry_later(&self, message: &jetstream::Message, error: &StoreError) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if error.permanent && delivered >= self.max_deliveries {
            self.dead_letter(
                message,
                &format!("refused by the store {delivered} times: {error}"),
            )
            .await;
            return;
        }
        let delay = Duration::from_millis(250 * 2_u64.pow(delivered.clamp(1, 8) as u32 - 1));
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nak failed; the payload will be redelivered after ack_wait");
        }
    }

    /// Moves a payload to the dead-letter stream, with the reason in a
    /// header, and takes it off the queue. If the DLQ can't take it, it
    /// stays queued and is retried.
    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) {
        tracing::error!(reason, subject = %message.subject, "payload dead-lettered");
        metrics::counter!("payloads_dead_lettered_total").increment(1);
        let sequence = message
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Dlq-Reason",
            reason
                .replace(['\r', '\n'], " ")
                .chars()
                .take(1000)
                .collect::<String>(),
        );
        headers.insert("Dlq-Stream-Sequence", sequence.to_string());
        headers.insert("Nats-Msg-Id", format!("dlq-{sequence}"));
        let published = async {
            self.js
                .publish_with_headers(self.names.dead_letters(), headers, message.payload.clone())
                .await?
                .await
        };
        match published.await {
            Ok(_) => {
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "term failed after dead-lettering");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter stream unavailable; will retry");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
                    .ok();
            }
        }
    }
}

fn raw_payload(message: &jetstream::Message) -> RawPayload {
    let id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| hex::encode(Sha256::digest(&message.payload)));
    let received_at = message
        .info()
        .ok()
        .and_then(|i| i64::try_from(i.published.unix_timestamp_nanos()).ok())
        .map_or_else(Utc::now, DateTime::from_timestamp_nanos);
    RawPayload {
        id,
        body: message.payload.clone(),
        received_at,
    }
}
