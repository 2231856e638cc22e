//! Retry policies: how often, and how patiently, the bus runs a handler again.

use std::time::Duration;

/// How many times a handler runs at most, and how long the bus waits between
/// attempts (exponential backoff with jitter).
///
/// ```
/// use std::time::Duration;
/// use eda_core::RetryPolicy;
///
/// let policy = RetryPolicy::new(5).backoff(Duration::from_millis(10), Duration::from_secs(1));
/// assert_eq!(policy.attempts(), 5);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    attempts: u32,
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: bool,
}

impl RetryPolicy {
    /// At most `attempts` runs (1 means no retry), waiting 10 ms, 20 ms, 40 ms, …
    /// up to 1 s between them, with jitter.
    pub fn new(attempts: u32) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            initial: Duration::from_millis(10),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: true,
        }
    }

    /// Run once, never retry.
    pub fn never() -> Self {
        Self::new(1)
    }

    /// The first delay and the longest one.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// Each delay is the previous one times this (2 by default).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// Whether delays are randomised (on by default: "full jitter", so that
    /// handlers that conflicted do not retry in lockstep).
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// At most this many runs.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long to wait after the failed attempt number `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        // In seconds, capped before it becomes a `Duration`:
        // `Duration::mul_f64` panics when the product overflows (a
        // multiplier of 10 by the 24th attempt, an infinite one at once).
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let base = if self.initial.is_zero() {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(secs)
                .unwrap_or(self.max)
                .min(self.max)
        };
        if self.jitter {
            // Full jitter in [base/2, base]: never zero, never in lockstep.
            base / 2 + base.mul_f64(fastrand::f64() / 2.0)
        } else {
            base
        }
    }
}

/// The delays of one run of failures, after a [`RetryPolicy`] without an
/// end: what the relay, the consumer's reconnection and SQLite's start wait
/// between tries. [`reset`](Self::reset) after a success.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    failures: u32,
}

impl Backoff {
    /// From `initial`, doubling up to `max`, with jitter.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            policy: RetryPolicy::new(u32::MAX).backoff(initial, max),
            failures: 0,
        }
    }

    /// The delay after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// A success: the next failure waits the shortest again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for RetryPolicy {
    /// Three attempts, 10 ms to 1 s apart.
    fn default() -> Self {
        Self::new(3)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_backoff_doubles_to_its_longest_and_starts_again_after_a_success() {
        let mut b = super::Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (d, max) in delays.iter().zip(bounds) {
            let max = Duration::from_millis(max);
            assert!(*d >= max / 2 && *d <= max, "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    use super::*;

    #[test]
    fn delays_grow_to_the_maximum() {
        let p = RetryPolicy::new(10)
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .jitter(false);
        let d: Vec<_> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(d, vec![10, 20, 40, 50, 50]);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let p = RetryPolicy::new(3).backoff(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let d = p.delay(1);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }

    /// `Duration::mul_f64` before the cap panicked: a multiplier of 10 on
    /// the 24th attempt, an infinite one on the 2nd.
    #[test]
    fn large_multipliers_and_attempts_stay_at_the_maximum() {
        for multiplier in [10.0, 1e300, f64::INFINITY, f64::NAN] {
            let p = RetryPolicy::new(u32::MAX)
                .backoff(Duration::from_millis(10), Duration::from_secs(2))
                .multiplier(multiplier)
                .jitter(false);
            for attempt in [2, 24, 64, 65, u32::MAX] {
                let d = p.delay(attempt);
                assert!(d <= Duration::from_secs(2), "{multiplier} {attempt}: {d:?}");
            }
            assert_eq!(p.delay(1), Duration::from_millis(10));
        }
        let none = RetryPolicy::new(3)
            .backoff(Duration::ZERO, Duration::ZERO)
            .multiplier(f64::INFINITY);
        assert_eq!(none.delay(5), Duration::ZERO);
    }

    #[test]
    fn at_least_one_attempt() {
        assert_eq!(RetryPolicy::new(0).attempts(), 1);
    }
}
