//! Events travel from the store's outbox, where each change set commits
//! them with its changes, to the event log (JetStream, or the all-in-one's
//! SQLite file) that clients read. The writer relays its own events right
//! after committing; a sweeper relays what a writer that crashed in
//! between left behind. The log keeps one event per id, so an event
//! relayed twice (the writer and the sweeper, or a retry) is there once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use wa_broker::EventBus;
use wa_core::domain::Event;
use wa_store::Store;

/// Outbox events the sweeper leaves to their writer for this long.
const SWEEP_AGE: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_secs(2);
const SWEEP_LIMIT: usize = 1_000;
/// Pages of [`SWEEP_LIMIT`] events one sweep relays at most.
const SWEEP_PAGES: usize = 5;

#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    sweep_age: Duration,
    /// Whether this process is writing a batch now.
    writing: Arc<AtomicBool>,
    /// When the outbox was last swept.
    swept: Arc<Mutex<Instant>>,
    /// Held while sweeping: one sweep at a time per process.
    sweeping: Arc<tokio::sync::Mutex<()>>,
}

/// A batch being written; see [`Relay::writing`].
pub struct Writing(Arc<AtomicBool>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn EventBus>) -> Self {
        Self {
            store,
            bus,
            sweep_age: SWEEP_AGE,
            writing: Arc::default(),
            swept: Arc::new(Mutex::new(Instant::now())),
            sweeping: Arc::default(),
        }
    }

    /// Marks a batch this process is writing, until it is relayed: the
    /// background sweeper stays quiet meanwhile (on a slow store a batch
    /// outlasts the sweep age, so the sweeper would relay the batch's own
    /// events a second time, and its outbox query competes with the
    /// batch's writes). The writer sweeps between batches instead
    /// ([`Relay::sweep_if_due`]).
    pub fn writing(&self) -> Writing {
        self.writing.store(true, Ordering::Release);
        Writing(self.writing.clone())
    }

    /// Sweeps if the last sweep is [`SWEEP_EVERY`] old and no other sweep
    /// of this process is running; a few pages at most, so that a large
    /// leftover (or an outbox that can't be cleared) never holds the
    /// writer up for long: the next sweep goes on.
    pub async fn sweep_if_due(&self) {
        let Ok(_sweeping) = self.sweeping.try_lock() else {
            return;
        };
        {
            let Ok(swept) = self.swept.lock() else {
                return;
            };
            if swept.elapsed() < SWEEP_EVERY {
                return;
            }
        }
        for _ in 0..SWEEP_PAGES {
            if self.sweep().await < SWEEP_LIMIT {
                break;
            }
        }
        if let Ok(mut swept) = self.swept.lock() {
            *swept = Instant::now();
        }
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
        match self.store.outbox(self.sweep_age, SWEEP_LIMIT).await {
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
            if !self.writing.load(Ordering::Acquire) {
                self.sweep_if_due().await;
            }
        }
    }
}
