//! The processor's loop: take a batch from the queue, store it (its events
//! in the store's outbox), relay its events to the event log, acknowledge
//! it; and sweep what crashed writers left in the outbox. Used by the
//! processor service (NATS, MongoDB) and the all-in-one binary (embedded)
//! alike.

use std::sync::Arc;
use std::time::Duration;

use crate::processing::{Processor, decode};
use crate::relay::Relay;
use wa_broker::retry::{self, Backoff};
use wa_broker::{BatchLimits, Delivery, Queue};
use wa_core::domain::{Event, RawPayload};
use wa_core::webhook::{Parsed, PayloadError};
use wa_store::{ErrorKind, StoreError};

/// How a payload the store could not take is redelivered: 250 ms doubling
/// to 32 s, jittered (a store outage fails every payload in hand at once;
/// they should come back spread out, not as one wave).
const DELIVERY_RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(32));
/// How long the worker waits when the queue cannot give payloads: about a
/// second, jittered so the processors of a fleet do not knock in step.
const TAKE_RETRY: Backoff = Backoff::constant(Duration::from_secs(1));
/// When a payload the dead letters could not take is tried again.
const DEAD_LETTER_RETRY: Backoff = Backoff::constant(Duration::from_secs(5));

pub struct Worker {
    pub processor: Processor,
    pub queue: Arc<dyn Queue>,
    /// Takes the events of stored payloads to the event log.
    pub relay: Relay,
    /// Most payloads stored in one round of writes.
    pub batch_size: usize,
    /// Most bytes of payloads held and stored in one round of writes (a
    /// single larger payload still goes alone).
    pub batch_bytes: usize,
    /// Deliveries of a payload the store keeps refusing before it is
    /// dead-lettered (store outages are retried forever instead).
    pub max_deliveries: i64,
    /// `WHATSAPP_PHONE_NUMBER_ID`: the number data stored before numbers
    /// existed belongs to (see [`Store::adopt_numbers`](wa_store::Store::adopt_numbers)).
    pub default_number: Option<String>,
}

impl Worker {
    /// Consumes until cancelled. The batch in hand is finished first; what
    /// was fetched but not handled is redelivered later.
    pub async fn run(self, cancel: tokio_util::sync::CancellationToken) {
        let store = self.processor.store().clone();
        if wa_broker::retry_until("preparing the store", &cancel, || store.prepare())
            .await
            .is_none()
        {
            return;
        }
        // Before the first payload: a webhook would otherwise record its
        // number as home ahead of the default number.
        let default = self.default_number.as_deref();
        let Some(home) = wa_broker::retry_until("giving stored data its number", &cancel, || {
            store.adopt_numbers(default)
        })
        .await
        else {
            return;
        };
        tracing::info!(
            home_number = home.as_deref().unwrap_or("none yet"),
            batch_size = self.batch_size,
            batch_bytes = self.batch_bytes,
            "processing payloads"
        );
        // Events that a crashed writer left in the outbox.
        let sweeper = tokio::spawn(self.relay.clone().sweep_until(cancel.clone()));
        let limits = BatchLimits {
            count: self.batch_size.max(1),
            bytes: self.batch_bytes.max(1),
        };
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                batch = self.queue.next_batch(limits) => batch,
            };
            match batch {
                Ok(deliveries) => {
                    for group in by_size(deliveries, limits.bytes) {
                        self.handle(group).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take payloads; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = retry::pause(&TAKE_RETRY, 1) => {}
                    }
                }
            }
        }
        sweeper.await.ok();
        tracing::info!("processor worker stopped");
    }

    /// Stores a batch. When the store refuses the data itself, it may be
    /// one payload's fault: the payloads are retried one by one, so a bad
    /// one cannot hold back the others.
    async fn handle(&self, deliveries: Vec<Delivery>) {
        let mut pending = Vec::with_capacity(deliveries.len());
        let mut items = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match item(&delivery) {
                Ok(item) => {
                    items.push(item);
                    pending.push(delivery);
                }
                Err(e) => dead_letter(&delivery, &format!("unparseable payload: {e}")).await,
            }
        }
        if pending.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let writing = self.relay.writing();
        let processed = self
            .keeping_alive(&pending, self.processor.process(items))
            .await;
        tracing::debug!(payloads = pending.len(), elapsed = ?started.elapsed(), "batch stored");
        metrics::counter!("batches_total").increment(1);
        match processed {
            Ok(events) => {
                self.finish(&pending, &events).await;
                drop(writing);
                // Between batches: what writers that crashed left behind.
                self.relay.sweep_if_due().await;
            }
            Err(e) if e.kind == ErrorKind::Rejected && pending.len() > 1 => {
                tracing::warn!(error = %e, "batch refused; retrying its payloads one by one");
                for delivery in &pending {
                    let result = match item(delivery) {
                        Ok(item) => self.processor.process(vec![item]).await,
                        Err(e) => Err(StoreError::rejected(e.to_string())),
                    };
                    match result {
                        Ok(events) => self.finish(std::slice::from_ref(delivery), &events).await,
                        Err(e) => self.retry_later(delivery, &e).await,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, payloads = pending.len(), "batch failed; will be redelivered");
                for delivery in &pending {
                    self.retry_later(delivery, &e).await;
                }
            }
        }
    }

    /// Runs `work`, telling the queue now and then that `deliveries` are
    /// still being worked on, so a slow batch is not handed to another
    /// replica meanwhile (which would then process the same payloads).
    async fn keeping_alive<T>(
        &self,
        deliveries: &[Delivery],
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = (self.queue.redelivered_after() / 3).max(Duration::from_millis(100));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticks.tick() => {
                    let told = futures::future::join_all(deliveries.iter().map(|d| d.in_progress())).await;
                    if let Some(e) = told.into_iter().find_map(Result::err) {
                        tracing::warn!(error = %e, "could not extend the payloads' deadline");
                    }
                }
            }
        }
    }

    /// Takes the events of stored payloads to the event log, then
    /// acknowledges the payloads (a crash in between redelivers them:
    /// harmless, they are stored and their events are in the outbox).
    async fn finish(&self, deliveries: &[Delivery], events: &[Event]) {
        self.relay.relay(events).await;
        // All at once: the embedded queue commits concurrent acks together.
        let acks = futures::future::join_all(deliveries.iter().map(|d| d.ack())).await;
        for e in acks.into_iter().filter_map(Result::err) {
            tracing::warn!(error = %e, "ack failed; the payload will be redelivered (harmless)");
        }
        metrics::counter!("payloads_processed_total").increment(deliveries.len() as u64);
    }

    /// Retries with backoff; a payload the store keeps refusing is dead-lettered.
    async fn retry_later(&self, delivery: &Delivery, error: &StoreError) {
        if error.kind == ErrorKind::Rejected && delivery.attempt >= self.max_deliveries {
            dead_letter(
                delivery,
                &format!("refused by the store {} times: {error}", delivery.attempt),
            )
            .await;
            return;
        }
        let delay = retry::wait(&DELIVERY_RETRY, retry::attempt_number(delivery.attempt));
        if let Err(e) = delivery.retry_after(delay).await {
            tracing::warn!(error = %e, "retry not scheduled; the payload will be redelivered later");
        }
    }
}

/// Moves a payload to the dead letters; if that fails it stays queued.
async fn dead_letter(delivery: &Delivery, reason: &str) {
    tracing::error!(reason, id = %delivery.id, "payload dead-lettered");
    metrics::counter!("payloads_dead_lettered_total").increment(1);
    if let Err(e) = delivery.dead_letter(reason).await {
        tracing::warn!(error = %e, "dead letters unavailable; will retry");
        let delay = retry::wait(&DEAD_LETTER_RETRY, 1);
        delivery.retry_after(delay).await.ok();
    }
}

/// A delivery's payload, parsed.
fn item(delivery: &Delivery) -> Result<(RawPayload, Parsed), PayloadError> {
    let parsed = decode(delivery.kind, &delivery.body)?;
    let raw = RawPayload {
        id: delivery.id.clone(),
        body: delivery.body.clone(),
        received_at: delivery.enqueued_at,
    };
    Ok((raw, parsed))
}

/// Splits deliveries into groups of at most `bytes` of bodies (a larger
/// body goes alone), in order.
fn by_size(deliveries: Vec<Delivery>, bytes: usize) -> Vec<Vec<Delivery>> {
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    let mut size = 0;
    for delivery in deliveries {
        let len = delivery.body.len();
        match groups.last_mut() {
            Some(group) if size + len <= bytes => group.push(delivery),
            _ => {
                groups.push(vec![delivery]);
                size = 0;
            }
        }
        size += len;
    }
    groups
}
