//! The outbox relay: publishes the external events that units of work wrote
//! to the outbox, after their commit, and marks each row sent only once the
//! broker confirmed it.
//!
//! The relay knows no database and no broker: a database adapter is an
//! [`OutboxStore`], a broker (RabbitMQ, the in-process bus) a
//! [`Publisher`]. One instance of a service publishes at a time (it holds a
//! lease, renewed while it runs); if it dies, another takes over when the
//! lease expires. Rows are published in the order they were written, in
//! pipelined batches; a row whose publication was not confirmed stays
//! unsent and is published again (consumers remove the duplicates with
//! their inbox).
//!
//! ```ignore
//! let relay = OutboxRelay::spawn(db.clone(), rabbitmq.publisher(), RelayOptions::default());
//! // … on shutdown:
//! relay.shutdown().await; // publishes what is left, then stops
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::message::MessageId;
use crate::outbox::ExternalMessage;
use crate::private::BoxFuture;

/// An outbox row waiting to be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its place in the outbox: rows are published in this order.
    pub position: i64,
    /// The message.
    pub message: ExternalMessage,
}

/// The outbox of a database, as the relay reads it.
pub trait OutboxStore: Send + Sync + 'static {
    /// Takes, or keeps, the relay lease for `holder` until `ttl` from now.
    /// Returns whether `holder` holds it.
    fn lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>>;
    /// Gives the lease up (a clean shutdown), so that another instance takes
    /// over at once.
    fn release<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Up to `limit` unsent rows, in outbox order.
    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, Error>>;
    /// Marks rows published.
    fn mark_sent<'a>(&'a self, positions: &'a [i64]) -> BoxFuture<'a, Result<(), Error>>;
    /// Notified when a transaction of this process committed outbox rows, so
    /// that the relay wakes at once rather than at its next poll.
    fn committed(&self) -> Arc<Notify>;
}

/// What the broker said of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Stored by the broker.
    Confirmed,
    /// Stored, but no queue was bound to its routing key: no one will
    /// receive it. Reported (log and metric); retrying would not help.
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
    /// The first delay after a failure; it doubles up to `max_backoff`.
    pub backoff: Duration,
    /// The longest delay after failures.
    pub max_backoff: Duration,
    /// How long [`OutboxRelay::shutdown`] keeps publishing what is left.
    /// Under steady load the outbox never empties; what is left after this
    /// stays in the outbox, for the next instance (nothing is lost).
    pub flush_timeout: Duration,
}

impl Default for RelayOptions {
    /// Batches of 256, polling every 200 ms, leases of 10 s, backoff 100 ms
    /// to 5 s, up to 10 s of flushing at shutdown.
    fn default() -> Self {
        RelayOptions {
            batch: 256,
            poll: Duration::from_millis(200),
            lease: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a relay.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    published: AtomicU64,
    unroutable: AtomicU64,
    failures: AtomicU64,
}

impl RelayMetrics {
    /// Messages confirmed by the broker (including unroutable ones).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Messages the broker could not route to any queue.
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
    /// Batches that failed (the broker or the database), and were retried.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

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

    /// The relay's counters.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
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
        let mut backoff = self.options.backoff;
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
                    backoff = self.options.backoff;
                    // A store and a broker that answer at once (in memory)
                    // would otherwise keep this task from ever yielding.
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Step::Idle) => {
                    backoff = self.options.backoff;
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
                    tracing::warn!(error = %e, ?backoff, "outbox relay failed, retrying");
                    if stopping {
                        // Give up flushing: what is left is published by the
                        // next instance (nothing is lost, the rows stay).
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
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
        let sent: Vec<i64> = batch
            .iter()
            .zip(&deliveries)
            .map(|(entry, delivery)| {
                if *delivery == Delivery::Unroutable {
                    self.metrics.unroutable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        name = %entry.message.name,
                        id = %entry.message.metadata.message_id,
                        "published to no queue: no queue is bound to this message name"
                    );
                }
                entry.position
            })
            .collect();
        if !sent.is_empty() {
            self.store.mark_sent(&sent).await?;
            self.metrics
                .published
                .fetch_add(sent.len() as u64, Ordering::Relaxed);
        }
        match error {
            Some(e) => Err(e),
            None if batch.len() == self.options.batch => Ok(Step::More),
            None => Ok(Step::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Metadata;

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
                },
            };
            Box::pin(std::future::ready(Ok(vec![entry; limit])))
        }
        fn mark_sent<'a>(&'a self, _: &'a [i64]) -> BoxFuture<'a, Result<(), Error>> {
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
