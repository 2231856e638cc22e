//! Entrypoints: what feeds the bus from outside the process. The consumers
//! of the external bus (RabbitMQ's, and the in-process broker's) share what
//! is here: which messages the service takes ([`topology`](crate::Topology)),
//! the verdict on one delivery, and their counters. (HTTP lives in the
//! application, see `examples/allocation`.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::bus::MessageBus;
use crate::error::IncomingError;
use crate::message::Metadata;
use crate::trace_context::TraceContext;
use tracing::Instrument;

#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

/// How a service uses its broker, whichever it is (RabbitMQ's options hold
/// one; the in-process broker takes one): its queue, the exchange, and its
/// consumer's policy.
///
/// ```
/// use std::time::Duration;
/// use eda_core::entrypoints::ConsumerOptions;
///
/// let options = ConsumerOptions::new("orders")
///     .retry_delays([Duration::from_millis(200), Duration::from_secs(2)])
///     .max_attempts(3);
/// assert_eq!(options.dead_letter_queue(), "orders.dlq");
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) concurrency: usize,
    pub(crate) retry_delays: Vec<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) max_message_bytes: usize,
    pub(crate) bindings: Option<Vec<String>>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) partitions: u32,
}

impl ConsumerOptions {
    /// The service whose queue is `queue` (its name on the broker, and in
    /// the `app_id` of what it publishes). Defaults: exchange `eda.events`,
    /// 8 handlers at once, retries after 1 s, 5 s and 30 s, 5 attempts,
    /// messages up to 1 MiB, 10 s for in-flight messages at shutdown.
    pub fn new(queue: impl Into<String>) -> Self {
        ConsumerOptions {
            queue: queue.into(),
            exchange: "eda.events".into(),
            concurrency: 8,
            retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            max_attempts: 5,
            max_message_bytes: 1 << 20,
            bindings: None,
            shutdown_grace: Duration::from_secs(10),
            partitions: 8,
        }
    }

    /// How many ordered partitions the service has (8 by default, 1 to
    /// [`ORDERING_SLOTS`](crate::backend::ORDERING_SLOTS)): the queues
    /// `<queue>.ordered.<i>` of the messages whose type declares an
    /// ordering key. Each is consumed by one instance at a time, one
    /// message after another; different partitions proceed in parallel.
    /// Change it only with the partitions empty: a slot moves to another
    /// partition.
    pub fn ordered_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.clamp(1, crate::topology::ORDERING_SLOTS);
        self
    }

    /// The ordered partition `i`: `<queue>.ordered.<i>`.
    pub fn partition_queue(&self, i: u32) -> String {
        format!("{}.ordered.{i}", self.queue)
    }

    /// The ordered partitions' queues.
    pub fn partition_queues(&self) -> Vec<String> {
        (0..self.partitions)
            .map(|i| self.partition_queue(i))
            .collect()
    }

    /// The partition that takes the slot `slot`.
    pub(crate) fn partition_of_slot(&self, slot: u32) -> String {
        self.partition_queue(slot % self.partitions)
    }

    /// The topic exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// How many messages are handled at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The delays before attempts 2, 3, …; the last one repeats.
    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        let delays: Vec<_> = delays.into_iter().collect();
        if !delays.is_empty() {
            self.retry_delays = delays;
        }
        self
    }

    /// After this many failed attempts, a message is dead-lettered.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Larger messages are dead-lettered at once, unread.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Bind the service queue to these message names instead of those the
    /// bus consumes (see [`topology`](crate::Topology)): an override, for a
    /// queue that must be bound otherwise. What the service consumes and
    /// these leave out, and what they bind that it does not consume, are
    /// logged at start.
    pub fn bind(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.bindings = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// How long a shutdown waits for in-flight messages before returning
    /// them to the broker.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The service queue.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// The exchange.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }

    /// The dead-letter queue: `<queue>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// The queue that keeps the names the service queue was bound to:
    /// `<queue>.bindings` (RabbitMQ, which cannot list them).
    pub fn bindings_queue(&self) -> String {
        format!("{}.bindings", self.queue)
    }

    /// Where the relay parks the events that no queue took for
    /// [`RelayOptions::unroutable_retry_for`](crate::RelayOptions::unroutable_retry_for):
    /// `<exchange>.unrouted`, shared by the services of the exchange.
    pub fn unrouted_queue(&self) -> String {
        format!("{}.unrouted", self.exchange)
    }

    /// The consumer's policy.
    pub(crate) fn policy(&self) -> Policy<'_> {
        Policy {
            service: &self.queue,
            max_message_bytes: self.max_message_bytes,
            max_attempts: self.max_attempts,
        }
    }

    /// The topology of `bus` for this queue: bound to what the bus consumes,
    /// or to the names given to [`bind`](Self::bind).
    pub(crate) fn topology(&self, bus: &MessageBus) -> crate::topology::Topology {
        bus.topology(self.bindings.as_deref())
    }
}

/// Counters of a consumer of the external bus.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    pub(crate) consuming: AtomicBool,
    pub(crate) handled: AtomicU64,
    pub(crate) own_events: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    in_flight: AtomicU64,
    /// The same, by message name (see [`ConsumerMetrics::per_message`]).
    per_message: std::sync::Mutex<std::collections::BTreeMap<String, MessageCounts>>,
}

/// What a consumer did with the messages of one name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Handled and acknowledged.
    pub handled: u64,
    /// Failed and sent to be retried.
    pub retried: u64,
    /// Sent to the dead-letter queue.
    pub dead_lettered: u64,
}

/// What happened to one delivery, for the per-message counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counted {
    Handled,
    Retried,
    DeadLettered,
}

/// A delivery in flight (see [`ConsumerMetrics::in_flight`]): counted
/// while this lives, whatever way its handling ends (a panic or an abort
/// included).
pub(crate) struct InFlight<'a>(&'a ConsumerMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The names counted one by one; the deliveries of any other name (a
/// broker can carry any) are counted under [`OTHER_MESSAGES`].
const COUNTED_NAMES: usize = 1000;

/// Where a consumer counts the names past its first 1000 (see
/// [`ConsumerMetrics::per_message`]).
pub const OTHER_MESSAGES: &str = "(other)";

impl ConsumerMetrics {
    /// Whether the consumer is consuming now: its topology is declared and
    /// bound, and messages published from now on reach it.
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }
    /// Messages handled and acknowledged.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }
    /// Events this service published itself, that came back to its queue
    /// (it handles them, so its queue is bound to them): acknowledged
    /// without handling them again, since the instance that committed them
    /// handled them in-process.
    pub fn own_events(&self) -> u64 {
        self.own_events.load(Ordering::Relaxed)
    }
    /// Messages that failed and were sent to be retried.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }
    /// Messages sent to the dead-letter queue.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Times the consumer reconnected after the broker or the connection
    /// failed.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Deliveries being handled now (taken from the broker, not yet
    /// acknowledged, retried or dead-lettered): at most the consumer's
    /// prefetch.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a delivery in flight until the guard is dropped.
    pub(crate) fn in_flight_guard(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// What it did with the messages of each name: the first 1000 names
    /// seen one by one, any later one under [`OTHER_MESSAGES`] (a message
    /// of an unknown name is dead-lettered, and counted, too).
    pub fn per_message(&self) -> std::collections::BTreeMap<String, MessageCounts> {
        self.per_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts one delivery of `name`, with the totals.
    pub(crate) fn count(&self, name: &str, what: Counted) {
        let total = match what {
            Counted::Handled => &self.handled,
            Counted::Retried => &self.retried,
            Counted::DeadLettered => &self.dead_lettered,
        };
        total.fetch_add(1, Ordering::Relaxed);
        let mut per_message = self.per_message.lock().unwrap_or_else(|e| e.into_inner());
        let counts = match per_message.get_mut(name) {
            Some(counts) => counts,
            None => {
                let key = if per_message.len() < COUNTED_NAMES {
                    name
                } else {
                    OTHER_MESSAGES
                };
                per_message.entry(key.to_owned()).or_default()
            }
        };
        match what {
            Counted::Handled => counts.handled += 1,
            Counted::Retried => counts.retried += 1,
            Counted::DeadLettered => counts.dead_lettered += 1,
        }
    }
}

/// What to do with a delivery once handled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ack,
    /// An event of this service's own: acknowledged, not handled again.
    Own,
    Retry {
        attempts: u32,
        reason: String,
    },
    DeadLetter {
        attempts: u32,
        reason: String,
    },
}

/// A delivery, as a consumer read it from its broker.
pub(crate) struct Received<'a> {
    /// The message's name (its `type`).
    pub(crate) name: &'a str,
    /// Its metadata, or why it has none that can be used.
    pub(crate) metadata: Result<Metadata, String>,
    /// The service that published it, if it says.
    pub(crate) published_by: Option<&'a str>,
    /// The body.
    pub(crate) payload: &'a [u8],
    /// How many times handling it failed before.
    pub(crate) failed_before: u32,
    /// How many times it was delivered before and never settled (its
    /// consumer died, or lost its connection, while handling it), as the
    /// broker counts them: failed attempts too.
    pub(crate) unsettled_before: u32,
    /// The trace it continues (see [`TraceContext`]).
    pub(crate) trace: &'a TraceContext,
    /// The broker, as OpenTelemetry's `messaging.system` names it.
    pub(crate) system: &'static str,
}

/// How a consumer treats failures.
pub(crate) struct Policy<'a> {
    /// The consuming service (its queue's name).
    pub(crate) service: &'a str,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_attempts: u32,
}

/// The verdict on one delivery: handled (or an own event), to retry, or to
/// dead-letter at once (too large, no usable id, a message this service
/// does not take, unknown or malformed, or one whose attempts were spent by
/// deliveries never settled) or after its last attempt. A handler that
/// panics is a failure like any other.
pub(crate) async fn verdict(bus: &MessageBus, policy: &Policy<'_>, d: Received<'_>) -> Verdict {
    let failed_before = d.failed_before.saturating_add(d.unsettled_before);
    let refuse = |reason: String| Verdict::DeadLetter {
        attempts: failed_before,
        reason,
    };
    // A message that killed its consumer each time it was handled (or was
    // in flight whenever the connection broke) is not handled again once
    // its attempts are spent: dead-lettered here, with the reason, before
    // the broker's delivery limit would.
    if d.unsettled_before > 0 && failed_before >= policy.max_attempts {
        return refuse(format!(
            "delivered {} times and never settled: its consumer stopped or lost the \
             broker while handling it, each time",
            d.unsettled_before
        ));
    }
    if d.payload.len() > policy.max_message_bytes {
        return refuse(format!(
            "message too large: {} bytes, the limit is {}",
            d.payload.len(),
            policy.max_message_bytes
        ));
    }
    let metadata = match d.metadata {
        Ok(m) => m,
        Err(reason) => return refuse(reason),
    };
    match bus.admit(d.name, d.published_by, policy.service) {
        Ok(true) => {}
        Ok(false) => return Verdict::Own,
        Err(e) => return refuse(e.to_string()),
    }
    // The span of the delivery, a child of the span that committed the
    // message in the service that published it (its trace context), so
    // that one trace follows the message across services. Its handlers'
    // `process` spans are inside it, with the message's ids (not repeated
    // here: every log line of a handler shows both spans' fields).
    let span = tracing::info_span!(
        "receive",
        otel.name = %format_args!("receive {}", d.name),
        otel.kind = "consumer",
        messaging.system = d.system,
        messaging.operation.name = "receive",
        messaging.destination.name = d.name,
        messaging.consumer.group.name = policy.service,
        trace_id = tracing::field::Empty,
    );
    d.trace.continue_in(&span);
    TraceContext::record_trace_id(&span);
    // In a task of its own, so that a panicking handler is a failure of
    // this message, not of the consumer; aborted with the caller (a
    // consumer's shutdown that outlived its grace), so that no handler
    // outlives the consumer.
    let handled = AbortOnDrop(tokio::spawn({
        let bus = bus.clone();
        let name = d.name.to_owned();
        let payload = d.payload.to_vec();
        async move { bus.handle_incoming(&name, metadata, &payload).await }.instrument(span)
    }))
    .await;
    let reason = match handled {
        Ok(Ok(())) => return Verdict::Ack,
        Ok(Err(e @ (IncomingError::UnknownMessage { .. } | IncomingError::Malformed { .. }))) => {
            return refuse(e.to_string());
        }
        Ok(Err(e)) => e.to_string(),
        Err(join) if join.is_panic() => {
            format!("handler of `{}` panicked: {}", d.name, panic_message(join))
        }
        Err(join) => format!("handler of `{}` was cancelled: {join}", d.name),
    };
    after_failure(failed_before, policy.max_attempts, reason)
}

/// The verdict on a delivery of an ordered partition, a failure retried in
/// place: `attempt(failed_here)` gives the verdict of one more attempt; a
/// [`Verdict::Retry`] waits for its delay (the messages behind it in the
/// partition wait too: a retry queue would let them overtake it) and
/// attempts again, until the message is handled or its last attempt
/// dead-letters it (the next message of its key then follows: a gap,
/// never a swap). `None` when `stop` is set while it waits.
pub(crate) async fn in_order<F, Fut>(
    mut attempt: F,
    delays: &[Duration],
    metrics: &ConsumerMetrics,
    name: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Verdict>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Verdict>,
{
    let mut failed_here = 0;
    loop {
        match attempt(failed_here).await {
            Verdict::Retry { attempts, reason } => {
                failed_here += 1;
                metrics.count(name, Counted::Retried);
                let delay = retry_delay(delays, attempts);
                tracing::warn!(
                    attempts,
                    reason,
                    ?delay,
                    "ordered message failed, retrying in place (the messages behind it wait)"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(stop) => return None,
                }
            }
            settled => return Some(settled),
        }
    }
}

/// Resolves once `stop` is set (its guard dropped here, not held across
/// the caller's awaits).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The verdict on a message that failed again after `failed_before`
/// failures. The count saturates: a header that claims `u32::MAX` failures
/// (anyone can publish one) dead-letters the message, it does not overflow.
pub(crate) fn after_failure(failed_before: u32, max_attempts: u32, reason: String) -> Verdict {
    let attempts = failed_before.saturating_add(1);
    if attempts >= max_attempts {
        Verdict::DeadLetter { attempts, reason }
    } else {
        Verdict::Retry { attempts, reason }
    }
}

/// The delay before attempt `attempts + 1`: the `attempts`th of `delays`,
/// the last one repeating.
pub(crate) fn retry_delay(delays: &[std::time::Duration], attempts: u32) -> std::time::Duration {
    delays[(attempts as usize)
        .saturating_sub(1)
        .min(delays.len().saturating_sub(1))]
}

fn panic_message(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each name is counted by outcome; past 1000 names (a broker carries
    /// whatever a producer sends) the rest share one entry, so the counts
    /// cannot grow without bound.
    #[test]
    fn messages_are_counted_by_name_up_to_a_bound() {
        let metrics = ConsumerMetrics::default();
        metrics.count("a", Counted::Handled);
        metrics.count("a", Counted::Handled);
        metrics.count("a", Counted::Retried);
        metrics.count("b", Counted::DeadLettered);
        let counts = metrics.per_message();
        assert_eq!(
            counts["a"],
            MessageCounts {
                handled: 2,
                retried: 1,
                dead_lettered: 0
            }
        );
        assert_eq!(counts["b"].dead_lettered, 1);
        assert_eq!(
            (
                metrics.handled(),
                metrics.retried(),
                metrics.dead_lettered()
            ),
            (2, 1, 1)
        );

        for i in 0..2000 {
            metrics.count(&format!("n{i}"), Counted::DeadLettered);
        }
        let counts = metrics.per_message();
        assert_eq!(counts.len(), COUNTED_NAMES + 1);
        assert_eq!(counts[OTHER_MESSAGES].dead_lettered, 2000 - 998);
        metrics.count("a", Counted::Handled);
        assert_eq!(
            metrics.per_message()["a"].handled,
            3,
            "a name seen stays counted"
        );
    }

    /// A header claiming `u32::MAX` failures overflowed the count: a panic
    /// in a debug build (the delivery left unacknowledged), a retry with
    /// the count reset to 0 in a release build.
    #[test]
    fn a_huge_attempt_count_dead_letters_without_overflow() {
        let reason = || "boom".to_owned();
        assert_eq!(
            after_failure(u32::MAX, 5, reason()),
            Verdict::DeadLetter {
                attempts: u32::MAX,
                reason: reason()
            }
        );
        assert_eq!(
            after_failure(0, 5, reason()),
            Verdict::Retry {
                attempts: 1,
                reason: reason()
            }
        );
        assert_eq!(
            after_failure(4, 5, reason()),
            Verdict::DeadLetter {
                attempts: 5,
                reason: reason()
            }
        );
    }

    #[test]
    fn the_last_retry_delay_repeats() {
        use std::time::Duration;
        let delays = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(retry_delay(&delays, 1), Duration::from_secs(1));
        assert_eq!(retry_delay(&delays, 2), Duration::from_secs(5));
        assert_eq!(retry_delay(&delays, 9), Duration::from_secs(5));
    }
}
