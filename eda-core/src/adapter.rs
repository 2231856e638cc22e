//! Adapters: what an entrypoint gives the bus (databases, brokers, clients of
//! other services), and how handlers receive them.

use std::any::{Any, TypeId};
use std::fmt;

use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::MessageId;
use crate::outbox::{ExternalMessage, OutboxWrite};
use crate::store::{AggregateStorage, AggregateType, Save, Stored};

/// Something an entrypoint gives the bus with
/// [`BusBuilder::adapter`](crate::BusBuilder::adapter), that handlers then
/// receive by type: a handler parameter `&EmailSender` is resolved to the
/// `EmailSender` adapter.
///
/// ```
/// use eda_core::Adapter;
///
/// pub struct EmailSender { pub from: String }
/// impl Adapter for EmailSender {}
/// ```
pub trait Adapter: Send + Sync + 'static {
    /// If this adapter is a database, the database: units of work begin
    /// their transactions on it.
    fn as_database(&self) -> Option<&dyn Database> {
        None
    }
}

/// A database that units of work begin transactions on. The Postgres and
/// SQLite adapters implement it; so can a user's own.
pub trait Database: Send + Sync + 'static {
    /// Where it is, for logs (with any password hidden).
    fn describe(&self) -> String;
    /// The connection type its transactions lend to repositories.
    fn connection_type(&self) -> (TypeId, &'static str);
    /// Begins a transaction.
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction>, Error>>;
    /// Begins a transaction without waiting, if this database can (one in
    /// memory): a unit of work then awaits no future. The default: `None`,
    /// and [`begin`](Self::begin) is awaited.
    fn begin_now(&self) -> Option<Result<Box<dyn DatabaseTransaction>, Error>> {
        None
    }
    /// Which aggregates it keeps without a repository, through
    /// [`DatabaseTransaction::load_aggregate`] and
    /// [`save_aggregate`](DatabaseTransaction::save_aggregate) (see
    /// [`backend`](crate::backend)). The default: none.
    fn aggregate_storage(&self) -> AggregateStorage {
        AggregateStorage::Repositories
    }
    /// Marks events of the dispatch journal dispatched: their handlers in
    /// this process have run. The default (no journal) does nothing.
    fn mark_dispatched<'a>(&'a self, ids: &'a [MessageId]) -> BoxFuture<'a, Result<(), Error>> {
        let _ = ids;
        Box::pin(async { Ok(()) })
    }
    /// Up to `limit` events of the dispatch journal named one of `names`,
    /// committed more than `older_than` ago and not marked dispatched, oldest
    /// first: their process died before their handlers ran. (Only the names
    /// the caller handles: an event of a newer version of the service, or
    /// of another service on the same tables, is left to them.) The default
    /// (no journal) has none.
    fn undispatched<'a>(
        &'a self,
        names: &'a [&'a str],
        older_than: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ExternalMessage>, Error>> {
        let _ = (names, older_than, limit);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// One open transaction of a [`Database`]. Dropping it rolls it back.
pub trait DatabaseTransaction: Send {
    /// The connection repositories run their queries on: an instance of
    /// [`Database::connection_type`].
    fn connection(&mut self) -> &mut (dyn Any + Send);
    /// Writes outbox rows, in this transaction.
    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Whether [`write_events`](Self::write_events) keeps a dispatch
    /// journal (see [`OutboxWrite`]). The default: no.
    fn keeps_journal(&self) -> bool {
        false
    }
    /// Writes the rows of a commit, in this transaction: the ones to
    /// publish, and (when it [keeps a journal](Self::keeps_journal)) the ones
    /// to dispatch in this process. The default writes the ones to publish
    /// with [`write_outbox`](Self::write_outbox).
    fn write_events<'a>(&'a mut self, rows: &'a [OutboxWrite]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let published: Vec<ExternalMessage> = rows
                .iter()
                .filter(|r| r.publish)
                .map(|r| r.message.clone())
                .collect();
            if published.is_empty() {
                Ok(())
            } else {
                self.write_outbox(&published).await
            }
        })
    }
    /// Records that `handler` handled message `id`, in this transaction.
    /// Returns `false` if it was recorded already (a redelivery).
    fn record_inbox<'a>(
        &'a mut self,
        id: MessageId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    /// The aggregate of this type stored under `key`, or `None` (for a
    /// database whose [`aggregate_storage`](Database::aggregate_storage) is
    /// not [`Repositories`](AggregateStorage::Repositories)).
    fn load_aggregate<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, Error>> {
        let _ = key;
        Box::pin(async move { Err(no_store(aggregate_type)) })
    }
    /// Every stored aggregate of this type (a [`Finder`](crate::Finder) of
    /// an aggregate without a repository looks through them).
    fn aggregates<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
    ) -> BoxFuture<'a, Result<Vec<Stored>, Error>> {
        Box::pin(async move { Err(no_store(aggregate_type)) })
    }
    /// Inserts or updates an aggregate, checking its version (see
    /// [`Save`]): at once, or when the transaction commits.
    fn save_aggregate<'a>(&'a mut self, save: Save<'a>) -> BoxFuture<'a, Result<(), Error>> {
        let aggregate_type = save.aggregate_type();
        Box::pin(async move { Err(no_store(aggregate_type)) })
    }
    /// Commits.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Rolls back.
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
}

fn no_store(aggregate_type: AggregateType) -> Error {
    Error::MissingRepository {
        aggregate: aggregate_type.name(),
        backend: "a database that stores no aggregate without a repository",
    }
}

/// An adapter as the bus stores it.
#[derive(Clone)]
pub(crate) struct AdapterEntry {
    pub(crate) name: &'static str,
    pub(crate) value: std::sync::Arc<dyn AnyAdapter>,
    /// The same adapter, to downcast to an `Arc<T>`.
    pub(crate) any: std::sync::Arc<dyn Any + Send + Sync>,
}

impl fmt::Debug for AdapterEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

pub(crate) trait AnyAdapter: Send + Sync {
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    fn adapter(&self) -> &dyn Adapter;
}

impl<T: Adapter> AnyAdapter for T {
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn adapter(&self) -> &dyn Adapter {
        self
    }
}
