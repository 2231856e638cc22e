//! The outbox: external events written in the same transaction as the state
//! change ([`OutboxWrite`], by a unit of work's commit), and published to
//! other services after the commit by the
//! [`OutboxRelay`](crate::OutboxRelay), which reads a database's
//! [`OutboxStore`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain_error::BoxError;
use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::{AnyEvent, Metadata, Timestamp};
use crate::trace_context::TraceContext;

/// An event on its way to other services: what an outbox row holds and what
/// the external bus publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalMessage {
    /// The message name (the routing key).
    pub name: String,
    /// Id, correlation, causation, timestamp.
    pub metadata: Metadata,
    /// The message in JSON.
    pub payload: Vec<u8>,
    /// The trace it continues: the span current when it was committed
    /// (empty without the feature `otel`; see [`TraceContext`]).
    pub trace: TraceContext,
}

/// A row a unit of work writes at commit: an event to publish (the relay
/// sends it to other services), an event to dispatch in this process (the
/// dispatch journal: kept until its handlers here have run, and run again by
/// [`MessageBus::recover_undispatched`](crate::MessageBus::recover_undispatched)
/// if the process died first), or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxWrite {
    /// The event, as it is stored.
    pub message: ExternalMessage,
    /// For the relay.
    pub publish: bool,
    /// For this process's handlers.
    pub dispatch: bool,
}

impl ExternalMessage {
    /// The outbox form of a committed event.
    pub fn from_event(event: &dyn AnyEvent) -> Result<Self, BoxError> {
        Ok(ExternalMessage {
            name: event.name().to_owned(),
            metadata: *event.metadata(),
            payload: event.to_json()?,
            trace: TraceContext::default(),
        })
    }
}

/// An outbox row waiting to be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its place in the outbox: rows are published in this order.
    pub position: i64,
    /// The message.
    pub message: ExternalMessage,
    /// How many times the broker could not route it (see
    /// [`OutboxStore::defer`]).
    pub attempts: u32,
}

/// The outbox of a database, as the relay reads it.
pub trait OutboxStore: Send + Sync + 'static {
    /// Takes, or keeps, the relay lease for `holder` until `ttl` from now.
    /// Returns whether `holder` holds it.
    fn lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>>;
    /// Gives the lease up (a clean shutdown), so that another instance takes
    /// over at once.
    fn release<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Up to `limit` unsent rows, in outbox order, leaving out the
    /// [deferred](Self::defer) ones that are not due yet.
    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, Error>>;
    /// Marks rows published.
    fn mark_sent<'a>(&'a self, positions: &'a [i64]) -> BoxFuture<'a, Result<(), Error>>;
    /// Keeps rows unsent that the broker could not route, and leaves them
    /// out of [`unsent`](Self::unsent) for the delay given with each
    /// (position, delay); each row's [`attempts`](OutboxEntry::attempts)
    /// goes up by one.
    fn defer<'a>(&'a self, rows: &'a [(i64, Duration)]) -> BoxFuture<'a, Result<(), Error>>;
    /// Notified when a transaction of this process committed outbox rows, so
    /// that the relay wakes at once rather than at its next poll.
    fn committed(&self) -> Arc<Notify>;
    /// How many rows [`unsent`](Self::unsent) would give, and when the
    /// oldest was written: for metrics and readiness, without reading the
    /// messages. The default reads them (up to 1000, and says so with
    /// [`Backlog::capped`]); the built-in databases count in SQL.
    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        Box::pin(async move {
            const READ: usize = 1000;
            let rows = self.unsent(READ).await?;
            Ok(Backlog {
                rows: rows.len() as u64,
                capped: rows.len() == READ,
                oldest: rows.iter().map(|r| r.message.metadata.timestamp).min(),
            })
        })
    }
}

/// An outbox's rows ready to publish (see [`OutboxStore::backlog`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub rows: u64,
    /// `rows` is a lower bound: the store stopped counting there.
    pub capped: bool,
    /// When the oldest was written; `None` when there is none.
    pub oldest: Option<Timestamp>,
}

impl Backlog {
    /// How long the oldest row has waited: zero when there is none.
    pub fn age(&self) -> Duration {
        self.oldest
            .and_then(|t| t.to_system_time().elapsed().ok())
            .unwrap_or_default()
    }
}
