//! Events travel from the store's outbox, where each change set commits
//! them with its changes, to the event log (JetStream, or the all-in-one's
//! SQLite file) that clients read. The writer relays its own events right
//! after committing; a sweeper relays what a writer that crashed in
//! between left behind. The log keeps one event per id, so an event
//! relayed twice (the writer and the sweeper, or a retry) is there once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::broker::EventBus;
use crate::domain::Event;
use crate::store::Store;

/// Outbox events the sweeper leaves to their writer for this long.
const SWEEP_AGE: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_secs(2);
const SWEEP_LIMIT: usize = 1_000;

#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    sweep_age: Duration,
    /// When this process's batch in progress started, if one is.
    writing_since: Arc<Mutex<Option<Instant>>>,
}

/// A batch being written; see [`Relay::writing`].
pub struct Writing(Arc<Mutex<Option<Instant>>>);

impl Drop for Writing {
    fn drop(&mut self) {
        if let Ok(mut since) = self.0.lock() {
            *since = None;
        }
    }
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            store,
            bus,
            sweep_age: SWEEP_AGE,
            writing_since: Arc::default(),
        }
    }

    /// Marks a batch this process is writing: until it is relayed, the
    /// sweeper leaves alone the outbox events committed since it started
    /// (they are probably its own, about to be relayed; a batch can take
    /// longer than the sweep age on a slow store).
    pub fn writing(&self) -> Writing {
        if let Ok(mut since) = self.writing_since.lock() {
            *since = Some(Instant::now());
        }
        Writing(self.writing_since.clone())
    }

    /// How old outbox events must be to be swept now.
    fn sweepable_age(&self) -> Duration {
        let busy = self
            .writing_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .map_or(Duration::ZERO, |since| since.elapsed());
        self.sweep_age + busy
    }

    /// Sweeps outbox events as soon as they are `age` old (tests).
    pub fn with_sweep_age(mut self, age: Duration) -> Self {
        self.sweep_age = age;
        self
    }

    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Appends events just committed to the log and forgets them in the
    /// outbox. On failure (`false`) they stay there for the sweeper: the
    /// change is stored and its events will follow.
    pub async fn relay(&self, events: &[Event]) -> bool {
        if events.is_empty() {
            return true;
        }
        if let Err(e) = self.bus.append(events).await {
            tracing::warn!(error = %e, "events wait in the outbox for the next sweep");
            return false;
        }
        metrics::counter!("events_published_total").increment(events.len() as u64);
        let ids: Vec<String> = events.iter().map(Event::id).collect();
        if let Err(e) = self.store.relayed(&ids).await {
            // Relayed again by a sweep: harmless, the log keeps one.
            tracing::debug!(error = %e, "outbox not cleared; the sweeper will");
        }
        true
    }

    /// Relays what writers left in the outbox; returns how many (0 when
    /// they could not be relayed now).
    pub async fn sweep(&self) -> usize {
        match self.store.outbox(self.sweepable_age(), SWEEP_LIMIT).await {
            Ok(events) if !events.is_empty() => {
                tracing::info!(
                    events = events.len(),
                    "relaying events a writer left behind"
                );
                metrics::counter!("events_swept_total").increment(events.len() as u64);
                if self.relay(&events).await {
                    events.len()
                } else {
                    0
                }
            }
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                0
            }
        }
    }

    /// Sweeps now and then until cancelled.
    pub async fn sweep_until(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            while self.sweep().await == SWEEP_LIMIT && !cancel.is_cancelled() {}
        }
    }
}
