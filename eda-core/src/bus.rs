//! The internal message bus: runs a command's handler, then the handlers of
//! every event raised, in order, until its queue is empty.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::Instrument;

use crate::adapter::{Adapter, AdapterEntry, AnyAdapter};
use crate::aggregate::Aggregate;
use crate::error::{CommandError, Error, IncomingError};
use crate::message::{AnyEvent, Command, Envelope, Event, MessageId, Metadata, Raised};
use crate::private::{CallOutcome, EventOutcome};
use crate::registry::{
    CommandHandlerRegistration, EventHandlerRegistration, HandlerRef, MessageRegistration, Wiring,
    WiringError, WiringProblem,
};
use crate::repository::{Finder, FinderVTable, RepositoryVTable};
use crate::retry::RetryPolicy;
use crate::topology::{Topology, TopologyWarning, events_going_nowhere};

/// A `TypeId` is already a hash: use it as is.
#[derive(Default)]
pub(crate) struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64 ^ (n >> 64) as u64;
    }
}

type TypeIdMap<V> = HashMap<TypeId, V, BuildHasherDefault<TypeIdHasher>>;

/// The queue of events waiting for their handlers.
pub(crate) type EventQueue = VecDeque<Box<dyn AnyEvent>>;

/// Appends committed events to the queue, without copying when it is empty.
pub(crate) fn enqueue(queue: &mut EventQueue, events: Vec<Box<dyn AnyEvent>>) {
    if events.is_empty() {
    } else if queue.is_empty() {
        *queue = VecDeque::from(events);
    } else {
        queue.extend(events);
    }
}

pub(crate) enum DatabaseRole {
    None,
    Other { adapter: Arc<dyn AnyAdapter> },
}

pub(crate) struct BusInner {
    commands: TypeIdMap<&'static CommandHandlerRegistration>,
    events: TypeIdMap<Box<[&'static EventHandlerRegistration]>>,
    messages: HashMap<&'static str, &'static MessageRegistration>,
    adapters: TypeIdMap<AdapterEntry>,
    pub(crate) database: DatabaseRole,
    repositories: TypeIdMap<&'static (dyn Any + Send + Sync)>,
    finders: HashMap<(TypeId, TypeId), &'static (dyn Any + Send + Sync)>,
    command_retry: RetryPolicy,
    event_retry: RetryPolicy,
    metrics: Metrics,
    /// The names of the messages the service takes from the broker
    /// (see [`crate::topology`]), sorted.
    consumed: Box<[&'static str]>,
    /// What `build` found probably wrong.
    warnings: Vec<TopologyWarning>,
    /// The events without handlers that were raised, logged once each.
    went_nowhere: std::sync::Mutex<HashSet<&'static str>>,
}

/// The internal message bus. Cheap to clone (an `Arc`); build it once at
/// start with [`MessageBus::builder`] and share it with every entrypoint.
///
/// ```standalone_crate
/// # use eda_core::*;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "doc.greet", output = String)]
/// pub struct Greet { pub name: String }
///
/// #[command_handler]
/// async fn greet(cmd: Greet) -> Result<String, BoxError> {
///     Ok(format!("hello, {}", cmd.name))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = MessageBus::builder().build()?;
/// assert_eq!(bus.handle(Greet { name: "you".into() }).await?, "hello, you");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MessageBus {
    pub(crate) inner: Arc<BusInner>,
}

impl fmt::Debug for MessageBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageBus")
            .field("commands", &self.inner.commands.len())
            .field("events", &self.inner.events.len())
            .field(
                "adapters",
                &self.inner.adapters.values().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What the bus gives a generated handler: itself, and the metadata of the
/// message being handled.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub(crate) bus: &'a MessageBus,
    pub(crate) metadata: &'a Metadata,
    /// The message came from outside the service (or from the dispatch
    /// journal): handlers record it in their inbox, so that a redelivery
    /// changes nothing.
    pub(crate) incoming: bool,
    /// The bus handles the events its units of work commit (in a handler),
    /// so they go to the dispatch journal; `false` for
    /// [`MessageBus::begin`].
    pub(crate) dispatches: bool,
    /// The stable id of the handler being run (its key in the inbox); empty
    /// outside a handler.
    pub(crate) handler: &'static str,
}

impl<'a> Context<'a> {
    /// The bus.
    pub fn bus(&self) -> &'a MessageBus {
        self.bus
    }

    /// The metadata of the message being handled.
    pub fn metadata(&self) -> &'a Metadata {
        self.metadata
    }

    /// The stable id of the handler being run: `#[event_handler(id = "…")]`,
    /// or `<crate>::<fn name>` by default. Empty outside a handler.
    pub fn handler(&self) -> &'static str {
        self.handler
    }
}

/// One call of a command handler, type-erased.
#[doc(hidden)]
pub struct CommandCall<'a> {
    pub ctx: Context<'a>,
    pub message: &'a (dyn Any + Send + Sync),
    pub out: &'a mut (dyn Any + Send),
    pub events: &'a mut EventQueue,
}

/// One call of an event handler, type-erased.
#[doc(hidden)]
pub struct EventCall<'a> {
    pub ctx: Context<'a>,
    pub event: &'a (dyn Any + Send + Sync),
    pub events: &'a mut EventQueue,
}

/// An event handler that failed after its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventHandlerFailure {
    /// The event's name.
    pub event: &'static str,
    /// The event's metadata.
    pub metadata: Metadata,
    /// The handler.
    pub handler: HandlerRef,
    /// How many times it ran.
    pub attempts: u32,
    /// Its last error, displayed.
    pub error: String,
}

impl fmt::Display for EventHandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handler {} of event `{}` ({}) failed after {} attempt(s): {}",
            self.handler, self.event, self.metadata.message_id, self.attempts, self.error
        )
    }
}

/// What happened to the events a message raised: which event handlers failed
/// after their retries. A failing event handler does not fail the command
/// that raised the event; it is reported here, logged, and counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// How many event handler runs succeeded.
    pub handled: usize,
    /// The event handlers that failed.
    pub failures: Vec<EventHandlerFailure>,
}

impl Report {
    /// Whether every event handler succeeded.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Counters of the bus since it was built.
#[derive(Default, Debug)]
struct Metrics {
    command_conflicts: AtomicU64,
    event_handler_failures: AtomicU64,
    event_handler_retries: AtomicU64,
    events_unhandled: AtomicU64,
    uncommitted: AtomicU64,
}

/// A snapshot of the bus's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusMetrics {
    /// Command runs that ended in a version conflict (and were retried, or
    /// returned once out of attempts).
    pub command_conflicts: u64,
    /// Event handlers that failed after their retries.
    pub event_handler_failures: u64,
    /// Event handler runs that failed and were retried.
    pub event_handler_retries: u64,
    /// Events raised that have no handler here and are not `external`:
    /// they went nowhere (each name is also logged, once).
    pub events_unhandled: u64,
    /// Handlers that succeeded without committing a unit of work that held
    /// changes (aggregates lent mutably, events raised): the changes were
    /// rolled back. Each is also logged.
    pub uncommitted: u64,
}

impl MessageBus {
    /// Starts building a bus: give it the adapters this entrypoint uses, then
    /// [`build`](BusBuilder::build) it, which checks the wiring.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// Handles a command that starts a conversation: runs its handler,
    /// processes the events it raised, and returns the handler's result.
    pub async fn handle<C: Command>(
        &self,
        command: C,
    ) -> Result<C::Output, CommandError<C::Error>> {
        self.handle_envelope(Envelope::new(command)).await
    }

    /// Handles a command with the given metadata (e.g. caused by another
    /// message).
    pub async fn handle_envelope<C: Command>(
        &self,
        envelope: Envelope<C>,
    ) -> Result<C::Output, CommandError<C::Error>> {
        let mut report = Report::default();
        self.run_command(&envelope, &mut report, false).await
    }

    /// Like [`handle`](Self::handle), and also returns the report of the
    /// event handlers that ran.
    pub async fn handle_with_report<C: Command>(
        &self,
        envelope: Envelope<C>,
    ) -> (Result<C::Output, CommandError<C::Error>>, Report) {
        let mut report = Report::default();
        let result = self.run_command(&envelope, &mut report, false).await;
        (result, report)
    }

    /// Handles an event that was not raised by an aggregate of this service
    /// (a test, an entrypoint): runs its handlers and the events they raise.
    pub async fn publish<E: Event>(&self, envelope: Envelope<E>) -> Report {
        self.run_event(envelope, false).await
    }

    async fn run_event<E: Event>(&self, envelope: Envelope<E>, incoming: bool) -> Report {
        let mut report = Report::default();
        let mut queue = EventQueue::new();
        // On the stack: no allocation for the event, nor for the queue
        // unless its handlers raise more events.
        let event = Raised {
            metadata: envelope.metadata,
            event: envelope.message,
            journaled: false,
        };
        self.process_events(Some(&event), &mut queue, &mut report, incoming)
            .await;
        report
    }

    /// Handles a message that arrived from outside the service (a broker):
    /// decodes it by name and handles it as a command or an event.
    ///
    /// Errors say why it was not handled: an unknown name or a malformed body
    /// (the consumer dead-letters those at once), or a handler error (the
    /// consumer retries).
    pub async fn handle_incoming(
        &self,
        name: &str,
        metadata: Metadata,
        payload: &[u8],
    ) -> Result<(), IncomingError> {
        let Some(registration) = self.inner.messages.get(name) else {
            return Err(IncomingError::UnknownMessage {
                name: name.to_owned(),
            });
        };
        (registration.dispatch)(self, metadata, payload).await
    }

    /// Begins a unit of work outside any handler: for an entrypoint's reads
    /// (a read model, APwP's `views`), a script, a test. Dropping it rolls
    /// back; `commit` saves what it changed and writes the outbox, but the
    /// events it collects are not handled (raise them in a command's
    /// handler instead).
    ///
    /// ```ignore
    /// let mut uow = bus.begin::<ViewsUow>().await?;
    /// let view = uow.views().read(&orderid).await?;
    /// ```
    pub async fn begin<U: crate::UnitOfWork>(&self) -> Result<U, Error> {
        let metadata = Metadata::new();
        let ctx = Context {
            bus: self,
            metadata: &metadata,
            incoming: false,
            dispatches: false,
            handler: "",
        };
        U::__begin(&ctx).await
    }

    /// The adapter of type `T`, if the bus was given one.
    pub fn adapter<T: Adapter>(&self) -> Option<&T> {
        self.inner
            .adapters
            .get(&TypeId::of::<T>())
            .and_then(|a| a.value.as_any().downcast_ref::<T>())
    }

    pub(crate) fn adapter_arc<T: Adapter>(&self) -> Option<Arc<T>> {
        let entry = self.inner.adapters.get(&TypeId::of::<T>())?;
        entry.any.clone().downcast::<T>().ok()
    }

    /// Counters since the bus was built.
    pub fn metrics(&self) -> BusMetrics {
        let m = &self.inner.metrics;
        BusMetrics {
            command_conflicts: m.command_conflicts.load(Ordering::Relaxed),
            event_handler_failures: m.event_handler_failures.load(Ordering::Relaxed),
            event_handler_retries: m.event_handler_retries.load(Ordering::Relaxed),
            events_unhandled: m.events_unhandled.load(Ordering::Relaxed),
            uncommitted: m.uncommitted.load(Ordering::Relaxed),
        }
    }

    /// The names of the messages that have a handler in this bus, sorted:
    /// what it handles, from a broker or in-process. (What its queue is
    /// bound to is [`consumed_message_names`](Self::consumed_message_names).)
    pub fn handled_message_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .inner
            .messages
            .values()
            .filter(|m| {
                self.inner.commands.contains_key(&m.type_id)
                    || self.inner.events.contains_key(&m.type_id)
            })
            .map(|m| m.name)
            .collect();
        names.sort_unstable();
        names
    }

    /// The names of the messages this service consumes from a broker (see
    /// [`topology`](crate::topology)), sorted: the external events it
    /// handles, wherever they are declared, and the commands it
    /// [accepts](BusBuilder::accept).
    pub fn consumed_message_names(&self) -> Vec<&'static str> {
        self.inner.consumed.to_vec()
    }

    /// Whether this service consumes the message `name` from a broker.
    pub fn consumes(&self, name: &str) -> bool {
        self.inner.consumed.binary_search(&name).is_ok()
    }

    /// The service's topology on the external bus: its queue bound to
    /// [`consumed_message_names`](Self::consumed_message_names), or to
    /// `bindings` when given (an override, which the warnings compare with
    /// what the service consumes).
    pub fn topology(&self, bindings: Option<&[String]>) -> Topology {
        Topology::new(
            self.consumed_message_names(),
            self.inner.warnings.clone(),
            bindings,
            |name| self.why_not_consumed(name),
        )
    }

    /// Why this service does not consume `name` (which it does not).
    pub(crate) fn why_not_consumed(&self, name: &str) -> &'static str {
        match self.inner.messages.get(name) {
            None => "no message of this name is linked into this service",
            Some(m) => match m.kind {
                crate::message::MessageKind::Command
                    if self.inner.commands.contains_key(&m.type_id) =>
                {
                    "this command is not accepted from the broker (`MessageBus::builder().accept::<…>()`)"
                }
                crate::message::MessageKind::Command => {
                    "this service has no handler of this command"
                }
                crate::message::MessageKind::Event if !m.external => {
                    "this event is not `external`: no service publishes it"
                }
                crate::message::MessageKind::Event => "this service has no handler of this event",
            },
        }
    }

    /// A message that came from the broker: whether this service takes it
    /// (see [`topology`](crate::topology)). `Ok(false)`: an event this
    /// service published itself, handled in-process by the instance that
    /// committed it: acknowledge it, do not handle it again.
    pub(crate) fn admit(
        &self,
        name: &str,
        published_by: Option<&str>,
        service: &str,
    ) -> Result<bool, IncomingError> {
        let Some(m) = self.inner.messages.get(name) else {
            return Err(IncomingError::UnknownMessage {
                name: name.to_owned(),
            });
        };
        if !self.consumes(name) {
            return Err(IncomingError::NotConsumed {
                name: m.name,
                why: self.why_not_consumed(name),
            });
        }
        Ok(!(m.kind == crate::message::MessageKind::Event && published_by == Some(service)))
    }

    /// Whether events of this type have handlers in this bus.
    pub(crate) fn has_event_handlers(&self, type_id: TypeId) -> bool {
        self.inner.events.contains_key(&type_id)
    }

    /// The bus's database, if it is a [`Database`](crate::Database) (not
    /// the in-memory one).
    fn database(&self) -> Option<&dyn crate::adapter::Database> {
        match &self.inner.database {
            DatabaseRole::Other { adapter } => adapter.adapter().as_database(),
            DatabaseRole::None => None,
        }
    }

    /// Marks the journaled events whose handlers here have run.
    #[cold]
    async fn mark_dispatched(&self, ids: &[MessageId]) {
        if let Some(db) = self.database()
            && let Err(e) = db.mark_dispatched(ids).await
        {
            // They will be dispatched again by the recovery; the inbox
            // keeps handlers with a unit of work from running twice.
            tracing::warn!(error = %e, events = ids.len(), "could not mark events dispatched");
        }
    }

    /// Handles the events of the dispatch journal that were committed more
    /// than `older_than` ago and never dispatched: their process died
    /// between the commit and the end of their handlers. Only events this
    /// bus has handlers for are taken (a newer version of the service, or
    /// another service on the same tables, recovers its own). Each runs as if it
    /// came from a broker: handlers with a unit of work record it in their
    /// inbox, so one that had already run is skipped; handlers without one
    /// run again (at least once). Returns how many events it handled.
    ///
    /// Run it periodically in every instance ([`recovery`](Self::recovery)
    /// does), with `older_than` well above the time a message takes to
    /// handle, so that it does not race a live instance's own dispatch.
    pub async fn recover_undispatched(&self, older_than: Duration) -> Result<usize, Error> {
        const BATCH: usize = 256;
        let Some(db) = self.database() else {
            return Ok(0);
        };
        // The events this bus handles; others are left to whoever does.
        let names: Vec<&str> = self
            .inner
            .messages
            .values()
            .filter(|m| {
                m.kind == crate::message::MessageKind::Event
                    && self.inner.events.contains_key(&m.type_id)
            })
            .map(|m| m.name)
            .collect();
        if names.is_empty() {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let rows = db.undispatched(&names, older_than, BATCH).await?;
            for row in &rows {
                tracing::warn!(
                    name = row.name,
                    id = %row.metadata.message_id,
                    "dispatching an event its process did not finish"
                );
                let handled = match self.inner.messages.get(row.name.as_str()) {
                    Some(registration) => {
                        (registration.dispatch)(self, row.metadata, &row.payload).await
                    }
                    None => Err(IncomingError::UnknownMessage {
                        name: row.name.clone(),
                    }),
                };
                if let Err(e) = handled {
                    tracing::error!(error = %e, name = row.name, "a recovered event failed");
                }
            }
            let ids: Vec<MessageId> = rows.iter().map(|r| r.metadata.message_id).collect();
            if !ids.is_empty() {
                db.mark_dispatched(&ids).await?;
            }
            total += rows.len();
            if rows.len() < BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs [`recover_undispatched`](Self::recover_undispatched) every
    /// `every` (and once at once), for events older than `older_than`,
    /// until `shutdown` resolves. Errors are logged and the next round
    /// tries again.
    ///
    /// ```no_run
    /// # async fn run(bus: eda_core::MessageBus) {
    /// use std::time::Duration;
    /// let recovery = bus.recovery(Duration::from_secs(5), Duration::from_secs(10), std::future::pending());
    /// tokio::spawn(recovery);
    /// # }
    /// ```
    pub fn recovery(
        &self,
        every: Duration,
        older_than: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let bus = self.clone();
        async move {
            let rounds = async {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match bus.recover_undispatched(older_than).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(events = n, "recovered undispatched events"),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not recover undispatched events")
                        }
                    }
                }
            };
            tokio::select! {
                () = rounds => {}
                () = shutdown => {}
            }
        }
    }

    /// The repository of `A` on the bus's database; `None`: the
    /// database's own store keeps it.
    pub(crate) fn repository<A: Aggregate>(&self) -> Option<&'static RepositoryVTable<A>> {
        self.inner
            .repositories
            .get(&TypeId::of::<A>())
            .and_then(|v| v.downcast_ref::<RepositoryVTable<A>>())
    }

    pub(crate) fn finder<A: Aggregate, F: Finder<A>>(
        &self,
    ) -> Result<&'static FinderVTable<A, F>, Error> {
        self.inner
            .finders
            .get(&(TypeId::of::<A>(), TypeId::of::<F>()))
            .and_then(|v| v.downcast_ref::<FinderVTable<A, F>>())
            .ok_or(Error::FinderMissing {
                aggregate: A::NAME,
                finder: std::any::type_name::<F>(),
                backend: self.backend_name(),
            })
    }

    fn backend_name(&self) -> &'static str {
        match &self.inner.database {
            DatabaseRole::None => "no database",
            DatabaseRole::Other { adapter } => adapter
                .adapter()
                .as_database()
                .map(|d| d.connection_type().1)
                .unwrap_or("the database"),
        }
    }

    pub(crate) async fn run_command<C: Command>(
        &self,
        envelope: &Envelope<C>,
        report: &mut Report,
        incoming: bool,
    ) -> Result<C::Output, CommandError<C::Error>> {
        let Some(entry) = self.inner.commands.get(&TypeId::of::<C>()) else {
            return Err(CommandError::Bus(Error::NoHandler(C::NAME)));
        };
        let span = if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "command",
                name = C::NAME,
                id = %envelope.metadata.message_id,
                handler = entry.handler,
            )
        } else {
            tracing::Span::none()
        };
        let mut queue = EventQueue::new();
        let result = async {
            let policy = &self.inner.command_retry;
            let mut attempt = 1;
            loop {
                let mut out: Option<Result<C::Output, CommandError<C::Error>>> = None;
                let outcome = (entry.call)(CommandCall {
                    ctx: Context {
                        bus: self,
                        metadata: &envelope.metadata,
                        incoming,
                        dispatches: true,
                        handler: entry.id,
                    },
                    message: &envelope.message,
                    out: &mut out,
                    events: &mut queue,
                })
                .await;
                let conflict = match &outcome {
                    CallOutcome::Conflict => true,
                    // A conflict before the handler ran (the database too
                    // busy to begin, or to record the inbox) is retried too.
                    CallOutcome::Failed(e) => e.is_conflict(),
                    CallOutcome::Done | CallOutcome::Duplicate => false,
                };
                if conflict {
                    self.inner
                        .metrics
                        .command_conflicts
                        .fetch_add(1, Ordering::Relaxed);
                    if attempt < policy.attempts() {
                        let delay = policy.delay(attempt);
                        tracing::debug!(attempt, ?delay, "version conflict, retrying");
                        Box::pin(tokio::time::sleep(delay)).await;
                        attempt += 1;
                        continue;
                    }
                    tracing::warn!(attempt, "version conflict, out of attempts");
                }
                match outcome {
                    CallOutcome::Done | CallOutcome::Conflict => {}
                    CallOutcome::Duplicate => {
                        return Err(CommandError::Bus(Error::AlreadyHandled(
                            envelope.metadata.message_id,
                        )));
                    }
                    CallOutcome::Failed(e) => return Err(CommandError::Bus(e)),
                }
                return match out {
                    Some(result) => result,
                    None => Err(CommandError::Bus(Error::NoHandler(C::NAME))),
                };
            }
        };
        let result = if span.is_disabled() {
            result.await
        } else {
            result.instrument(span).await
        };
        // Events committed by the handler are processed even when it failed
        // afterwards: their state is saved, so they must not be lost.
        if !queue.is_empty() {
            // Boxed: a command that raised no event does not carry the
            // state of the event loop in its future (which every caller's
            // future embeds and copies).
            Box::pin(self.process_events(None, &mut queue, report, false)).await;
        }
        result
    }

    /// Runs the handlers of each queued event, in order, until the queue is
    /// empty. `incoming`: the first event came from outside the service.
    ///
    /// Kept flat on purpose: the state kept across each handler's await is
    /// its boxed future and a few words, not a nest of async fn futures that
    /// would be copied on every call.
    pub(crate) async fn process_events(
        &self,
        mut first: Option<&dyn AnyEvent>,
        queue: &mut EventQueue,
        report: &mut Report,
        mut incoming: bool,
    ) {
        let mut dispatched: Vec<MessageId> = Vec::new();
        loop {
            let popped;
            let event: &dyn AnyEvent = match first.take() {
                Some(event) => event,
                None => match queue.pop_front() {
                    Some(event) => {
                        popped = event;
                        &*popped
                    }
                    None => break,
                },
            };
            let Some(handlers) = self.inner.events.get(&event.__type_id()) else {
                if !event.is_external() {
                    self.went_nowhere(event);
                }
                incoming = false;
                continue;
            };
            // A journaled event is recorded in its handlers' inboxes, so
            // that the recovery skips the ones that ran.
            let journaled = event.__journaled();
            let incoming = std::mem::take(&mut incoming) || journaled;
            for handler in handlers.iter() {
                let mut attempt = 1;
                loop {
                    let call = (handler.call)(EventCall {
                        ctx: Context {
                            bus: self,
                            metadata: event.metadata(),
                            incoming,
                            dispatches: true,
                            handler: handler.id,
                        },
                        event: event.as_any(),
                        events: queue,
                    });
                    let outcome = match event_span(event, handler) {
                        None => call.await,
                        Some(span) => call.instrument(span).await,
                    };
                    match outcome {
                        EventOutcome::Done => {
                            report.handled += 1;
                            break;
                        }
                        EventOutcome::Failed { error, committed } => {
                            match self.event_handler_failed(
                                handler, event, attempt, error, committed, report,
                            ) {
                                Some(delay) => {
                                    Box::pin(tokio::time::sleep(delay)).await;
                                    attempt += 1;
                                }
                                None => break,
                            }
                        }
                    }
                }
            }
            if journaled {
                dispatched.push(event.metadata().message_id);
            }
        }
        if !dispatched.is_empty() {
            self.mark_dispatched(&dispatched).await;
        }
    }

    /// A handler returned success without committing its unit of work,
    /// which held changes: they are rolled back. Counted and logged.
    #[cold]
    pub(crate) fn uncommitted(&self, handler: &str, aggregates: usize, events: usize) {
        self.inner
            .metrics
            .uncommitted
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            handler,
            aggregates,
            events,
            "a handler succeeded without committing its unit of work: what it changed is rolled back (call `uow.commit().await`, or `uow.rollback().await` to mean it)"
        );
    }

    /// An event with no handler here and not `external` was raised: counted,
    /// and logged once per name.
    #[cold]
    fn went_nowhere(&self, event: &dyn AnyEvent) {
        self.inner
            .metrics
            .events_unhandled
            .fetch_add(1, Ordering::Relaxed);
        let first = self
            .inner
            .went_nowhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event.name());
        if first {
            tracing::warn!(
                event = event.name(),
                id = %event.metadata().message_id,
                "an event with no handler in this service, and not `external`, was raised: it goes nowhere (logged once per event)"
            );
        }
    }

    /// After an event handler's run failed: the delay before the next
    /// attempt, or `None` once it is reported.
    fn event_handler_failed(
        &self,
        handler: &'static EventHandlerRegistration,
        event: &dyn AnyEvent,
        attempt: u32,
        error: String,
        committed: bool,
        report: &mut Report,
    ) -> Option<std::time::Duration> {
        let policy = &self.inner.event_retry;
        let metrics = &self.inner.metrics;
        // A handler that committed before failing is not run again: its
        // effects are saved.
        if !committed && attempt < policy.attempts() {
            metrics
                .event_handler_retries
                .fetch_add(1, Ordering::Relaxed);
            let delay = policy.delay(attempt);
            tracing::debug!(
                handler = handler.handler,
                attempt,
                ?delay,
                %error,
                "event handler failed, retrying"
            );
            return Some(delay);
        }
        let failure = EventHandlerFailure {
            event: event.name(),
            metadata: *event.metadata(),
            handler: handler.describe(),
            attempts: attempt,
            error,
        };
        tracing::error!(%failure, "event handler failed");
        metrics
            .event_handler_failures
            .fetch_add(1, Ordering::Relaxed);
        report.failures.push(failure);
        None
    }
}

/// The span of one event handler run, if anyone listens.
fn event_span(event: &dyn AnyEvent, handler: &EventHandlerRegistration) -> Option<tracing::Span> {
    // Cheaper than building a disabled span (which, with tracing's `log`
    // feature that sqlx turns on, still asks the `log` facade).
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return None;
    }
    let span = tracing::debug_span!(
        "event",
        name = event.name(),
        id = %event.metadata().message_id,
        handler = handler.handler,
    );
    (!span.is_disabled()).then_some(span)
}

/// Runs an incoming command (see [`MessageBus::handle_incoming`]).
pub(crate) async fn dispatch_command<C: Command>(
    bus: &MessageBus,
    metadata: Metadata,
    payload: &[u8],
) -> Result<(), IncomingError> {
    let command: C =
        serde_json::from_slice(payload).map_err(|source| IncomingError::Malformed {
            name: C::NAME,
            source,
        })?;
    let envelope = Envelope::with_metadata(command, metadata);
    let mut report = Report::default();
    match bus.run_command(&envelope, &mut report, true).await {
        Ok(_) | Err(CommandError::Bus(Error::AlreadyHandled(_))) => Ok(()),
        Err(CommandError::Handler(e)) => Err(IncomingError::Handler {
            name: C::NAME,
            error: e.to_string(),
            conflict: false,
        }),
        // A version conflict that outlived the command's retries.
        Err(CommandError::Bus(e)) if e.is_conflict() => Err(IncomingError::Handler {
            name: C::NAME,
            error: e.to_string(),
            conflict: true,
        }),
        Err(CommandError::Bus(e)) => Err(IncomingError::Framework {
            name: C::NAME,
            source: Box::new(e),
        }),
    }
}

/// Runs an incoming event (see [`MessageBus::handle_incoming`]).
pub(crate) async fn dispatch_event<E: Event>(
    bus: &MessageBus,
    metadata: Metadata,
    payload: &[u8],
) -> Result<(), IncomingError> {
    let event: E = serde_json::from_slice(payload).map_err(|source| IncomingError::Malformed {
        name: E::NAME,
        source,
    })?;
    let report = bus
        .run_event(Envelope::with_metadata(event, metadata), true)
        .await;
    match report.failures.first() {
        None => Ok(()),
        Some(first) => Err(IncomingError::EventHandlers {
            name: E::NAME,
            failed: report.failures.len(),
            first: first.to_string(),
        }),
    }
}

/// Builds a [`MessageBus`]: the adapters an entrypoint chooses, the retry
/// policies, and which handlers to include.
#[derive(Default)]
pub struct BusBuilder {
    adapters: Vec<AdapterEntry>,
    adapter_ids: Vec<TypeId>,
    scopes: Vec<String>,
    unhandled_allowed: Vec<TypeId>,
    accepted: Vec<(TypeId, &'static str)>,
    command_retry: Option<RetryPolicy>,
    event_retry: Option<RetryPolicy>,
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("adapters", &self.adapters)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl BusBuilder {
    /// Gives the bus an adapter: a database (units of work begin their
    /// transactions on it), an external bus, or anything handlers take as
    /// `&T`.
    pub fn adapter<T: Adapter>(mut self, adapter: T) -> Self {
        let adapter = Arc::new(adapter);
        self.adapters.push(AdapterEntry {
            name: std::any::type_name::<T>(),
            value: adapter.clone(),
            any: adapter,
        });
        self.adapter_ids.push(TypeId::of::<T>());
        self
    }

    /// Includes only the handlers (and commands) declared in these modules
    /// and their submodules, e.g. `"allocation"` or `module_path!()`. By
    /// default every handler linked into the binary is included.
    ///
    /// Handlers register themselves globally; a test binary that holds the
    /// handlers of several services uses scopes to build each one's bus.
    pub fn scope(mut self, module_path: impl Into<String>) -> Self {
        self.scopes.push(module_path.into());
        self
    }

    /// Accepts that command `C` has no handler in this bus (it is sent to
    /// another service).
    pub fn allow_unhandled<C: Command>(mut self) -> Self {
        self.unhandled_allowed.push(TypeId::of::<C>());
        self
    }

    /// Accepts command `C` from other services over the broker: the
    /// service queue is bound to it, and the consumer handles it. Without
    /// this, a command is handled in-process only, and a copy that arrives
    /// from the broker (sent to the queue by hand, say) is dead-lettered:
    /// anyone who can publish to the exchange can send what a service
    /// accepts, so it accepts only what it means to. `build()` checks that
    /// the bus has `C`'s handler.
    ///
    /// ```ignore
    /// MessageBus::builder().accept::<Allocate>().accept::<CreateBatch>()
    /// ```
    pub fn accept<C: Command>(mut self) -> Self {
        self.accepted.push((TypeId::of::<C>(), C::NAME));
        self
    }

    /// How command handlers are retried on a version conflict (default: 10
    /// attempts, 5 ms to 500 ms apart, jittered: about 1.5 s in all). A
    /// conflict that outlives these is the caller's error, or, for a
    /// message from a broker, a failure the consumer retries after its
    /// (much longer) retry delays: under contention on a few hot
    /// aggregates, 5 attempts up to 200 ms sent one order in six of the
    /// two-service test there, and it took 35 s instead of 3.4 to settle.
    pub fn command_retry(mut self, policy: RetryPolicy) -> Self {
        self.command_retry = Some(policy);
        self
    }

    /// How failing event handlers are retried (default: 3 attempts, 10 ms to
    /// 1 s apart).
    pub fn event_retry(mut self, policy: RetryPolicy) -> Self {
        self.event_retry = Some(policy);
        self
    }

    /// Checks the whole wiring and builds the bus. Every problem is reported
    /// in the one error, each naming the handler and where it is declared:
    /// a command without a handler or with two, a dependency no adapter
    /// provides, a unit of work without a database, an aggregate without a
    /// repository for the database, two message types with one name.
    pub fn build(self) -> Result<MessageBus, WiringError> {
        let mut problems = Vec::new();

        let mut adapters: TypeIdMap<AdapterEntry> = TypeIdMap::default();
        let mut database = DatabaseRole::None;
        let mut databases = 0;
        for (entry, id) in self.adapters.into_iter().zip(self.adapter_ids) {
            let adapter = entry.value.adapter();
            if adapter.as_database().is_some() {
                databases += 1;
                database = DatabaseRole::Other {
                    adapter: entry.value.clone(),
                };
            }
            if adapters.insert(id, entry.clone()).is_some() {
                problems.push(WiringProblem::DuplicateAdapter {
                    adapter: entry.name,
                });
            }
        }
        if databases > 1 {
            problems.push(WiringProblem::DuplicateAdapter {
                adapter: "database",
            });
        }

        let backend = match &database {
            DatabaseRole::Other { adapter } => adapter
                .adapter()
                .as_database()
                .map(|d| (d.connection_type(), d.aggregate_storage())),
            DatabaseRole::None => None,
        };
        let has_adapter = |id: TypeId| adapters.contains_key(&id);
        let registry = Wiring {
            scopes: &self.scopes,
            unhandled_allowed: &self.unhandled_allowed,
            adapters: &has_adapter,
            has_database: !matches!(database, DatabaseRole::None),
            backend,
        }
        .check(&mut problems);

        let mut accepted = TypeIdMap::default();
        for (command, name) in self.accepted {
            if !registry.commands.iter().any(|c| c.command == command) {
                problems.push(WiringProblem::AcceptedCommandWithoutHandler { command: name });
            }
            accepted.insert(command, ());
        }

        if !problems.is_empty() {
            return Err(WiringError { problems });
        }

        let mut commands = TypeIdMap::default();
        for c in registry.commands {
            commands.insert(c.command, c);
        }
        let mut events: TypeIdMap<Vec<&'static EventHandlerRegistration>> = TypeIdMap::default();
        for e in registry.events {
            events.entry(e.event).or_default().push(e);
        }
        let mut consumed: Vec<&'static str> = registry
            .messages
            .values()
            .filter(|m| match m.kind {
                crate::message::MessageKind::Command => accepted.contains_key(&m.type_id),
                crate::message::MessageKind::Event => m.external && events.contains_key(&m.type_id),
            })
            .map(|m| m.name)
            .collect();
        consumed.sort_unstable();
        let scopes = &self.scopes;
        let warnings = events_going_nowhere(
            inventory::iter::<MessageRegistration>.into_iter(),
            |m| events.contains_key(&m.type_id),
            |module| crate::registry::in_scope(scopes, module),
        );
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        let mut repositories = TypeIdMap::default();
        let mut finders = HashMap::new();
        for r in registry.repositories {
            match r.finder {
                None => {
                    repositories.insert(r.aggregate, r.vtable);
                }
                Some((finder, _)) => {
                    finders.insert((r.aggregate, finder), r.vtable);
                }
            }
        }

        Ok(MessageBus {
            inner: Arc::new(BusInner {
                commands,
                events: events
                    .into_iter()
                    .map(|(k, v)| (k, v.into_boxed_slice()))
                    .collect(),
                messages: registry.messages,
                adapters,
                database,
                repositories,
                finders,
                command_retry: self.command_retry.unwrap_or_else(|| {
                    // See `command_retry`.
                    RetryPolicy::new(10).backoff(
                        std::time::Duration::from_millis(5),
                        std::time::Duration::from_millis(500),
                    )
                }),
                event_retry: self.event_retry.unwrap_or_default(),
                metrics: Metrics::default(),
                consumed: consumed.into_boxed_slice(),
                warnings,
                went_nowhere: std::sync::Mutex::new(HashSet::new()),
            }),
        })
    }
}
