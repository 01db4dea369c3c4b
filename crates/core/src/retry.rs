//! The one retry policy: how long to wait after a failed attempt before
//! the next. Every retry of the workspace uses it, whether the wait is
//! slept (`wa_broker::retry`), handed to the queue (`retry_after`) or
//! stored as a send's due time ([`crate::outbound::SEND_RETRY`]).
//!
//! Written here rather than taken from a crate such as `backon`: those
//! drive a loop that sleeps, while two of our three kinds of wait are not
//! slept by the code that computes them (a queue redelivers the payload,
//! another replica may take the send). A schedule as a pure function of
//! the attempt serves all three, is tested without a clock, and keeps
//! this crate free of tokio.
//!
//! The shape: doubling from a first wait up to a cap, then "equal jitter"
//! (a random part of up to half is taken off). Jitter spreads replicas,
//! payloads or sends that failed together, so they do not all come back
//! at the same instant and fail together again; keeping the upper half
//! keeps a floor, so no retry spins, and no wait grows past its ceiling.

use std::time::Duration;

/// Waits that double after each failed attempt, from `first` up to `cap`,
/// less a random part of up to half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
}

impl Backoff {
    /// A schedule doubling from `first` to `cap` (a `cap` below `first`
    /// is taken as `first`: a constant wait).
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap }
    }

    /// The same wait after every attempt (still jittered).
    pub const fn constant(wait: Duration) -> Self {
        Self::new(wait, wait)
    }

    /// The longest wait after failed attempt `attempt` (1 for the first;
    /// 0 is taken as 1): `first` doubled `attempt - 1` times, at most the
    /// cap.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 times any first wait is past any cap: no need to go further.
        let doublings = attempt.saturating_sub(1).min(31);
        self.first
            .saturating_mul(1 << doublings)
            .min(self.cap.max(self.first))
    }

    /// The wait after failed attempt `attempt`, given `unit`, a number in
    /// 0..=1 from a random source (clamped into it; NaN counts as 0): the
    /// ceiling less `unit` times half of it. 0 waits the whole ceiling, 1
    /// half of it.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        self.ceiling(attempt).mul_f64(1.0 - 0.5 * unit)
    }
}

/// A delivery's attempt (a broker's count, 1 for the first delivery) as
/// the attempt number of [`Backoff`].
pub fn attempt_number(delivered: i64) -> u32 {
    u32::try_from(delivered.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_the_first_wait_up_to_the_cap() {
        let policy = Backoff::new(250 * MS, 32_000 * MS);
        let ceilings: Vec<u128> = (1..=10).map(|n| policy.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 32000, 32000]
        );
        assert_eq!(policy.ceiling(0), policy.ceiling(1));
        assert_eq!(policy.ceiling(u32::MAX), 32_000 * MS);
    }

    #[test]
    fn a_constant_schedule_and_a_cap_below_the_first_wait_do_not_grow() {
        assert_eq!(Backoff::constant(5 * MS).ceiling(9), 5 * MS);
        assert_eq!(Backoff::new(5 * MS, MS).ceiling(9), 5 * MS);
    }

    #[test]
    fn jitter_takes_off_at_most_half() {
        let policy = Backoff::new(1000 * MS, 300_000 * MS);
        assert_eq!(policy.delay(1, 0.0), 1000 * MS);
        assert_eq!(policy.delay(1, 1.0), 500 * MS);
        assert_eq!(policy.delay(2, 0.5), 1500 * MS);
        assert_eq!(policy.delay(1, -3.0), 1000 * MS);
        assert_eq!(policy.delay(1, 7.0), 500 * MS);
        assert_eq!(policy.delay(1, f64::NAN), 1000 * MS);
    }

    #[test]
    fn attempt_numbers_of_deliveries_are_at_least_one() {
        assert_eq!(attempt_number(-1), 1);
        assert_eq!(attempt_number(0), 1);
        assert_eq!(attempt_number(3), 3);
        assert_eq!(attempt_number(i64::MAX), u32::MAX);
    }

    proptest! {
        #[test]
        fn a_delay_lies_between_half_its_ceiling_and_its_ceiling(
            first in 1u64..100_000,
            cap in 0u64..10_000_000,
            attempt in any::<u32>(),
            unit in any::<f64>(),
        ) {
            let policy = Backoff::new(ms(first), ms(cap));
            let ceiling = policy.ceiling(attempt);
            let delay = policy.delay(attempt, unit);
            prop_assert!(delay <= ceiling);
            // `mul_f64` rounds to the nanosecond.
            prop_assert!(delay + Duration::from_nanos(1) >= ceiling / 2);
            prop_assert!(ceiling >= ms(first));
            prop_assert!(ceiling <= ms(cap.max(first)));
        }

        #[test]
        fn ceilings_never_shrink_and_at_most_double(
            first in 1u64..100_000,
            cap in 0u64..10_000_000,
            attempt in 1u32..200,
        ) {
            let policy = Backoff::new(ms(first), ms(cap));
            let (this, next) = (policy.ceiling(attempt), policy.ceiling(attempt + 1));
            prop_assert!(next >= this);
            prop_assert!(next <= this * 2);
        }

        #[test]
        fn more_jitter_never_waits_longer(
            attempt in 1u32..40,
            a in 0.0f64..=1.0,
            b in 0.0f64..=1.0,
        ) {
            let policy = Backoff::new(MS, 60_000 * MS);
            let (less, more) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(policy.delay(attempt, more) <= policy.delay(attempt, less));
        }
    }
}
