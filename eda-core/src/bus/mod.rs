//! The internal message bus: runs a command's handler, then the handlers of
//! every event raised, in order, until its queue is empty.
//!
//! The bus is cut by job: this module holds [`MessageBus`] itself, its
//! shared state and what it knows of its wiring (adapters, repositories,
//! the names it handles and consumes); `dispatch` runs commands and events
//! in process, `incoming` takes messages from a broker, `journal` recovers
//! the dispatch journal, `metrics` counts, `trace` is the bus's own span
//! around each handler call (a layer), and `builder` checks the wiring and
//! builds the bus.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::adapter::Adapter;
use crate::context::{Context, Services, TypeIdMap};
use crate::dependency::{DepSlot, Dependency, Requirements, sealed};
use crate::error::Error;
use crate::handler::{Prepared, PreparedCommand, PreparedEvent};
use crate::registry::{CommandHandlerRegistration, EventHandlerRegistration};
use crate::retry::RetryPolicy;
use crate::topology::{Topology, TopologyWarning};

mod builder;
mod dispatch;
mod incoming;
mod journal;
mod metrics;
mod retry;
mod scheduler;
mod trace;

pub use builder::BusBuilder;
pub use dispatch::{EventHandlerFailure, Report};
#[cfg(feature = "rabbitmq")]
pub(crate) use incoming::KeyedRoute;
pub use incoming::MessageRegistration;
pub(crate) use incoming::{dispatch_command, dispatch_event, keyed_route};
pub use metrics::BusMetrics;
use metrics::Metrics;

pub(crate) struct BusInner {
    /// Each handler with what it resolved when the bus was built.
    commands: TypeIdMap<Prepared<CommandHandlerRegistration, dyn PreparedCommand>>,
    events: TypeIdMap<Box<[Prepared<EventHandlerRegistration, dyn PreparedEvent>]>>,
    /// Every message type linked in, by name.
    messages: HashMap<&'static str, &'static MessageRegistration>,
    /// What handlers are lent: adapters, the database, repositories.
    services: Arc<Services>,
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
    /// The user's layers around every handler call, outermost first.
    layers: crate::layer::Layers,
    /// The same, inside the bus's own tracing layer (see `trace`): the
    /// stack while INFO spans are enabled.
    traced: crate::layer::Layers,
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
                &self.inner.services.adapters.values().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MessageBus {
    /// The adapter of type `T`, if the bus was given one.
    pub fn adapter<T: Adapter>(&self) -> Option<&T> {
        self.inner.services.adapter::<T>()
    }

    /// The names of the messages that have a handler in this bus, sorted:
    /// what it handles, from a broker or in-process. (What its queue is
    /// bound to is [`consumed_message_names`](Self::consumed_message_names).)
    pub fn handled_message_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .inner
            .messages
            .values()
            .map(|m| &m.info)
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
    /// [`Topology`](crate::Topology)), sorted: the external events it
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
            self.inner.messages.keys().copied().collect(),
            |name| self.why_not_consumed(name),
            |name| {
                self.inner
                    .messages
                    .get(name)
                    .is_some_and(|m| m.info.ordering_key.is_some())
            },
        )
    }

    /// Why this service does not consume `name` (which it does not).
    pub(crate) fn why_not_consumed(&self, name: &str) -> &'static str {
        match self.inner.messages.get(name).map(|m| &m.info) {
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

    /// The bus's database: what units of work begin their transactions on.
    pub(crate) fn database(&self) -> Option<&dyn crate::adapter::Database> {
        self.inner.services.database()
    }
}

impl<'a> Context<'a> {
    /// The bus that calls the handler.
    pub fn bus(&self) -> &'a MessageBus {
        // Only the bus makes a `Context`, and it lends itself.
        self.bus
            .downcast_ref::<MessageBus>()
            .expect("a handler's context is made by a `MessageBus`")
    }
}

#[diagnostic::do_not_recommend]
impl Dependency for MessageBus {
    fn __sealed(_: sealed::Token) {}
    fn __resolve<'c>(
        _: &'c Option<Arc<MessageBus>>,
        ctx: &'c Context<'_>,
    ) -> Result<DepSlot<'c, MessageBus>, Error> {
        Ok(DepSlot::Lent(ctx.bus()))
    }
    fn __require(_: &mut Requirements) {}
}
