//! Adapters: what an entrypoint gives the bus (databases, brokers, clients of
//! other services), and how handlers receive them.

use std::any::{Any, TypeId};
use std::fmt;

use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::{MessageId, Timestamp};
use crate::outbox::{ExternalMessage, OutboxWrite};
use crate::schedule::ScheduledMessage;
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
    /// Begins a transaction. The transaction may borrow the database (the
    /// in-memory one does): a unit of work keeps the database for as long
    /// as its transaction, without a reference count of its own.
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>>;
    /// Begins a transaction without waiting, if this database can (one in
    /// memory): a unit of work then awaits no future. The default: `None`,
    /// and [`begin`](Self::begin) is awaited.
    fn begin_now(&self) -> Option<Result<Box<dyn DatabaseTransaction + '_>, Error>> {
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
    /// Claims up to `limit` scheduled messages named one of `names` whose
    /// next time is `now` or earlier, earliest first, for `lease`: each
    /// one's next time becomes `now + lease` (so that another instance
    /// delivers it if this one dies) and its
    /// [`attempts`](ScheduledMessage::attempts) go up by one. Two callers
    /// never claim the same row at once. (Only the names the caller
    /// delivers, as [`undispatched`](Self::undispatched).) The default (no
    /// scheduled messages) has none.
    fn claim_due<'a>(
        &'a self,
        names: &'a [&'a str],
        now: Timestamp,
        lease: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ScheduledMessage>, Error>> {
        let _ = (names, now, lease, limit);
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Sets a claimed message's next time, after its delivery failed: `at`,
    /// or never (`None`: parked, kept for an operator).
    fn retry_scheduled<'a>(
        &'a self,
        id: MessageId,
        at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let _ = (id, at);
        Box::pin(async { Err(unsupported_scheduling()) })
    }
    /// How many scheduled messages wait (up to `limit`), and how many of
    /// them are parked: for metrics. The default: none.
    fn scheduled_rows(&self, limit: u64) -> BoxFuture<'_, Result<ScheduledRows, Error>> {
        let _ = limit;
        Box::pin(async { Ok(ScheduledRows::default()) })
    }
}

/// The scheduled messages a database keeps (see
/// [`Database::scheduled_rows`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduledRows {
    /// Waiting to be delivered, parked ones included (counted up to the
    /// limit asked).
    pub pending: u64,
    /// Parked: their delivery failed as often as the scheduler tries.
    pub parked: u64,
}

fn unsupported_scheduling() -> Error {
    Error::Unsupported {
        what: "scheduled messages",
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
    /// Keeps scheduled messages, in this transaction, until they are due
    /// and a scheduler [claims](Database::claim_due) them. The default:
    /// [`Error::Unsupported`].
    fn schedule<'a>(
        &'a mut self,
        messages: &'a [ScheduledMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        let _ = messages;
        Box::pin(async { Err(unsupported_scheduling()) })
    }
    /// Removes a scheduled message that no scheduler has claimed yet (its
    /// [`attempts`](ScheduledMessage::attempts) are 0), in this
    /// transaction. Returns whether it did: `false` when its delivery has
    /// begun, or there is none with this id.
    fn cancel_scheduled<'a>(&'a mut self, id: MessageId) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = id;
        Box::pin(async { Err(unsupported_scheduling()) })
    }
    /// Removes scheduled messages, claimed or not, in this transaction (the
    /// scheduler delivered them). Returns the ids it removed.
    fn remove_scheduled<'a>(
        &'a mut self,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>, Error>> {
        let _ = ids;
        Box::pin(async { Err(unsupported_scheduling()) })
    }
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
    /// Commits. The future is `'static`: a transaction that borrows its
    /// database does what needs the borrow before returning it.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Rolls back (the future is `'static`, as [`commit`](Self::commit)'s).
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
