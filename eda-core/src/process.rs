//! Process managers (sagas): the state of a long-running process that
//! spans several messages, kept per correlation key (an order's id, say)
//! and stored, version-checked, like an aggregate, in the transaction of
//! the handler that changes it.
//!
//! A process's state is a type of the user's that derives
//! [`ProcessState`](macro@crate::ProcessState); a unit of work holds a
//! [`ProcessMap`] of it, whose accessor returns [`Processes`]: the
//! handlers of the messages of the process [`start`](Processes::start) it,
//! [`get`](Processes::get) it to go on, and [`end`](Process::end) it. They
//! send commands (through [`Causation`](crate::Causation)), raise events
//! ([`Process::raise`]) and schedule their own timeouts
//! (`uow.schedule(..)`) as any handler does.
//!
//! ```standalone_crate
//! use std::time::Duration;
//! use eda_core::prelude::*;
//! use eda_core::{MessageId, ProcessMap, ProcessState};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "shop.order_placed")]
//! pub struct OrderPlaced { pub orderid: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "shop.order_paid")]
//! pub struct OrderPaid { pub orderid: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Command)]
//! #[command(name = "shop.expire_order")]
//! pub struct ExpireOrder { pub orderid: String }
//!
//! /// Waits for the payment of an order, for at most 30 s.
//! #[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
//! #[process(name = "shop.payment", key = String)]
//! pub struct Payment { pub timeout: MessageId }
//!
//! #[derive(UnitOfWork)]
//! pub struct ShopUow { tx: UowTransaction, payments: ProcessMap<Payment> }
//!
//! #[event_handler]
//! async fn await_payment(event: &OrderPlaced, uow: &mut ShopUow) -> Result<(), eda_core::Error> {
//!     let timeout = uow.schedule(ExpireOrder { orderid: event.orderid.clone() }, Duration::from_secs(30))?;
//!     uow.payments().start(event.orderid.clone(), Payment { timeout }).await?;
//!     uow.commit().await
//! }
//!
//! #[event_handler]
//! async fn paid(event: &OrderPaid, uow: &mut ShopUow) -> Result<(), eda_core::Error> {
//!     // `None`: the process has ended (it expired) or never started.
//!     let Some(payment) = uow.payments().get(&event.orderid).await? else { return Ok(()) };
//!     let timeout = payment.timeout;
//!     payment.end();
//!     uow.cancel_scheduled(timeout).await?;
//!     uow.commit().await
//! }
//!
//! #[command_handler]
//! async fn expire(cmd: ExpireOrder, uow: &mut ShopUow) -> Result<(), eda_core::Error> {
//!     if let Some(payment) = uow.payments().get(&cmd.orderid).await? {
//!         payment.end(); // and cancel the order, release its stock, ...
//!     }
//!     uow.commit().await
//! }
//! # fn main() {}
//! ```
//!
//! Two messages of one process handled at once never both win: the
//! second's commit fails its version check, and the bus runs its handler
//! again (a command at once, an event with the event retry policy), on the
//! state the first left.

use std::fmt;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Codec, Events};
use crate::context::Context;
use crate::dependency::{Adapters, Requirements};
use crate::error::Error;
use crate::message::Event;
use crate::uow::{Aggregates, IdentityMap, UowField, UowTransaction, sealed};

/// The state of a process manager, kept per correlation key. Derive it:
/// `#[derive(ProcessState)] #[process(name = "shop.payment", key = String)]`
/// (see [`process`](crate::ProcessMap) for a whole example).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the state of a process manager",
    label = "not a process state",
    note = "derive it: `#[derive(Clone, Serialize, Deserialize, eda_core::ProcessState)]` with `#[process(name = \"...\", key = KeyType)]`"
)]
pub trait ProcessState:
    Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The correlation key: what the messages of one process share (an
    /// order's id).
    type Key: ProcessKey;
    /// The process's name: where its states are stored, and in logs. Unique
    /// in a service.
    const NAME: &'static str;
    /// What [`Processes::get`] does with a message of a process that never
    /// started or has ended.
    const ON_MISSING: OnMissing = OnMissing::Ignore;
}

/// What a process's correlation key must be: compared, hashed, printed and
/// serialized (a `String`, a `Uuid`, a number).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the key of a process",
    label = "not a process key",
    note = "a process key is `Clone + Eq + Hash + Debug + Serialize + DeserializeOwned + Send + Sync` (a `String`, a `Uuid`, a number)"
)]
pub trait ProcessKey:
    Clone + Eq + Hash + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> ProcessKey for K where
    K: Clone + Eq + Hash + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// What [`Processes::get`] does with a message for a process that never
/// started or has ended (`#[process(missing = "ignore")]`, the default, or
/// `"error"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissing {
    /// Returns `None`, and logs it (INFO): a late message (after a
    /// timeout, say) is expected.
    Ignore,
    /// Returns [`Error::NoProcess`]: the handler fails, and the message is
    /// retried and then dead-lettered as any failure.
    Error,
}

/// One process: its key, its state (reached through `Deref`), whether it
/// has ended, its version, and the events it raised.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "S: ProcessState")]
pub struct Process<S: ProcessState> {
    key: S::Key,
    state: S,
    ended: bool,
    version: u64,
    #[serde(skip)]
    events: Events,
}

impl<S: ProcessState> Process<S> {
    /// Its correlation key.
    pub fn key(&self) -> &S::Key {
        &self.key
    }

    /// Ends it: it is kept, ended, so that a later message for it gets its
    /// declared outcome ([`ProcessState::ON_MISSING`]) rather than starting
    /// it again.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Whether it has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// How many times it was saved.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Raises an event, handled (and published, if external) when the unit
    /// of work commits.
    pub fn raise<E: Event>(&mut self, event: E) {
        self.events.raise(event);
    }
}

impl<S: ProcessState> Deref for Process<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S: ProcessState> DerefMut for Process<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

impl<S: ProcessState> fmt::Debug for Process<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(S::NAME)
            .field("key", &self.key)
            .field("state", &self.state)
            .field("ended", &self.ended)
            .field("version", &self.version)
            .finish()
    }
}

impl<S: ProcessState> Aggregate for Process<S> {
    type Id = S::Key;
    const NAME: &'static str = S::NAME;

    fn id(&self) -> &S::Key {
        &self.key
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, version: u64) {
        self.version = version;
    }
    fn events(&self) -> &Events {
        &self.events
    }
    fn events_mut(&mut self) -> &mut Events {
        &mut self.events
    }
    fn __codec() -> Option<Codec<Self>> {
        use crate::aggregate::ViaSerde;
        crate::aggregate::Probe::<Self>::new().__codec()
    }
}

/// The processes of one kind that a unit of work loaded or started: a
/// field of a unit of work (`payments: ProcessMap<Payment>`), reached
/// through its generated accessor, which returns [`Processes`].
pub struct ProcessMap<S: ProcessState> {
    map: IdentityMap<Process<S>>,
}

impl<S: ProcessState> fmt::Debug for ProcessMap<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

#[diagnostic::do_not_recommend]
impl<S: ProcessState> UowField for ProcessMap<S> {
    fn __sealed(_: sealed::Token) {}
    type Handle<'a> = Processes<'a, S>;
    const NEEDS_TRANSACTION: bool = true;

    type Prepared = ();
    fn __prepare(_: &Adapters<'_>) {}
    fn __begin(_: &(), _: &Context<'_>) -> Result<Self, Error> {
        Ok(ProcessMap {
            map: IdentityMap::new(),
        })
    }

    fn __require(requirements: &mut Requirements) {
        requirements.repository::<Process<S>>();
    }

    fn __handle<'a>(&'a mut self, tx: &'a mut UowTransaction) -> Processes<'a, S> {
        Processes {
            aggregates: UowField::__handle(&mut self.map, tx),
        }
    }

    async fn __flush<'a>(&'a mut self, tx: &'a mut UowTransaction) -> Result<(), Error> {
        UowField::__flush(&mut self.map, tx).await
    }

    fn __discard(&mut self) {
        UowField::__discard(&mut self.map);
    }

    fn __changes(&self) -> usize {
        UowField::__changes(&self.map)
    }
}

/// The processes of one kind in a unit of work, as handlers use them:
/// `uow.payments().get(&orderid)`.
pub struct Processes<'a, S: ProcessState> {
    aggregates: Aggregates<'a, Process<S>>,
}

/// A process as [`Processes::lookup`] finds it.
#[derive(Debug)]
pub enum Lookup<'a, S: ProcessState> {
    /// Started and not ended: to go on with.
    Running(&'a mut Process<S>),
    /// Ended: its last state, to read.
    Ended(&'a Process<S>),
    /// Never started (or started by a unit of work that did not commit).
    NotStarted,
}

impl<'a, S: ProcessState> Processes<'a, S> {
    /// Starts the process of `key` with its first state; it is stored when
    /// the unit of work commits. A process of this key that was started
    /// before, running or ended, is not started again:
    /// [`Error::ProcessStarted`]. (Two started at once: the second commit
    /// fails, and the bus runs its handler again, which then finds the
    /// first. Or the first commits before the second looks: the second gets
    /// `ProcessStarted` here, though what its handler read before may not
    /// show the first yet; each read sees what has committed when it runs.)
    pub async fn start(self, key: S::Key, state: S) -> Result<&'a mut Process<S>, Error> {
        let mut aggregates = self.aggregates;
        if let Some(i) = aggregates.track_id(&key).await? {
            let existing = aggregates.tracked(i);
            return Err(Error::ProcessStarted {
                process: S::NAME,
                key: format!("{:?}", existing.key),
                ended: existing.ended,
            });
        }
        aggregates.add(Process {
            key,
            state,
            ended: false,
            version: 0,
            events: Events::new(),
        })
    }

    /// The running process of `key`, to go on with (saved when the unit of
    /// work commits, with a version check). One that never started or has
    /// ended gets the process's declared outcome
    /// ([`ProcessState::ON_MISSING`]): `Ok(None)`, logged, or
    /// [`Error::NoProcess`].
    pub async fn get(self, key: &S::Key) -> Result<Option<&'a mut Process<S>>, Error> {
        let ended = match self.lookup(key).await? {
            Lookup::Running(process) => return Ok(Some(process)),
            Lookup::Ended(_) => true,
            Lookup::NotStarted => false,
        };
        match S::ON_MISSING {
            OnMissing::Ignore => {
                tracing::info!(
                    process = S::NAME,
                    key = ?key,
                    state = if ended { "ended" } else { "not started" },
                    "a message for a process that is not running: ignored"
                );
                Ok(None)
            }
            OnMissing::Error => Err(Error::NoProcess {
                process: S::NAME,
                key: format!("{key:?}"),
                ended,
            }),
        }
    }

    /// The process of `key`, whatever its state: for a handler that does
    /// something of its own with a message that comes after the end (a
    /// late answer to compensate, say).
    pub async fn lookup(self, key: &S::Key) -> Result<Lookup<'a, S>, Error> {
        let mut aggregates = self.aggregates;
        Ok(match aggregates.track_id(key).await? {
            None => Lookup::NotStarted,
            Some(i) if aggregates.tracked(i).ended => Lookup::Ended(aggregates.into_ref(i)),
            Some(i) => Lookup::Running(aggregates.into_mut(i)),
        })
    }
}
