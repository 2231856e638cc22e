//! The in-memory database: for unit tests and for running a service with
//! nothing installed (the external bus in the process is
//! [`in_process`](super::in_process)).
//!
//! [`InMemoryDatabase`] plays the part of "Architecture Patterns with
//! Python"'s `FakeUnitOfWork` and `FakeRepository`, for every aggregate at
//! once and with the same guarantees as a real database: transactions are
//! isolated (reads see committed state, writes are staged until commit),
//! commits are atomic and check versions, the outbox and inbox are kept.
//!
//! ```standalone_crate
//! use eda_core::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Aggregate)]
//! pub struct Lamp { #[aggregate(id)] pub sku: String, pub lit: bool, pub version: u64, pub events: Events }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Command)]
//! #[command(name = "shop.light")]
//! pub struct Light { pub sku: String }
//!
//! #[derive(UnitOfWork)]
//! pub struct ShopUow { tx: UowTransaction, lamps: IdentityMap<Lamp> }
//!
//! #[command_handler]
//! async fn light(cmd: Light, uow: &mut ShopUow) -> Result<(), CommandError<BoxError>> {
//!     uow.lamps().get(&cmd.sku).await?.ok_or("no such lamp")?.lit = true;
//!     Ok(uow.commit().await?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = InMemoryDatabase::new();
//! db.insert(Lamp { sku: "LAMP".into(), lit: false, version: 0, events: Events::new() });
//! let bus = MessageBus::builder().adapter(db.clone()).scope(module_path!()).build()?;
//!
//! bus.handle(Light { sku: "LAMP".into() }).await?;
//! let lamp = db.get::<Lamp>("LAMP").unwrap();
//! assert!(lamp.lit);
//! assert_eq!(lamp.version, 1);
//! assert_eq!(db.commits(), 1);
//! # Ok(()) }
//! ```

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::sync::Notify;

use crate::adapter::{Adapter, Database, DatabaseTransaction, ScheduledRows};
use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::{MessageId, Timestamp};
use crate::outbox::ExternalMessage;
use crate::outbox::{Backlog, OutboxEntry, OutboxStore};
use crate::repository::RepositoryError;
use crate::schedule::ScheduledMessage;
use crate::store::{self, AggregateStorage, AggregateType, Save, Stored};

/// A database in memory. Clones share the same data.
#[derive(Clone, Default)]
pub struct InMemoryDatabase {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    data: Mutex<Data>,
    /// Signalled when a commit wrote outbox messages (for a relay).
    outbox_committed: Arc<Notify>,
    /// Outside the lock: a commit with nothing to write takes no lock.
    commits: AtomicU64,
}

/// One stored aggregate: its version and the value.
struct Row {
    version: u64,
    value: Arc<dyn Any + Send + Sync>,
}

#[derive(Default)]
struct Data {
    /// The aggregates of each type, by [`store::key`].
    tables: HashMap<TypeId, HashMap<String, Row>>,
    outbox: Vec<ExternalMessage>,
    /// How many outbox messages (a prefix) the relay published.
    sent: usize,
    /// Messages past that prefix that were published (an unroutable one
    /// before them is deferred).
    sent_after: std::collections::BTreeSet<usize>,
    /// Unroutable messages: not published again before the instant; how
    /// many times they were unroutable.
    deferred: HashMap<usize, (std::time::Instant, u32)>,
    inbox: HashSet<(MessageId, String)>,
    /// Scheduled messages by id, with their next time (milliseconds;
    /// `u64::MAX` when parked).
    scheduled: HashMap<MessageId, (ScheduledMessage, u64)>,
    /// The same, ordered by next time: a claim reads only the due ones.
    schedule: std::collections::BTreeSet<(u64, MessageId)>,
}

impl Data {
    fn set_next(&mut self, id: MessageId, next: u64) {
        if let Some((_, at)) = self.scheduled.get_mut(&id) {
            self.schedule.remove(&(*at, id));
            *at = next;
            self.schedule.insert((next, id));
        }
    }

    fn unschedule(&mut self, id: MessageId) -> bool {
        match self.scheduled.remove(&id) {
            Some((_, at)) => {
                self.schedule.remove(&(at, id));
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for InMemoryDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.data();
        f.debug_struct("InMemoryDatabase")
            .field("tables", &data.tables.len())
            .field("outbox", &data.outbox.len())
            .field("commits", &self.commits())
            .finish()
    }
}

impl InMemoryDatabase {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while the lock is held cannot leave the data half-written
        // (commits apply after all checks), so a poisoned lock is still usable.
        self.inner.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an aggregate as committed state, outside any unit of work
    /// (to set up a test).
    pub fn insert<A: Aggregate>(&self, aggregate: A) {
        let key = store::key::<A>(aggregate.id());
        let row = Row {
            version: aggregate.version(),
            value: Arc::new(aggregate),
        };
        self.data()
            .tables
            .entry(TypeId::of::<A>())
            .or_default()
            .insert(key, row);
    }

    /// The committed state of an aggregate: `db.get::<Product>("LAMP")`.
    pub fn get<A: Aggregate>(&self, id: impl Into<A::Id>) -> Option<A> {
        let key = store::key::<A>(&id.into());
        self.data()
            .tables
            .get(&TypeId::of::<A>())
            .and_then(|t| t.get(&key))
            .and_then(|row| row.value.downcast_ref::<A>())
            .cloned()
    }

    /// Every committed aggregate of a type, in no particular order (so a
    /// [`Finder`](crate::Finder) that matches several finds any one of
    /// them).
    pub fn all<A: Aggregate>(&self) -> Vec<A> {
        self.data()
            .tables
            .get(&TypeId::of::<A>())
            .map(|t| {
                t.values()
                    .filter_map(|row| row.value.downcast_ref::<A>())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every external event committed so far, in commit order.
    pub fn outbox(&self) -> Vec<ExternalMessage> {
        self.data().outbox.clone()
    }

    /// How many transactions committed (APwP's `uow.committed`, as a count).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::SeqCst)
    }
}

impl InMemoryDatabase {
    fn begin_transaction(&self) -> Box<dyn DatabaseTransaction + '_> {
        Box::new(MemoryTransaction {
            db: self,
            connection: NoConnection,
            changes: None,
        })
    }
}

impl Adapter for InMemoryDatabase {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

/// What an in-memory transaction lends as its connection: nothing a
/// repository could use (the database stores every aggregate itself).
struct NoConnection;

impl Database for InMemoryDatabase {
    fn describe(&self) -> String {
        "in memory".to_owned()
    }

    fn connection_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<NoConnection>(), "the in-memory database")
    }

    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        Box::pin(std::future::ready(Ok(self.begin_transaction())))
    }

    fn begin_now(&self) -> Option<Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        Some(Ok(self.begin_transaction()))
    }

    fn aggregate_storage(&self) -> AggregateStorage {
        AggregateStorage::Values
    }

    fn claim_due<'a>(
        &'a self,
        names: &'a [&'a str],
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ScheduledMessage>, Error>> {
        let mut data = self.data();
        let now = now.as_millis();
        let due: Vec<MessageId> = data
            .schedule
            .range(..(now.saturating_add(1), MessageId::from(uuid::Uuid::nil())))
            .filter(|(_, id)| {
                data.scheduled
                    .get(id)
                    .is_some_and(|(row, _)| names.contains(&row.message.name.as_str()))
            })
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        let until = now.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            data.set_next(id, until);
            if let Some((row, _)) = data.scheduled.get_mut(&id) {
                row.attempts += 1;
                claimed.push(row.clone());
            }
        }
        Box::pin(std::future::ready(Ok(claimed)))
    }

    fn retry_scheduled<'a>(
        &'a self,
        id: MessageId,
        at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.data()
            .set_next(id, at.map_or(u64::MAX, |t| t.as_millis()));
        Box::pin(std::future::ready(Ok(())))
    }

    fn scheduled_rows(&self, limit: u64) -> BoxFuture<'_, Result<ScheduledRows, Error>> {
        let data = self.data();
        let rows = ScheduledRows {
            pending: (data.scheduled.len() as u64).min(limit),
            parked: data
                .scheduled
                .values()
                .filter(|(_, at)| *at == u64::MAX)
                .count() as u64,
        };
        Box::pin(std::future::ready(Ok(rows)))
    }
}

/// A transaction on an [`InMemoryDatabase`]: reads see committed state,
/// writes are staged and applied at once on commit, after every version check
/// passed.
struct MemoryTransaction<'a> {
    /// Borrowed, not a clone: beginning and ending a transaction touches
    /// no reference count.
    db: &'a InMemoryDatabase,
    connection: NoConnection,
    /// What it writes; boxed, and made at its first write: a transaction
    /// that writes nothing is two words, and ends with nothing to drop.
    changes: Option<Box<Changes>>,
}

/// What a transaction writes at commit.
#[derive(Default)]
struct Changes {
    staged: Vec<Staged>,
    inbox: Vec<(MessageId, String)>,
    outbox: Vec<ExternalMessage>,
    schedule: ScheduleChanges,
}

/// A transaction's changes to the scheduled messages.
#[derive(Default)]
struct ScheduleChanges {
    scheduled: Vec<ScheduledMessage>,
    /// Cancelled: still not claimed at commit, or the commit conflicts.
    cancelled: Vec<MessageId>,
    /// Delivered: removed at commit, claimed or not.
    removed: Vec<MessageId>,
}

impl ScheduleChanges {
    /// Checks the cancellations, then applies everything.
    fn apply(self, data: &mut Data) -> Result<(), Error> {
        for id in &self.cancelled {
            // Claimed since: its delivery has begun.
            if data
                .scheduled
                .get(id)
                .is_none_or(|(row, _)| row.attempts > 0)
            {
                return Err(RepositoryError::Conflict {
                    aggregate: "scheduled message",
                    id: id.to_string(),
                    expected: 0,
                }
                .into());
            }
        }
        for id in self.cancelled.iter().chain(&self.removed) {
            data.unschedule(*id);
        }
        for row in self.scheduled {
            let id = row.id();
            let at = row.due.as_millis();
            data.unschedule(id);
            data.scheduled.insert(id, (row, at));
            data.schedule.insert((at, id));
        }
        Ok(())
    }
}

impl MemoryTransaction<'_> {
    fn changes(&mut self) -> &mut Changes {
        self.changes.get_or_insert_with(Default::default)
    }

    fn schedule_changes(&mut self) -> &mut ScheduleChanges {
        &mut self.changes().schedule
    }
}

/// An aggregate to save at commit.
struct Staged {
    type_id: TypeId,
    name: &'static str,
    key: String,
    expected: Option<u64>,
    row: Row,
}

impl Staged {
    fn check(&self, data: &Data) -> Result<(), RepositoryError> {
        let current = data
            .tables
            .get(&self.type_id)
            .and_then(|t| t.get(&self.key));
        match (self.expected, current) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(RepositoryError::AlreadyExists {
                aggregate: self.name,
                id: self.key.clone(),
            }),
            (Some(expected), Some(current)) if current.version == expected => Ok(()),
            (Some(expected), _) => Err(RepositoryError::Conflict {
                aggregate: self.name,
                id: self.key.clone(),
                expected,
            }),
        }
    }
}

impl MemoryTransaction<'_> {
    fn commit_now(self) -> Result<(), Error> {
        let Some(changes) = self.changes else {
            self.db.inner.commits.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        };
        let Changes {
            staged,
            inbox,
            outbox,
            schedule,
        } = *changes;
        let wrote_outbox = {
            let mut data = self.db.data();
            for staged in &staged {
                staged.check(&data)?;
            }
            if inbox.iter().any(|k| data.inbox.contains(k)) {
                // Another transaction handled the same message meanwhile.
                return Err(RepositoryError::AlreadyExists {
                    aggregate: "inbox",
                    id: format!("{inbox:?}"),
                }
                .into());
            }
            // Its checks fail before it applies anything.
            schedule.apply(&mut data)?;
            for staged in staged {
                data.tables
                    .entry(staged.type_id)
                    .or_default()
                    .insert(staged.key, staged.row);
            }
            data.inbox.extend(inbox);
            self.db.inner.commits.fetch_add(1, Ordering::SeqCst);
            let wrote_outbox = !outbox.is_empty();
            data.outbox.extend(outbox);
            wrote_outbox
        };
        if wrote_outbox {
            self.db.inner.outbox_committed.notify_one();
        }
        Ok(())
    }
}

impl DatabaseTransaction for MemoryTransaction<'_> {
    fn connection(&mut self) -> &mut (dyn Any + Send) {
        &mut self.connection
    }

    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.changes().outbox.extend_from_slice(messages);
        Box::pin(std::future::ready(Ok(())))
    }

    fn record_inbox<'a>(
        &'a mut self,
        id: MessageId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let key = (id, handler.to_owned());
        let staged = self
            .changes
            .as_ref()
            .is_some_and(|c| c.inbox.contains(&key));
        let new = !(staged || self.db.data().inbox.contains(&key));
        if new {
            self.changes().inbox.push(key);
        }
        Box::pin(std::future::ready(Ok(new)))
    }

    fn schedule<'a>(
        &'a mut self,
        messages: &'a [ScheduledMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.schedule_changes()
            .scheduled
            .extend_from_slice(messages);
        Box::pin(std::future::ready(Ok(())))
    }

    fn cancel_scheduled<'a>(&'a mut self, id: MessageId) -> BoxFuture<'a, Result<bool, Error>> {
        let staged = self.changes.as_ref().is_some_and(|c| {
            c.schedule.cancelled.contains(&id) || c.schedule.removed.contains(&id)
        });
        let pending = !staged
            && self
                .db
                .data()
                .scheduled
                .get(&id)
                .is_some_and(|(row, _)| row.attempts == 0);
        if pending {
            self.schedule_changes().cancelled.push(id);
        }
        Box::pin(std::future::ready(Ok(pending)))
    }

    fn remove_scheduled<'a>(
        &'a mut self,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>, Error>> {
        let present: Vec<MessageId> = {
            let data = self.db.data();
            let removed = self.changes.as_ref().map(|c| &c.schedule.removed);
            ids.iter()
                .filter(|id| {
                    data.scheduled.contains_key(id) && !removed.is_some_and(|r| r.contains(id))
                })
                .copied()
                .collect()
        };
        self.schedule_changes().removed.extend_from_slice(&present);
        Box::pin(std::future::ready(Ok(present)))
    }

    fn load_aggregate<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, Error>> {
        let stored = self
            .db
            .data()
            .tables
            .get(&aggregate_type.type_id())
            .and_then(|t| t.get(key))
            .map(|row| Stored::Value(row.value.clone()));
        Box::pin(std::future::ready(Ok(stored)))
    }

    fn aggregates<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
    ) -> BoxFuture<'a, Result<Vec<Stored>, Error>> {
        let all = self
            .db
            .data()
            .tables
            .get(&aggregate_type.type_id())
            .map(|t| {
                t.values()
                    .map(|row| Stored::Value(row.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(all)))
    }

    fn save_aggregate<'a>(&'a mut self, save: Save<'a>) -> BoxFuture<'a, Result<(), Error>> {
        let aggregate_type = save.aggregate_type();
        self.changes().staged.push(Staged {
            type_id: aggregate_type.type_id(),
            name: aggregate_type.name(),
            key: save.key().to_owned(),
            expected: save.expected(),
            row: Row {
                version: save.version(),
                value: save.value(),
            },
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        match self.commit_now() {
            Ok(()) => Box::pin(Done),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(Done)
    }
}

/// A transaction's end that has happened: a future of no size, so that
/// boxing it allocates nothing (every in-memory commit returns one).
struct Done;

impl std::future::Future for Done {
    type Output = Result<(), Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The in-memory outbox, for a relay (to RabbitMQ, say, in a test). Its
/// rows are published in order; the lease is always granted (one process).
/// The outbox rows ready to publish, in order: not sent, and not deferred
/// past now; with their position and how often they were deferred.
fn ready(data: &Data) -> impl Iterator<Item = (usize, &ExternalMessage, u32)> {
    let now = std::time::Instant::now();
    data.outbox
        .iter()
        .enumerate()
        .skip(data.sent)
        .filter(|(i, _)| !data.sent_after.contains(i))
        .filter_map(move |(i, message)| match data.deferred.get(&i) {
            Some((until, _)) if *until > now => None,
            Some((_, attempts)) => Some((i, message, *attempts)),
            None => Some((i, message, 0)),
        })
}

impl OutboxStore for InMemoryDatabase {
    fn lease<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn release<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, Error>> {
        let data = self.data();
        let entries = ready(&data)
            .map(|(i, message, attempts)| OutboxEntry {
                position: i as i64,
                message: message.clone(),
                attempts,
            })
            .take(limit)
            .collect();
        Box::pin(std::future::ready(Ok(entries)))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        let data = self.data();
        let mut backlog = Backlog::default();
        for (_, message, _) in ready(&data) {
            backlog.rows += 1;
            let written = message.metadata.timestamp;
            backlog.oldest = Some(backlog.oldest.map_or(written, |o| o.min(written)));
        }
        Box::pin(std::future::ready(Ok(backlog)))
    }

    fn mark_sent<'a>(&'a self, positions: &'a [i64]) -> BoxFuture<'a, Result<(), Error>> {
        let mut data = self.data();
        for position in positions {
            let i = *position as usize;
            data.deferred.remove(&i);
            if i >= data.sent {
                data.sent_after.insert(i);
            }
        }
        while data.sent_after.first() == Some(&data.sent) {
            data.sent_after.pop_first();
            data.sent += 1;
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn defer<'a>(&'a self, rows: &'a [(i64, Duration)]) -> BoxFuture<'a, Result<(), Error>> {
        let mut data = self.data();
        let now = std::time::Instant::now();
        for (position, delay) in rows {
            let entry = data.deferred.entry(*position as usize).or_insert((now, 0));
            *entry = (now + *delay, entry.1 + 1);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn committed(&self) -> Arc<Notify> {
        self.inner.outbox_committed.clone()
    }
}
