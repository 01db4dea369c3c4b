//! The sleeping half of the one retry policy ([`wa_core::retry`], the
//! pure schedule): a random jitter source, a wait taken from the schedule,
//! and [`retry_until`] for what must come up before work starts.
//!
//! Here because every running part (gateways, processor, the adapters,
//! the engine) already links this crate and tokio; a crate of its own for
//! these few lines would add a node to every tree and separate nothing.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
pub use wa_core::retry::{Backoff, attempt_number};

/// A number in 0..1, fresh at each call: the jitter of running code.
/// Each `RandomState` is keyed anew (from the OS's randomness once per
/// thread, then counted on), which is all jitter needs: replicas and
/// tasks that failed together draw different numbers.
pub fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(()) >> 11;
    // 53 bits: exactly representable, in 0..1.
    bits as f64 / (1_u64 << 53) as f64
}

/// The wait after failed attempt `attempt` (1 for the first), jittered.
pub fn wait(policy: &Backoff, attempt: u32) -> Duration {
    policy.delay(attempt, random_unit())
}

/// Sleeps the wait after failed attempt `attempt`.
pub async fn pause(policy: &Backoff, attempt: u32) {
    tokio::time::sleep(wait(policy, attempt)).await;
}

/// How [`retry_until`] waits: 100 ms doubling to 5 s, so a service that
/// starts before NATS or MongoDB connects soon after they come up, and a
/// fleet restarted together does not knock on them in step.
pub const STARTUP_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Retries `attempt` on [`STARTUP_RETRY`] until it succeeds or `cancel`
/// fires (`None`); used while NATS or MongoDB come up.
pub async fn retry_until<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    cancel: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut failed = 0_u32;
    loop {
        let error = match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => e,
        };
        failed = failed.saturating_add(1);
        let delay = wait(&STARTUP_RETRY, failed);
        tracing::warn!(error = %error, "{what} failed; retrying in {delay:?}");
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn random_units_lie_in_zero_to_one_and_differ() {
        let units: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        let mut distinct = units.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 990, "{} distinct of 1000", distinct.len());
        // Spread over the range, not bunched.
        assert!(units.iter().any(|u| *u < 0.1) && units.iter().any(|u| *u > 0.9));
    }

    #[test]
    fn waits_stay_within_the_schedule() {
        for attempt in 1..=10 {
            let ceiling = STARTUP_RETRY.ceiling(attempt);
            let delay = wait(&STARTUP_RETRY, attempt);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{attempt}: {delay:?}"
            );
        }
    }

    #[tokio::test]
    async fn retry_until_returns_the_first_success() {
        let calls = AtomicU32::new(0);
        let cancel = CancellationToken::new();
        let got = retry_until("testing", &cancel, || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0..=2 => Err("not yet"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got, Some(3));
    }

    #[tokio::test]
    async fn retry_until_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let got: Option<()> =
            retry_until("testing", &cancel, || async { Err::<(), _>("down") }).await;
        assert_eq!(got, None);
    }
}
