//! The outbox relay (its documentation is on [`OutboxRelay`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::MessageId;
use crate::outbox::{ExternalMessage, OutboxEntry, OutboxStore};
use crate::retry::{Backoff, RetryPolicy};

/// What the broker said of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Stored by the broker.
    Confirmed,
    /// No queue was bound to its routing key: no one received it. The relay
    /// keeps it and publishes it again later.
    Unroutable,
}

/// A broker the relay publishes to.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes the messages in order, pipelined, and waits for the
    /// broker's confirmations. Returns what happened to each message of the
    /// confirmed prefix; an error stops at the first message not confirmed
    /// (it and the rest stay unsent).
    fn publish<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, (Vec<Delivery>, Option<Error>)>;

    /// Keeps messages that no queue took for
    /// [`RelayOptions::unroutable_retry_for`] where an operator finds them
    /// (RabbitMQ: the queue `<exchange>.unrouted`), with `reason`; `Ok` once
    /// the broker has them all. The default cannot: the relay then goes on
    /// publishing them at the longest delay.
    fn park<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let _ = (messages, reason);
        Box::pin(std::future::ready(Err(Error::Broker(
            "this broker cannot park messages".into(),
        ))))
    }
}

/// How the relay works.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Rows read and published per batch (the window of unconfirmed
    /// messages).
    pub batch: usize,
    /// How long to wait for a commit notification before looking again
    /// (the fallback for commits of other instances).
    pub poll: Duration,
    /// How long a lease lasts; it is renewed at a third of that.
    pub lease: Duration,
    /// The first delay after a failure; it doubles up to `max_backoff`
    /// (each wait drawn between half and all of it, so that instances that
    /// failed together do not retry together).
    pub backoff: Duration,
    /// The longest delay after failures.
    pub max_backoff: Duration,
    /// How long [`OutboxRelay::shutdown`] keeps publishing what is left.
    /// Under steady load the outbox never empties; what is left after this
    /// stays in the outbox, for the next instance (nothing is lost).
    pub flush_timeout: Duration,
    /// The first delay before an event the broker could not route is
    /// published again; it doubles up to `unroutable_max_backoff`.
    pub unroutable_backoff: Duration,
    /// The longest delay between publications of an unroutable event.
    pub unroutable_max_backoff: Duration,
    /// How long after its creation an event that no queue took is
    /// published again before it is parked ([`Publisher::park`]).
    pub unroutable_retry_for: Duration,
}

impl Default for RelayOptions {
    /// Batches of 256, polling every 200 ms, leases of 10 s, backoff 100 ms
    /// to 5 s, up to 10 s of flushing at shutdown; unroutable events
    /// published again after 1 s, doubling to 1 min, for 15 min, then
    /// parked.
    fn default() -> Self {
        RelayOptions {
            batch: 256,
            poll: Duration::from_millis(200),
            lease: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(10),
            unroutable_backoff: Duration::from_secs(1),
            unroutable_max_backoff: Duration::from_secs(60),
            unroutable_retry_for: Duration::from_secs(15 * 60),
        }
    }
}

/// Counters of a relay.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    published: AtomicU64,
    unroutable: AtomicU64,
    parked: AtomicU64,
    failures: AtomicU64,
}

impl RelayMetrics {
    /// Messages the broker confirmed and routed to a queue.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Publications the broker could not route to any queue (each kept in
    /// the outbox and published again: one event can count several times).
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
    /// Events that no queue took within
    /// [`RelayOptions::unroutable_retry_for`], parked
    /// ([`Publisher::park`]).
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
    /// Batches that failed (the broker or the database), and were retried.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The outbox relay: publishes the external events that units of work wrote
/// to the outbox, after their commit, and marks each row sent only once the
/// broker confirmed it.
///
/// The relay knows no database and no broker: a database adapter is an
/// [`OutboxStore`], a broker (RabbitMQ, the in-process broker) a
/// [`Publisher`]. One instance of a service publishes at a time (it holds a
/// lease, renewed while it runs); if it dies, another takes over when the
/// lease expires. Rows are published in the order they were written, in
/// pipelined batches; a row whose publication was not confirmed stays
/// unsent and is published again (consumers remove the duplicates with
/// their inbox).
///
/// **Nothing is dropped on the way out** (rule 10 of DESIGN.md). An event
/// the broker cannot route (no queue is bound to its name: its consumers
/// are not deployed yet, or were bound by hand and lost it) is not marked
/// sent: it stays in the outbox, is counted
/// ([`RelayMetrics::unroutable`]) and logged once (its name and id), and
/// is published again after a delay that doubles, from
/// [`RelayOptions::unroutable_backoff`] up to
/// [`RelayOptions::unroutable_max_backoff`]. The service that consumes it
/// receives it once its queue is bound. One that no queue took within
/// [`RelayOptions::unroutable_retry_for`] of its creation is *parked*
/// ([`Publisher::park`]; on RabbitMQ the durable queue
/// `<exchange>.unrouted`), logged and counted ([`RelayMetrics::parked`]):
/// kept where an operator finds it and can move it on, without an outbox
/// that grows forever with events nobody subscribed to. Why not an
/// alternate exchange alone: it would keep the messages but deliver none of
/// them to a consumer that binds later, and a dead-letter cycle back to the
/// exchange is one RabbitMQ drops. Rows after a deferred one are published
/// meanwhile: deferring an unroutable name does not hold up the others.
///
/// ```ignore
/// let relay = OutboxRelay::spawn(db.clone(), rabbitmq.publisher(), RelayOptions::default());
/// // … on shutdown:
/// relay.shutdown().await; // publishes what is left, then stops
/// ```
///
/// A running relay. Dropping it leaves the task running until the runtime
/// stops; call [`shutdown`](Self::shutdown) to flush and stop.
pub struct OutboxRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    metrics: Arc<RelayMetrics>,
}

impl fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl OutboxRelay {
    /// Starts relaying from `store` to `publisher`.
    pub fn spawn(
        store: Arc<dyn OutboxStore>,
        publisher: Arc<dyn Publisher>,
        options: RelayOptions,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let metrics = Arc::new(RelayMetrics::default());
        let relay = Relay {
            store,
            publisher,
            options,
            holder: format!("{}-{}", std::process::id(), MessageId::new()),
            metrics: metrics.clone(),
        };
        OutboxRelay {
            stop,
            task: tokio::spawn(relay.run(stopped)),
            metrics,
        }
    }

    /// The relay's counters (shared: they outlive the relay, for a
    /// metrics endpoint).
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Publishes what is left in the outbox (if this instance holds the
    /// lease), gives the lease up and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Relay {
    store: Arc<dyn OutboxStore>,
    publisher: Arc<dyn Publisher>,
    options: RelayOptions,
    holder: String,
    metrics: Arc<RelayMetrics>,
}

enum Step {
    /// Published a full batch: there may be more.
    More,
    /// Nothing left.
    Idle,
    /// Another instance holds the lease.
    NotLeader,
}

impl Relay {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let committed = self.store.committed();
        let mut backoff = Backoff::new(self.options.backoff, self.options.max_backoff);
        let mut leased_until: Option<tokio::time::Instant> = None;
        let mut flush_until: Option<tokio::time::Instant> = None;
        loop {
            let stopping = *stopped.borrow();
            if stopping {
                let until = *flush_until.get_or_insert_with(|| {
                    tokio::time::Instant::now() + self.options.flush_timeout
                });
                if tokio::time::Instant::now() >= until {
                    tracing::warn!(
                        "outbox not empty at the end of the shutdown flush; the next instance publishes the rest"
                    );
                    break;
                }
            }
            let step = self.step(&mut leased_until).await;
            match step {
                Ok(Step::More) => {
                    backoff.reset();
                    // A store and a broker that answer at once (in memory)
                    // would otherwise keep this task from ever yielding.
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Step::Idle) => {
                    backoff.reset();
                    if stopping {
                        break;
                    }
                    let notified = committed.notified();
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(self.options.poll) => {}
                        _ = stopped.changed() => {}
                    }
                }
                Ok(Step::NotLeader) => {
                    if stopping {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.options.poll) => {}
                        _ = stopped.changed() => {}
                    }
                }
                Err(e) => {
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "outbox relay failed, retrying");
                    if stopping {
                        // Give up flushing: what is left is published by the
                        // next instance (nothing is lost, the rows stay).
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        }
        if leased_until.is_some()
            && let Err(e) = self.store.release(&self.holder).await
        {
            tracing::warn!(error = %e, "could not release the relay lease");
        }
    }

    async fn step(&self, leased_until: &mut Option<tokio::time::Instant>) -> Result<Step, Error> {
        let now = tokio::time::Instant::now();
        let renew_at = leased_until.map(|until| until - self.options.lease * 2 / 3);
        if renew_at.is_none_or(|at| now >= at) {
            if self.store.lease(&self.holder, self.options.lease).await? {
                *leased_until = Some(now + self.options.lease);
            } else {
                *leased_until = None;
                return Ok(Step::NotLeader);
            }
        }
        let batch = self.store.unsent(self.options.batch).await?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        let messages: Vec<ExternalMessage> = batch.iter().map(|e| e.message.clone()).collect();
        let (deliveries, error) = self.publisher.publish(&messages).await;
        let mut sent = Vec::with_capacity(deliveries.len());
        let mut unroutable = Vec::new();
        for (entry, delivery) in batch.iter().zip(&deliveries) {
            match delivery {
                Delivery::Confirmed => sent.push(entry.position),
                Delivery::Unroutable => unroutable.push(entry),
            }
        }
        if !sent.is_empty() {
            self.store.mark_sent(&sent).await?;
            self.metrics
                .published
                .fetch_add(sent.len() as u64, Ordering::Relaxed);
        }
        if !unroutable.is_empty() {
            self.keep_unroutable(&unroutable).await?;
        }
        match error {
            Some(e) => Err(e),
            None if batch.len() == self.options.batch => Ok(Step::More),
            None => Ok(Step::Idle),
        }
    }

    /// The events the broker could not route: published again later, or
    /// parked once they are old enough. Cold: no queue bound is a
    /// deployment's transient state, or a mistake.
    #[cold]
    async fn keep_unroutable(&self, entries: &[&OutboxEntry]) -> Result<(), Error> {
        let o = &self.options;
        self.metrics
            .unroutable
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let now = crate::message::Timestamp::now().as_millis();
        let (old, young): (Vec<&OutboxEntry>, Vec<&OutboxEntry>) = entries.iter().partition(|e| {
            Duration::from_millis(now.saturating_sub(e.message.metadata.timestamp.as_millis()))
                >= o.unroutable_retry_for
        });
        // Doubling from the first delay to the longest: the bus's backoff.
        let backoff = RetryPolicy::new(u32::MAX)
            .backoff(o.unroutable_backoff, o.unroutable_max_backoff)
            .jitter(false);
        let mut deferred: Vec<(i64, Duration)> = young
            .iter()
            .map(|e| {
                if e.attempts == 0 {
                    tracing::warn!(
                        name = %e.message.name,
                        id = %e.message.metadata.message_id,
                        "no queue is bound to this event's name (yet): kept in the outbox, published again until one is"
                    );
                } else {
                    tracing::debug!(name = %e.message.name, id = %e.message.metadata.message_id, attempts = e.attempts, "still unroutable");
                }
                (e.position, backoff.delay(e.attempts.saturating_add(1)))
            })
            .collect();
        if !old.is_empty() {
            let messages: Vec<ExternalMessage> = old.iter().map(|e| e.message.clone()).collect();
            let reason = format!(
                "no queue took it within {:?} of its creation",
                o.unroutable_retry_for
            );
            match self.publisher.park(&messages, &reason).await {
                Ok(()) => {
                    let positions: Vec<i64> = old.iter().map(|e| e.position).collect();
                    self.store.mark_sent(&positions).await?;
                    self.metrics
                        .parked
                        .fetch_add(positions.len() as u64, Ordering::Relaxed);
                    for e in &old {
                        tracing::error!(
                            name = %e.message.name,
                            id = %e.message.metadata.message_id,
                            "{reason}: parked"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = old.len(), "could not park unroutable events; they stay in the outbox");
                    deferred.extend(old.iter().map(|e| (e.position, o.unroutable_max_backoff)));
                }
            }
        }
        if !deferred.is_empty() {
            self.store.defer(&deferred).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Metadata;
    use tokio::sync::Notify;

    /// An outbox that never empties (as under steady load).
    struct Endless(Arc<Notify>);

    impl OutboxStore for Endless {
        fn lease<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<bool, Error>> {
            Box::pin(std::future::ready(Ok(true)))
        }
        fn release<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, Error>> {
            let entry = OutboxEntry {
                position: 0,
                message: ExternalMessage {
                    name: "x".into(),
                    metadata: Metadata::new(),
                    payload: b"{}".to_vec(),
                    trace: Default::default(),
                },
                attempts: 0,
            };
            Box::pin(std::future::ready(Ok(vec![entry; limit])))
        }
        fn mark_sent<'a>(&'a self, _: &'a [i64]) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn defer<'a>(&'a self, _: &'a [(i64, Duration)]) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn committed(&self) -> Arc<Notify> {
            self.0.clone()
        }
    }

    struct Sink;

    impl Publisher for Sink {
        fn publish<'a>(
            &'a self,
            messages: &'a [ExternalMessage],
        ) -> BoxFuture<'a, (Vec<Delivery>, Option<Error>)> {
            Box::pin(std::future::ready((
                vec![Delivery::Confirmed; messages.len()],
                None,
            )))
        }
    }

    #[tokio::test]
    async fn shutdown_under_endless_load_stops_after_the_flush_timeout() {
        let options = RelayOptions {
            batch: 8,
            flush_timeout: Duration::from_millis(200),
            ..RelayOptions::default()
        };
        let relay = OutboxRelay::spawn(
            Arc::new(Endless(Arc::new(Notify::new()))),
            Arc::new(Sink),
            options,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), relay.shutdown())
            .await
            .expect("the shutdown is bounded");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "it flushed for a while first"
        );
    }
}
