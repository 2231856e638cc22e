//! The unit of work (its documentation is on [`UnitOfWork`]).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::adapter::{Adapter, DatabaseTransaction};
use crate::aggregate::Aggregate;
use crate::context::{Context, Services};
use crate::dependency::{Adapters, Requirements};
use crate::error::Error;
use crate::message::{AnyEvent, MessageId, Metadata};

use crate::outbox::{ExternalMessage, OutboxWrite};
use crate::repository::{Finder, FinderVTable, RepositoryError};
use crate::schedule::ScheduledMessage;
use crate::store::{self, AggregateType, Stored};
use crate::trace_context::TraceContext;

/// A unit of work: derive it with [`#[derive(UnitOfWork)]`](macro@crate::UnitOfWork).
///
/// The derive also gives the struct inherent `commit` and `rollback` methods
/// and an accessor per repository field, so handlers need no import.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a unit of work",
    label = "a handler's `&mut` parameter must be a unit of work",
    note = "derive it: `#[derive(eda_core::UnitOfWork)]`; adapters are taken by shared reference (`&{Self}`)"
)]
/// The unit of work: one transaction, the repositories that work in it, and
/// the aggregates they loaded or added (an identity map).
///
/// A user declares a unit of work as a struct and derives
/// [`UnitOfWork`](macro@crate::UnitOfWork):
///
/// ```
/// use eda_core::{Aggregate, Events, IdentityMap, UowTransaction, UnitOfWork};
///
/// #[derive(Clone, Aggregate)]
/// pub struct Product { #[aggregate(id)] pub sku: String, pub version: u64, pub events: Events }
///
/// #[derive(UnitOfWork)]
/// pub struct AllocationUow {
///     #[uow(transaction)]
///     tx: UowTransaction,
///     products: IdentityMap<Product>,
/// }
/// ```
///
/// The bus begins one for each handler that takes `&mut AllocationUow`. The
/// handler reaches the products through the generated accessor
/// `uow.products()`, changes them, and calls `uow.commit()`: every product
/// it changed or added is saved (with a version check; one taken with `get`
/// but left as it was is not written, when it serializes and so can be
/// compared), external events are
/// written to the outbox in the same transaction, and the events are handed to
/// the bus. Not committing, returning an error, or dropping the unit of work
/// rolls it back and discards the events.
///
/// Only the derive implements it: its hidden items take types of
/// `eda_core::__private`, which is not an API (it changes without notice),
/// so a hand-written impl is neither possible in practice nor supported.
pub trait UnitOfWork: Sized + Send + 'static {
    /// Whether it has a transaction (`#[uow(transaction)]`).
    #[doc(hidden)]
    const __TRANSACTION: bool;
    /// What its fields take from the bus once, when it is built (their
    /// adapters).
    #[doc(hidden)]
    type __Prepared: Send + Sync + 'static;
    /// Resolves, once, what its fields take from the bus.
    #[doc(hidden)]
    fn __prepare(adapters: &Adapters<'_>) -> Self::__Prepared;
    /// Builds it around its transaction (begun when it has one), into
    /// `out`: written in place, not returned and moved.
    #[doc(hidden)]
    fn __assemble(
        tx: Option<Begun>,
        prepared: &Self::__Prepared,
        ctx: &Context<'_>,
        out: &mut Option<Self>,
    ) -> Result<(), Error>;
    #[doc(hidden)]
    fn __require(requirements: &mut Requirements);
    #[doc(hidden)]
    fn __transaction(&mut self) -> Option<&mut UowTransaction>;
    /// How many aggregates it lent mutably (or added): what a commit would
    /// save.
    #[doc(hidden)]
    fn __changes(&self) -> usize {
        0
    }

    /// Saves every aggregate loaded or added (checking versions), writes the
    /// outbox, commits, and hands the events raised to the bus.
    ///
    /// On a version conflict nothing is saved, the error is
    /// [`Error::is_conflict`], and the bus runs the command again.
    fn commit(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Rolls back and discards the events raised. Dropping an uncommitted
    /// unit of work does the same.
    fn rollback(&mut self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A field of a unit of work: an [`IdentityMap`] of a repository, or an
/// adapter (`Arc<T>`). The derive calls these; users do not.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a field of a unit of work",
    label = "not a repository or adapter",
    note = "a unit of work holds `IdentityMap<Aggregate>` fields, `Arc<Adapter>` fields, one `#[uow(transaction)] UowTransaction`, and `#[uow(skip)]` fields built with `Default`"
)]
pub trait UowField: Sized + Send {
    /// Only eda implements it (a type outside cannot name the token).
    #[doc(hidden)]
    fn __sealed(_: sealed::Token);
    /// What the generated accessor returns.
    type Handle<'a>
    where
        Self: 'a;
    #[doc(hidden)]
    const NEEDS_TRANSACTION: bool;
    /// What it takes from the bus once, when the bus is built.
    #[doc(hidden)]
    type Prepared: Send + Sync + 'static;
    #[doc(hidden)]
    fn __prepare(adapters: &Adapters<'_>) -> Self::Prepared;
    #[doc(hidden)]
    fn __begin(prepared: &Self::Prepared, ctx: &Context<'_>) -> Result<Self, Error>;
    #[doc(hidden)]
    fn __require(requirements: &mut Requirements);
    #[doc(hidden)]
    fn __handle<'a>(&'a mut self, tx: &'a mut UowTransaction) -> Self::Handle<'a>;
    #[doc(hidden)]
    fn __flush<'a>(
        &'a mut self,
        tx: &'a mut UowTransaction,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;
    #[doc(hidden)]
    fn __discard(&mut self);
    /// How many aggregates it lent mutably (or added).
    #[doc(hidden)]
    fn __changes(&self) -> usize {
        0
    }
}

#[diagnostic::do_not_recommend]
impl<T: Adapter> UowField for Arc<T> {
    fn __sealed(_: sealed::Token) {}
    type Handle<'a> = &'a T;
    const NEEDS_TRANSACTION: bool = false;
    type Prepared = Option<Arc<T>>;
    fn __prepare(adapters: &Adapters<'_>) -> Option<Arc<T>> {
        adapters.get::<T>()
    }
    fn __begin(prepared: &Option<Arc<T>>, _: &Context<'_>) -> Result<Self, Error> {
        prepared
            .clone()
            .ok_or_else(|| Error::MissingAdapter(std::any::type_name::<T>()))
    }
    fn __require(requirements: &mut Requirements) {
        requirements.adapter::<T>();
    }
    fn __handle<'a>(&'a mut self, _: &'a mut UowTransaction) -> &'a T {
        self
    }
    async fn __flush<'a>(&'a mut self, _: &'a mut UowTransaction) -> Result<(), Error> {
        Ok(())
    }
    fn __discard(&mut self) {}
}

/// A database transaction begun for a unit of work, and the services whose
/// database it was begun on: the transaction may borrow that database
/// ([`Database::begin`](crate::backend::Database::begin)), and these
/// services own it.
#[doc(hidden)]
pub struct Begun {
    // Declared first: dropped before what it borrows.
    tx: OwnedTransaction,
    services: Arc<Services>,
}

/// A transaction that may borrow the database of the [`Services`] kept
/// beside it, with that borrow's lifetime erased. Its methods are reached
/// through `&mut` (`Deref`), and it ends by value with [`commit`] or
/// [`rollback`], whose futures are `'static` (they hold no borrow of it);
/// the box itself is never handed out.
///
/// [`commit`]: OwnedTransaction::commit
/// [`rollback`]: OwnedTransaction::rollback
struct OwnedTransaction(Box<dyn DatabaseTransaction>);

impl OwnedTransaction {
    /// Safety: `tx` borrows at most the database of an `Arc<Services>`
    /// that is kept beside what is returned, in the same struct, declared
    /// after it (so dropped after it) and never replaced. (The database
    /// lives in that `Arc`'s allocation, which does not move when the `Arc`
    /// does, and `Services` is not changed after the bus is built.)
    unsafe fn new<'a>(tx: Box<dyn DatabaseTransaction + 'a>) -> Self {
        // SAFETY: the caller keeps what `tx` borrows alive for as long as
        // the result, which is only used through `&mut` or consumed.
        OwnedTransaction(unsafe {
            std::mem::transmute::<Box<dyn DatabaseTransaction + 'a>, Box<dyn DatabaseTransaction>>(
                tx,
            )
        })
    }

    fn commit(self) -> crate::future::BoxFuture<'static, Result<(), Error>> {
        self.0.commit()
    }

    fn rollback(self) -> crate::future::BoxFuture<'static, Result<(), Error>> {
        self.0.rollback()
    }
}

impl std::ops::Deref for OwnedTransaction {
    type Target = dyn DatabaseTransaction;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::ops::DerefMut for OwnedTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.0
    }
}

enum Backend {
    Database(OwnedTransaction),
    Ended,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Active,
    Committed,
    RolledBack,
}

/// The transaction of a unit of work, begun on the bus's database. (Its
/// name keeps it apart from `sqlx::Transaction`, which eda re-exports.)
///
/// Repositories run in it; it also holds the events collected at commit, and
/// writes the outbox. A handler can run its own queries in it through
/// [`UowTransaction::connection`].
pub struct UowTransaction {
    /// Declared before `services`: dropped before the database it may
    /// borrow (see `OwnedTransaction`).
    backend: Backend,
    /// The bus's services: the repositories, what its events go to, and
    /// the database the transaction was begun on.
    services: Arc<Services>,
    metadata: Metadata,
    events: Vec<Box<dyn AnyEvent>>,
    /// Messages scheduled, written at commit. Boxed: most units of work
    /// schedule none, and a `Vec` here (three words more in every unit of
    /// work and every handler's future) made `dispatch/command` slower.
    #[allow(clippy::box_collection)]
    scheduled: Option<Box<Vec<ScheduledMessage>>>,
    state: State,
    conflict: bool,
    /// Its events are handled by the bus after the commit (see
    /// [`Context`]'s `dispatches`).
    dispatches: bool,
}

impl fmt::Debug for UowTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UowTransaction")
            .field("state", &self.state)
            .field("events", &self.events.len())
            .finish()
    }
}

impl UowTransaction {
    /// Begins the database's transaction, for a unit of work that
    /// [`__begun`](Self::__begun) then builds around it.
    #[doc(hidden)]
    pub async fn __begin(ctx: &Context<'_>) -> Result<Begun, Error> {
        // The services the transaction is begun on, kept beside it.
        let services = ctx.services.clone();
        // Not `ok_or`: that makes the error (and drops it) on every begin.
        let Some(db) = services.database() else {
            return Err(Error::NoDatabase);
        };
        let tx = match db.begin_now() {
            Some(begun) => begun?,
            None => db.begin().await?,
        };
        // SAFETY: `tx` borrows at most the database of `services`, which
        // the `Begun` keeps beside it (then the `UowTransaction`), declared
        // after it.
        let tx = unsafe { OwnedTransaction::new(tx) };
        Ok(Begun { tx, services })
    }

    /// The transaction of a unit of work, around the database's, built
    /// where the unit of work is (its derive calls this): not built
    /// beforehand and then copied in, which made the CPU wait on every
    /// unit of work (a copy read back, in other pieces than it was
    /// written in, before the writes had landed).
    #[doc(hidden)]
    #[inline]
    pub fn __begun(begun: Begun, ctx: &Context<'_>) -> Self {
        let Begun { tx, services } = begun;
        UowTransaction {
            backend: Backend::Database(tx),
            services,
            metadata: *ctx.metadata,
            events: Vec::new(),
            scheduled: None,
            state: State::Active,
            conflict: false,
            dispatches: ctx.dispatches,
        }
    }

    /// The connection of this transaction, if the database's connection type
    /// is `C` (e.g. `sqlx::PgConnection`): for a handler's own queries, such
    /// as keeping a read model, in the same transaction.
    pub fn connection<C: Any>(&mut self) -> Option<&mut C> {
        match &mut self.backend {
            Backend::Database(tx) => tx.connection().downcast_mut::<C>(),
            Backend::Ended => None,
        }
    }

    /// Whether the transaction committed.
    pub fn is_committed(&self) -> bool {
        self.state == State::Committed
    }

    /// Whether it is still open.
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// Whether the last commit failed on a version conflict.
    pub fn conflicted(&self) -> bool {
        self.conflict
    }

    /// Events raised with `raise`, and messages scheduled, waiting for the
    /// commit.
    pub(crate) fn raised(&self) -> usize {
        if self.state == State::Active {
            self.events.len() + self.scheduled.as_ref().map_or(0, |s| s.len())
        } else {
            0
        }
    }

    /// The metadata of the message being handled (the cause of the events
    /// this transaction raises).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Records that the current message was handled by `handler`, in this
    /// transaction. Returns `false` if it was recorded already: the message
    /// is a redelivery and the handler must not run again.
    #[doc(hidden)]
    pub async fn __record_inbox(&mut self, handler: &str) -> Result<bool, Error> {
        self.check_active()?;
        let id = self.metadata.message_id;
        match &mut self.backend {
            Backend::Database(tx) => tx.record_inbox(id, handler).await,
            Backend::Ended => Err(Error::TransactionFinished("ended")),
        }
    }

    /// Raises an event of the unit of work itself (the derive's `raise`).
    #[doc(hidden)]
    pub fn __raise<E: crate::Event>(&mut self, event: E) -> Result<(), Error> {
        self.check_active()?;
        self.events.push(Box::new(crate::message::Raised {
            // Given at commit, like every event's.
            metadata: self.metadata,
            event,
            journaled: false,
        }));
        Ok(())
    }

    /// Schedules a message (the derive's `schedule` and `schedule_at`):
    /// kept at commit, in this transaction; discarded if it does not commit.
    #[doc(hidden)]
    pub fn __schedule<M: crate::Message>(
        &mut self,
        message: M,
        due: std::time::SystemTime,
    ) -> Result<MessageId, Error> {
        self.check_active()?;
        let scheduled =
            ScheduledMessage::new(&message, &self.metadata, due, TraceContext::default())
                .map_err(Error::database)?;
        let id = scheduled.id();
        self.scheduled.get_or_insert_default().push(scheduled);
        Ok(id)
    }

    /// Cancels a scheduled message (the derive's `cancel_scheduled`), in
    /// this transaction.
    #[doc(hidden)]
    pub async fn __cancel_scheduled(&mut self, id: MessageId) -> Result<bool, Error> {
        self.check_active()?;
        // One scheduled by this unit of work, not yet written.
        if let Some(scheduled) = &mut self.scheduled
            && let Some(i) = scheduled.iter().position(|s| s.id() == id)
        {
            scheduled.remove(i);
            return Ok(true);
        }
        match &mut self.backend {
            Backend::Database(tx) => tx.cancel_scheduled(id).await,
            Backend::Ended => Err(Error::TransactionFinished("ended")),
        }
    }

    #[doc(hidden)]
    pub fn __check_active(&self) -> Result<(), Error> {
        self.check_active()
    }

    fn check_active(&self) -> Result<(), Error> {
        match self.state {
            State::Active => Ok(()),
            State::Committed => Err(Error::TransactionFinished("committed")),
            State::RolledBack => Err(Error::TransactionFinished("rolled back")),
        }
    }

    /// Ends the transaction after a failed flush: rolls back, remembers a
    /// conflict, and returns the error.
    #[doc(hidden)]
    pub async fn __abort(&mut self, error: Error) -> Result<(), Error> {
        self.conflict = error.is_conflict();
        let _ = self.end_rollback().await;
        Err(error)
    }

    /// The rows of a commit whose events have handlers in this process: the
    /// external ones (`outbox`, in order) to publish, and every event with
    /// handlers here to dispatch, marked journaled.
    #[cold]
    fn journal(
        &mut self,
        outbox: Vec<ExternalMessage>,
        trace: &TraceContext,
    ) -> Result<Vec<OutboxWrite>, Error> {
        let mut published = outbox.into_iter();
        let mut rows = Vec::with_capacity(self.events.len());
        for event in &mut self.events {
            let dispatch = self.services.has_event_handlers(event.__type_id());
            let message = if event.is_external() {
                published
                    .next()
                    .expect("one outbox message per external event")
            } else if dispatch {
                let mut message = ExternalMessage::from_event(&**event).map_err(Error::database)?;
                message.trace = trace.clone();
                message
            } else {
                continue;
            };
            if dispatch {
                event.__set_journaled();
            }
            rows.push(OutboxWrite {
                message,
                publish: event.is_external(),
                dispatch,
            });
        }
        Ok(rows)
    }

    /// Writes the outbox and commits (the repositories were flushed).
    #[doc(hidden)]
    pub async fn __commit(&mut self) -> Result<(), Error> {
        self.check_active()?;
        if !self.events.is_empty() || self.scheduled.is_some() {
            // Boxed: what writing them keeps across its awaits (the outbox,
            // the trace, each step's `Result`) made this future 400 bytes,
            // carried by every handler's future that commits, and copied
            // into its box on every call, even when there was nothing to
            // write (a command's future was then mostly this).
            return Box::pin(self.commit_writing()).await;
        }
        let result = match std::mem::replace(&mut self.backend, Backend::Ended) {
            Backend::Database(tx) => tx.commit().await,
            Backend::Ended => Err(Error::TransactionFinished("ended")),
        };
        self.ended(result)
    }

    /// The commit of a transaction that raised events or scheduled
    /// messages: writes them, and commits.
    async fn commit_writing(&mut self) -> Result<(), Error> {
        let mut outbox = Vec::new();
        let mut unencodable = None;
        for event in &mut self.events {
            event.__set_metadata(self.metadata.caused_by());
            if event.is_external() {
                match ExternalMessage::from_event(&**event) {
                    Ok(message) => outbox.push(message),
                    Err(e) => {
                        unencodable = Some(Error::database(e));
                        break;
                    }
                }
            }
        }
        if let Some(e) = unencodable {
            // Cold: boxed, so that it does not size every commit's future.
            return Box::pin(self.__abort(e)).await;
        }
        // The trace the events continue where they are handled: the span
        // current at commit (the handler's): in the services that consume
        // the external ones, and in the recovery of the journaled ones.
        let trace = if self.events.is_empty() && self.scheduled.is_none() {
            TraceContext::default()
        } else {
            TraceContext::current()
        };
        if !trace.is_empty() {
            for message in &mut outbox {
                message.trace = trace.clone();
            }
            for scheduled in self.scheduled.iter_mut().flat_map(|s| s.iter_mut()) {
                scheduled.message.trace = trace.clone();
            }
        }
        let backend = std::mem::replace(&mut self.backend, Backend::Ended);
        let result = match backend {
            Backend::Database(mut tx) => {
                let journal = self.dispatches
                    && tx.keeps_journal()
                    && self
                        .events
                        .iter()
                        .any(|e| self.services.has_event_handlers(e.__type_id()));
                // The scheduled messages first (rare: no await otherwise).
                let scheduled = match &self.scheduled {
                    None => Ok(()),
                    Some(scheduled) => tx.schedule(scheduled).await,
                };
                let written = if let Err(e) = scheduled {
                    Err(e)
                } else if journal {
                    match self.journal(outbox, &trace) {
                        Ok(rows) => tx.write_events(&rows).await,
                        Err(e) => Err(e),
                    }
                } else if outbox.is_empty() {
                    Ok(())
                } else {
                    tx.write_outbox(&outbox).await
                };
                match written {
                    Ok(()) => tx.commit().await,
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
            Backend::Ended => Err(Error::TransactionFinished("ended")),
        };
        self.ended(result)
    }

    /// After the database's commit: committed, or rolled back with its
    /// events discarded.
    #[inline]
    fn ended(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        match result {
            Ok(()) => {
                self.state = State::Committed;
                self.conflict = false;
                Ok(())
            }
            Err(e) => {
                self.state = State::RolledBack;
                self.conflict = e.is_conflict();
                self.events.clear();
                self.scheduled = None;
                Err(e)
            }
        }
    }

    /// Rolls back and discards the collected events.
    #[doc(hidden)]
    pub async fn __rollback(&mut self) -> Result<(), Error> {
        self.check_active()?;
        self.end_rollback().await
    }

    async fn end_rollback(&mut self) -> Result<(), Error> {
        self.events.clear();
        self.scheduled = None;
        self.state = State::RolledBack;
        match std::mem::replace(&mut self.backend, Backend::Ended) {
            Backend::Database(tx) => tx.rollback().await,
            Backend::Ended => Ok(()),
        }
    }

    /// The events of a committed transaction, for the bus; `None` when
    /// there are none (nothing moved or dropped).
    #[inline]
    pub(crate) fn take_committed_events(&mut self) -> Option<Vec<Box<dyn AnyEvent>>> {
        if self.state == State::Committed && !self.events.is_empty() {
            Some(std::mem::take(&mut self.events))
        } else {
            None
        }
    }

    fn collect_events<A: Aggregate>(&mut self, aggregate: &mut A) {
        aggregate.events_mut().drain_into(&mut self.events);
    }

    /// The open transaction, or the error of a finished one.
    fn open(&mut self) -> Result<&mut dyn DatabaseTransaction, Error> {
        match &mut self.backend {
            Backend::Database(tx) => Ok(&mut **tx),
            Backend::Ended => Err(match self.state {
                State::Committed => Error::TransactionFinished("committed"),
                State::RolledBack => Error::TransactionFinished("rolled back"),
                State::Active => Error::TransactionFinished("ended"),
            }),
        }
    }

    /// Loads an aggregate through its repository, or the database's store.
    /// With the store, also its document as stored: what it is compared
    /// with to tell whether it changed.
    async fn load<A: Aggregate>(&mut self, id: &A::Id) -> Result<Option<Loaded<A>>, Error> {
        let repository = self.services.repository::<A>();
        let tx = self.open()?;
        match repository {
            Some(vtable) => Ok((vtable.get)(tx.connection(), id)
                .await?
                .map(Loaded::from_repository)),
            None => {
                let key = store::key::<A>(id);
                match tx.load_aggregate(AggregateType::of::<A>(), &key).await? {
                    None => Ok(None),
                    Some(stored) => Loaded::from_store(stored, Some(key)).map(Some),
                }
            }
        }
    }

    async fn find<A: Aggregate, F: Finder<A>>(
        &mut self,
        finder: &F,
    ) -> Result<Option<Loaded<A>>, Error> {
        if self.services.repository::<A>().is_some() {
            let vtable: &FinderVTable<A, F> = self.services.finder::<A, F>()?;
            let tx = self.open()?;
            return Ok((vtable.find)(tx.connection(), finder)
                .await?
                .map(Loaded::from_repository));
        }
        // No repository: the finder looks through the stored ones.
        let tx = self.open()?;
        for stored in tx.aggregates(AggregateType::of::<A>()).await? {
            let loaded = Loaded::from_store(stored, None)?;
            if finder.matches(&loaded.aggregate) {
                return Ok(Some(loaded));
            }
        }
        Ok(None)
    }

    /// Saves through the repository, or the store (under `key`, the one it
    /// was loaded by, or its own).
    async fn save<A: Aggregate>(
        &mut self,
        aggregate: &A,
        loaded: Option<u64>,
        key: Option<&str>,
    ) -> Result<(), Error> {
        let repository = self.services.repository::<A>();
        let tx = self.open()?;
        match repository {
            Some(vtable) => match loaded {
                None => (vtable.add)(tx.connection(), aggregate).await?,
                Some(expected) => {
                    if !(vtable.update)(tx.connection(), aggregate, expected).await? {
                        return Err(RepositoryError::Conflict {
                            aggregate: A::NAME,
                            id: format!("{:?}", aggregate.id()),
                            expected,
                        }
                        .into());
                    }
                }
            },
            None => {
                let own;
                let key = match key {
                    Some(key) => key,
                    None => {
                        own = store::key::<A>(aggregate.id());
                        &own
                    }
                };
                tx.save_aggregate(store::save(aggregate, key, loaded))
                    .await?;
            }
        }
        Ok(())
    }
}

/// An aggregate as loaded: with the store, also its document (what it is
/// compared with at commit) and its key.
struct Loaded<A> {
    aggregate: A,
    document: Option<String>,
    key: Option<String>,
}

impl<A: Aggregate> Loaded<A> {
    fn from_repository(aggregate: A) -> Self {
        Loaded {
            aggregate,
            document: None,
            key: None,
        }
    }

    fn from_store(stored: Stored, key: Option<String>) -> Result<Self, Error> {
        let (aggregate, document) = store::restore(stored, key.as_deref().unwrap_or("*"))?;
        Ok(Loaded {
            aggregate,
            document,
            key,
        })
    }
}

/// The aggregates of one type that a unit of work loaded or added: a field
/// of a unit of work, reached through its generated accessor, which returns
/// [`Aggregates`].
///
/// Each aggregate is loaded at most once per unit of work (a second `get`
/// returns the same one), and every one lent mutably is saved on commit.
pub struct IdentityMap<A: Aggregate> {
    tracked: Vec<Tracked<A>>,
}

struct Tracked<A> {
    aggregate: A,
    /// The version it had when loaded; `None` when it was added.
    loaded: Option<u64>,
    /// Lent mutably (`get`, `find`, `add`): saved on commit if it changed.
    /// An aggregate only `read` is not saved, so reading does not conflict
    /// with writers.
    dirty: bool,
    /// Its document as loaded, for an aggregate that serializes: one that
    /// is the same at commit is not written.
    snapshot: Option<String>,
    /// Its key in the database's store, when it was loaded from there.
    key: Option<String>,
}

impl<A: Aggregate> IdentityMap<A> {
    /// An empty identity map.
    pub fn new() -> Self {
        IdentityMap {
            tracked: Vec::new(),
        }
    }

    fn position(&self, id: &A::Id) -> Option<usize> {
        self.tracked.iter().position(|t| t.aggregate.id() == id)
    }

    /// Starts tracking a loaded aggregate (not yet lent mutably).
    fn track(&mut self, loaded: Loaded<A>) -> usize {
        self.tracked.push(Tracked {
            loaded: Some(loaded.aggregate.version()),
            aggregate: loaded.aggregate,
            dirty: false,
            snapshot: loaded.document,
            key: loaded.key,
        });
        self.tracked.len() - 1
    }

    fn lend_mut(&mut self, i: usize) -> &mut A {
        let tracked = &mut self.tracked[i];
        if !tracked.dirty {
            tracked.dirty = true;
            // What it was before the handler could change it (a document
            // store handed it over already).
            if tracked.snapshot.is_none()
                && tracked.loaded.is_some()
                && let Some(codec) = A::__codec()
            {
                tracked.snapshot = (codec.encode)(&tracked.aggregate).ok();
            }
        }
        &mut tracked.aggregate
    }

    /// The aggregates loaded or added so far (APwP's `seen`).
    pub fn seen(&self) -> impl Iterator<Item = &A> + '_ {
        self.tracked.iter().map(|t| &t.aggregate)
    }
}

impl<A: Aggregate> Default for IdentityMap<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> fmt::Debug for IdentityMap<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tracked.iter().map(|t| t.aggregate.id()))
            .finish()
    }
}

#[diagnostic::do_not_recommend]
impl<A: Aggregate> UowField for IdentityMap<A> {
    fn __sealed(_: sealed::Token) {}
    type Handle<'a> = Aggregates<'a, A>;
    const NEEDS_TRANSACTION: bool = true;

    type Prepared = ();
    fn __prepare(_: &Adapters<'_>) {}
    fn __begin(_: &(), _: &Context<'_>) -> Result<Self, Error> {
        Ok(IdentityMap::new())
    }

    fn __require(requirements: &mut Requirements) {
        requirements.repository::<A>();
    }

    fn __handle<'a>(&'a mut self, tx: &'a mut UowTransaction) -> Aggregates<'a, A> {
        Aggregates { map: self, tx }
    }

    async fn __flush<'a>(&'a mut self, tx: &'a mut UowTransaction) -> Result<(), Error> {
        // Saved in the order of their ids, whatever the order they were
        // loaded in: two units of work that change the same aggregates then
        // take their rows' locks in the same order, and never deadlock (on
        // Postgres a deadlock is found only after `deadlock_timeout`, 1 s
        // by default, and both are retried). The `Debug` form of the id is a
        // total order every process agrees on, and asks nothing more of the
        // id type. Most units of work change one aggregate: no order to
        // find, nothing allocated.
        let dirty = self.tracked.iter().filter(|t| t.dirty).count();
        if dirty > 1 {
            let mut order: Vec<usize> = (0..self.tracked.len())
                .filter(|i| self.tracked[*i].dirty)
                .collect();
            order.sort_by_cached_key(|i| format!("{:?}", self.tracked[*i].aggregate.id()));
            for i in order {
                save(&mut self.tracked[i], tx).await?;
            }
        } else if let Some(tracked) = self.tracked.iter_mut().find(|t| t.dirty) {
            save(tracked, tx).await?;
        }
        // Their events in the order the aggregates were loaded or added.
        for tracked in self.tracked.iter_mut().filter(|t| t.dirty) {
            tx.collect_events(&mut tracked.aggregate);
        }
        Ok(())
    }

    fn __discard(&mut self) {
        self.tracked.clear();
    }

    fn __changes(&self) -> usize {
        self.tracked.iter().filter(|t| t.dirty).count()
    }
}

/// Saves one tracked aggregate (its version raised past the one loaded),
/// unless it serializes to what it was when loaded: an unchanged aggregate
/// is not written, so it conflicts with nobody.
async fn save<A: Aggregate>(
    tracked: &mut Tracked<A>,
    tx: &mut UowTransaction,
) -> Result<(), Error> {
    if let (Some(snapshot), Some(codec)) = (&tracked.snapshot, A::__codec())
        && (codec.encode)(&tracked.aggregate).is_ok_and(|now| now == *snapshot)
    {
        return Ok(());
    }
    let aggregate = &mut tracked.aggregate;
    if let Some(loaded) = tracked.loaded {
        let version = aggregate.version().max(loaded + 1);
        aggregate.set_version(version);
    }
    tx.save(aggregate, tracked.loaded, tracked.key.as_deref())
        .await?;
    tracked.loaded = Some(aggregate.version());
    Ok(())
}

/// The aggregates of one type in a unit of work, as handlers use them:
/// `uow.products().get(&sku)`.
pub struct Aggregates<'a, A: Aggregate> {
    map: &'a mut IdentityMap<A>,
    tx: &'a mut UowTransaction,
}

impl<'a, A: Aggregate> Aggregates<'a, A> {
    /// The aggregate with this id, loaded once per unit of work and tracked:
    /// it is saved on commit (with a version check), and its events are
    /// collected.
    pub async fn get(self, id: &A::Id) -> Result<Option<&'a mut A>, Error> {
        self.tx.check_active()?;
        let i = match self.map.position(id) {
            Some(i) => i,
            None => match self.tx.load::<A>(id).await? {
                None => return Ok(None),
                Some(aggregate) => self.map.track(aggregate),
            },
        };
        Ok(Some(self.map.lend_mut(i)))
    }

    /// The aggregate with this id, to read only: unless it is also taken
    /// with [`get`](Self::get), it is not saved on commit, so a unit of work
    /// that only reads it never conflicts with one that changes it.
    pub async fn read(self, id: &A::Id) -> Result<Option<&'a A>, Error> {
        self.tx.check_active()?;
        let i = match self.map.position(id) {
            Some(i) => i,
            None => match self.tx.load::<A>(id).await? {
                None => return Ok(None),
                Some(aggregate) => self.map.track(aggregate),
            },
        };
        Ok(Some(&self.map.tracked[i].aggregate))
    }

    /// The aggregate the finder describes (looked for among the tracked ones
    /// first), tracked like [`get`](Self::get).
    pub async fn find<F: Finder<A>>(self, finder: &F) -> Result<Option<&'a mut A>, Error> {
        self.tx.check_active()?;
        let i = match self
            .map
            .tracked
            .iter()
            .position(|t| finder.matches(&t.aggregate))
        {
            Some(i) => i,
            None => match self.tx.find::<A, F>(finder).await? {
                None => return Ok(None),
                // Already tracked under another description: keep one copy.
                Some(found) => match self.map.position(found.aggregate.id()) {
                    Some(i) => i,
                    None => self.map.track(found),
                },
            },
        };
        Ok(Some(self.map.lend_mut(i)))
    }

    /// Adds a new aggregate; it is inserted on commit.
    #[allow(clippy::should_implement_trait)] // the repository vocabulary of DESIGN.md
    pub fn add(self, aggregate: A) -> Result<&'a mut A, Error> {
        self.tx.check_active()?;
        if self.map.position(aggregate.id()).is_some() {
            return Err(Error::AlreadyTracked {
                aggregate: A::NAME,
                id: format!("{:?}", aggregate.id()),
            });
        }
        self.map.tracked.push(Tracked {
            aggregate,
            loaded: None,
            dirty: true,
            snapshot: None,
            key: None,
        });
        let i = self.map.tracked.len() - 1;
        Ok(&mut self.map.tracked[i].aggregate)
    }

    /// The aggregates loaded or added so far.
    pub fn seen(&self) -> impl Iterator<Item = &A> + '_ {
        self.map.seen()
    }

    /// The aggregate with this id, tracked (loaded once) but not lent
    /// mutably: where it is in the map.
    pub(crate) async fn track_id(&mut self, id: &A::Id) -> Result<Option<usize>, Error> {
        self.tx.check_active()?;
        Ok(match self.map.position(id) {
            Some(i) => Some(i),
            None => self
                .tx
                .load::<A>(id)
                .await?
                .map(|aggregate| self.map.track(aggregate)),
        })
    }

    /// A tracked aggregate, to read.
    pub(crate) fn tracked(&self, i: usize) -> &A {
        &self.map.tracked[i].aggregate
    }

    /// A tracked aggregate, lent mutably (saved on commit).
    pub(crate) fn into_mut(self, i: usize) -> &'a mut A {
        self.map.lend_mut(i)
    }

    /// A tracked aggregate, to read.
    pub(crate) fn into_ref(self, i: usize) -> &'a A {
        &self.map.tracked[i].aggregate
    }
}

/// Only eda implements [`UowField`]: a unit of work's fields are identity
/// maps and adapters.
pub(crate) mod sealed {
    /// What only eda can name.
    pub struct Token;
}
