//! Topology by construction (its documentation is on [`Topology`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::message::MessageKind;
use crate::registry::MessageInfo;
use crate::wiring::Location;

/// Something about a service's topology that is probably a mistake: logged
/// at start, and listed by [`Topology::warnings`].
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TopologyWarning {
    /// An event of the bus's scope that has no handler in the bus and is
    /// not `external`: raising it does nothing. (Logged by
    /// [`BusBuilder::build`](crate::BusBuilder::build); each time one is
    /// raised it is also counted, see
    /// [`BusMetrics::events_unhandled`](crate::BusMetrics::events_unhandled).)
    EventGoesNowhere {
        /// The event's name.
        event: &'static str,
        /// Its Rust type.
        type_name: &'static str,
        /// Where it is declared.
        location: Location,
    },
    /// The service consumes this message from other services, but the
    /// bindings given instead of the bus's (`RabbitMqOptions::bind`) leave
    /// it out: it will never arrive.
    HandledButNotBound {
        /// The message's name.
        name: &'static str,
    },
    /// The bindings given instead of the bus's bind a message the service
    /// does not consume (an event it has no handler of, a command it does
    /// not accept, a name it does not know): such deliveries are
    /// dead-lettered.
    BoundButNotConsumed {
        /// The message's name, as bound.
        name: String,
        /// Why the service does not consume it.
        why: &'static str,
    },
}

impl fmt::Display for TopologyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyWarning::EventGoesNowhere {
                event,
                type_name,
                location,
            } => write!(
                f,
                "event `{event}` ({type_name}, {location}) has no handler in this service and is not `external`: raising it does nothing; handle it, mark it `#[event(external)]` for other services, or remove it"
            ),
            TopologyWarning::HandledButNotBound { name } => write!(
                f,
                "this service consumes `{name}` from other services, but the bindings given to its queue leave it out: it will never arrive"
            ),
            TopologyWarning::BoundButNotConsumed { name, why } => write!(
                f,
                "the queue is bound to `{name}`, but {why}: such messages will be dead-lettered"
            ),
        }
    }
}

/// What a service takes from the external bus, by construction (rule 9 of
/// DESIGN.md), whatever the broker: the names its queue is bound to, what
/// is wrong with them, and which bindings are left over from an earlier
/// version.
///
/// A service's queue is bound to
///
/// - every **external event** it handles, wherever the event is declared (a
///   shared contracts crate, another service's crate, its own): other
///   services publish those. One that the service publishes itself comes
///   back to it too; its consumer acknowledges that copy without handling
///   it again, since the instance that committed it handled it in-process
///   (the broker's `app_id` names the publishing service);
/// - the **commands it accepts** from other services:
///   [`BusBuilder::accept`](crate::BusBuilder::accept). By default a command
///   is handled in-process only, and one that arrives from the broker is
///   dead-lettered.
///
/// Events that are not `external` never travel between services: they are
/// not bound.
///
/// A limit of recognising a service's own events by the name it publishes
/// under: during a rolling deploy in which only the new version handles an
/// event the old one raises, the new instances take the old ones' copies for
/// their own and do not handle them. Deploy a new handler of a service's own
/// event before the code that relies on it, or give the new version another
/// queue.
///
/// ```standalone_crate
/// use eda_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// #[event(name = "orders.order_placed", external)]
/// pub struct OrderPlaced { pub orderid: String }
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "shipping.ship")]
/// pub struct Ship { pub orderid: String }
///
/// #[event_handler]
/// async fn on_order(_: &OrderPlaced) {}
///
/// #[command_handler]
/// async fn ship(_: Ship) -> Result<(), BoxError> { Ok(()) }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = MessageBus::builder().accept::<Ship>().build()?;
/// assert_eq!(bus.topology(None).bindings(), ["orders.order_placed", "shipping.ship"]);
/// # Ok(()) }
/// ```
///
/// A service's topology on the external bus: the names its queue is bound
/// to, and the warnings about them.
/// [`MessageBus::topology`](crate::MessageBus::topology) builds it; the
/// consumers declare it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Topology {
    bindings: Vec<String>,
    warnings: Vec<TopologyWarning>,
    known: Vec<&'static str>,
    /// The bindings whose type declares an ordering key.
    ordered: Vec<String>,
}

impl Topology {
    /// The topology of a service that consumes `consumed`, its queue bound
    /// to them or to `bindings` when given; `warnings`: what the bus found
    /// already; `known`: the name of every message linked in;
    /// `why_not_consumed` says why a name is not consumed.
    pub(crate) fn new(
        consumed: Vec<&'static str>,
        mut warnings: Vec<TopologyWarning>,
        bindings: Option<&[String]>,
        mut known: Vec<&'static str>,
        why_not_consumed: impl Fn(&str) -> &'static str,
        is_ordered: impl Fn(&str) -> bool,
    ) -> Self {
        let bindings: Vec<String> = match bindings {
            None => consumed.iter().map(|n| (*n).to_owned()).collect(),
            Some(given) => {
                for name in &consumed {
                    if !given.iter().any(|g| g == name) {
                        warnings.push(TopologyWarning::HandledButNotBound { name });
                    }
                }
                for name in given {
                    if !consumed.contains(&name.as_str()) {
                        warnings.push(TopologyWarning::BoundButNotConsumed {
                            name: name.clone(),
                            why: why_not_consumed(name),
                        });
                    }
                }
                let mut given = given.to_vec();
                given.sort();
                given.dedup();
                given
            }
        };
        known.sort_unstable();
        known.dedup();
        let ordered = bindings.iter().filter(|n| is_ordered(n)).cloned().collect();
        Topology {
            bindings,
            warnings,
            known,
            ordered,
        }
    }

    /// The names bound whose type declares an ordering key: consumed from
    /// the ordered partitions.
    pub(crate) fn ordered(&self) -> &[String] {
        &self.ordered
    }

    /// The names the service queue is bound to (the routing keys on a
    /// topic exchange), sorted.
    pub fn bindings(&self) -> &[String] {
        &self.bindings
    }

    /// What is probably wrong.
    pub fn warnings(&self) -> &[TopologyWarning] {
        &self.warnings
    }

    /// Logs the warnings about the bindings of `queue` (those about the
    /// bus itself were logged when it was built), the first time `logged`
    /// is found unset: a service declares its topology at start and again
    /// at each reconnection, and says so once.
    pub(crate) fn log_once(&self, queue: &str, logged: &std::sync::atomic::AtomicBool) {
        if logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for warning in &self.warnings {
            if !matches!(warning, TopologyWarning::EventGoesNowhere { .. }) {
                tracing::warn!(queue, "{warning}");
            }
        }
    }

    /// The bindings to remove from the queue: those it had before
    /// (`bound_before`, as recorded when they were made) and the names of
    /// every message linked into this binary, less the ones it needs now.
    /// A handler removed, a command no longer accepted: its binding goes.
    pub fn stale<'a>(&self, bound_before: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let needed: BTreeSet<&str> = self.bindings.iter().map(String::as_str).collect();
        let stale: BTreeSet<&str> = bound_before
            .into_iter()
            .chain(self.known.iter().copied())
            .filter(|name| !needed.contains(name))
            .collect();
        stale.into_iter().map(str::to_owned).collect()
    }
}

/// The events of `scope` that go nowhere (see
/// [`TopologyWarning::EventGoesNowhere`]), sorted by name.
pub(crate) fn events_going_nowhere<'a>(
    messages: impl Iterator<Item = &'a MessageInfo>,
    handled: impl Fn(&MessageInfo) -> bool,
    in_scope: impl Fn(&str) -> bool,
) -> Vec<TopologyWarning> {
    let mut found: Vec<_> = messages
        .filter(|m| {
            m.kind == MessageKind::Event && !m.external && in_scope(m.module) && !handled(m)
        })
        .map(|m| TopologyWarning::EventGoesNowhere {
            event: m.name,
            type_name: m.type_name,
            location: m.location,
        })
        .collect();
    found.sort_by_key(|w| match w {
        TopologyWarning::EventGoesNowhere { event, .. } => *event,
        _ => "",
    });
    found.dedup();
    found
}

/// How many slots the ordering keys are hashed into: a message with a key
/// is published with the routing key `<name>.k<slot>`, and a consuming
/// service binds each slot to one of its ordered partitions. Part of the
/// wire format: every service of an exchange must agree on it.
pub const ORDERING_SLOTS: u32 = 64;

/// The slot of an ordering key: FNV-1a (64 bits) of its UTF-8 bytes,
/// modulo [`ORDERING_SLOTS`]. Stable across versions and platforms, since
/// publishers and consumers built apart must agree.
///
/// ```
/// use eda_core::backend::{ORDERING_SLOTS, ordering_slot};
///
/// assert_eq!(ordering_slot("sku-1"), ordering_slot("sku-1"));
/// assert!(ordering_slot("sku-2") < ORDERING_SLOTS);
/// ```
pub fn ordering_slot(key: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(ORDERING_SLOTS)) as u32
}

/// The routing key of the slot `slot` of the message `name`.
pub fn slot_routing_key(name: &str, slot: u32) -> String {
    format!("{name}.k{slot}")
}
