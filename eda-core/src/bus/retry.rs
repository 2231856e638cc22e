//! The retry of a handler call: one loop for commands (run again on a
//! version conflict) and event handlers (run again on a failure, unless
//! they committed), waiting the [`RetryPolicy`]'s backoff between runs.
//!
//! It sits outside the layers: each run goes through the whole stack
//! again (the bus's span, the user's layers, the handler), which a layer
//! cannot do with its [`Next`](crate::Next), run once.

use std::time::Duration;

use crate::future::BoxFuture;
use crate::retry::RetryPolicy;

/// One handler call, that the loop runs as often as it must.
pub(super) trait Attempt {
    /// How a run ended.
    type Outcome;
    /// Runs the handler (through the layers) once; `attempt` from 1.
    fn run(&mut self, attempt: u32) -> BoxFuture<'_, Self::Outcome>;
    /// Whether the policy may run it again after this outcome.
    fn retryable(&self, outcome: &Self::Outcome) -> bool;
    /// It is run again after `delay`: counted and logged.
    fn retrying(&self, outcome: &Self::Outcome, attempt: u32, delay: Duration);
    /// It would be run again, but the policy's attempts are spent.
    fn out_of_attempts(&self, outcome: &Self::Outcome, attempt: u32);
}

/// Runs `call` until it ends in an outcome that is not retryable, or the
/// policy's attempts are spent. Returns the last outcome and the number of
/// runs.
///
/// The first run is the callers' to write out (`call.run(1)`, then
/// [`after_first`] only when it is retryable, boxed): most calls end at
/// once, and a nested future of this loop in each call's would be built
/// and dropped for nothing (about 80 instructions a call).
#[cfg(test)]
pub(super) async fn run<A: Attempt>(policy: &RetryPolicy, call: &mut A) -> (A::Outcome, u32) {
    let outcome = call.run(1).await;
    if call.retryable(&outcome) {
        after_first(policy, call, outcome).await
    } else {
        (outcome, 1)
    }
}

/// The loop after a first run whose `outcome` is retryable.
pub(super) async fn after_first<A: Attempt>(
    policy: &RetryPolicy,
    call: &mut A,
    mut outcome: A::Outcome,
) -> (A::Outcome, u32) {
    let mut attempt = 1;
    loop {
        if attempt >= policy.attempts() {
            call.out_of_attempts(&outcome, attempt);
            return (outcome, attempt);
        }
        let delay = policy.delay(attempt);
        call.retrying(&outcome, attempt, delay);
        tokio::time::sleep(delay).await;
        attempt += 1;
        outcome = call.run(attempt).await;
        if !call.retryable(&outcome) {
            return (outcome, attempt);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Fails `failures` times (retryably), then succeeds; records what the
    /// loop told it.
    struct Flaky {
        failures: u32,
        seen: Mutex<Vec<String>>,
    }

    impl Attempt for Flaky {
        type Outcome = Result<u32, u32>;
        fn run(&mut self, attempt: u32) -> BoxFuture<'_, Result<u32, u32>> {
            let result = if attempt <= self.failures {
                Err(attempt)
            } else {
                Ok(attempt)
            };
            Box::pin(async move { result })
        }
        fn retryable(&self, outcome: &Result<u32, u32>) -> bool {
            outcome.is_err()
        }
        fn retrying(&self, _: &Result<u32, u32>, attempt: u32, delay: Duration) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("retry {attempt} after {delay:?}"));
        }
        fn out_of_attempts(&self, _: &Result<u32, u32>, attempt: u32) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("spent at {attempt}"));
        }
    }

    fn flaky(failures: u32) -> Flaky {
        Flaky {
            failures,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy::new(attempts)
            .backoff(Duration::from_millis(1), Duration::from_millis(4))
            .jitter(false)
    }

    #[tokio::test(start_paused = true)]
    async fn runs_again_until_the_outcome_is_not_retryable() {
        let mut call = flaky(2);
        assert_eq!(run(&policy(5), &mut call).await, (Ok(3), 3));
        assert_eq!(
            call.seen.into_inner().unwrap(),
            ["retry 1 after 1ms", "retry 2 after 2ms"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_the_attempts_are_spent_and_says_so() {
        let mut call = flaky(10);
        assert_eq!(run(&policy(3), &mut call).await, (Err(3), 3));
        assert_eq!(
            call.seen.into_inner().unwrap(),
            ["retry 1 after 1ms", "retry 2 after 2ms", "spent at 3"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_that_is_not_retryable_ends_it_at_once() {
        let mut call = flaky(0);
        assert_eq!(run(&policy(3), &mut call).await, (Ok(1), 1));
        assert!(call.seen.into_inner().unwrap().is_empty());
    }
}
