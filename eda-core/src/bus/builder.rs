//! [`BusBuilder`]: what an entrypoint gives the bus (adapters, scopes,
//! accepted commands, retry policies), and [`BusBuilder::build`], which
//! checks the wiring and builds the [`MessageBus`].

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::{BusInner, MessageBus, MessageRegistration, Metrics};
use crate::adapter::{Adapter, AdapterEntry};
use crate::context::{Services, TypeIdMap};
use crate::dependency::Adapters;
use crate::handler::{Prepared, PreparedEvent};
use crate::layer::{AnyLayer, Layer};
use crate::message::Command;
use crate::registry::{EventHandlerRegistration, MessageInfo, Wiring};
use crate::retry::RetryPolicy;
use crate::topology::events_going_nowhere;
use crate::wiring::{WiringError, WiringProblem};

impl MessageBus {
    /// Starts building a bus: give it the adapters this entrypoint uses, then
    /// [`build`](BusBuilder::build) it, which checks the wiring.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
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
    layers: Vec<Arc<dyn AnyLayer>>,
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

    /// Adds a [`Layer`] around every handler call: the first one added is
    /// the outermost.
    pub fn layer<L: Layer>(mut self, layer: L) -> Self {
        self.layers.push(Arc::new(layer));
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
        let mut database = None;
        let mut databases = 0;
        for (entry, id) in self.adapters.into_iter().zip(self.adapter_ids) {
            let adapter = entry.value.adapter();
            if adapter.as_database().is_some() {
                databases += 1;
                database = Some(entry.value.clone());
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

        let backend = database
            .as_ref()
            .and_then(|adapter| adapter.adapter().as_database())
            .map(|d| (d.connection_type(), d.aggregate_storage()));
        let has_adapter = |id: TypeId| adapters.contains_key(&id);
        // Message names are global: every message linked in, in scope or
        // not (the last of a name wins; two of one name are a problem).
        let linked: Vec<&'static MessageRegistration> =
            inventory::iter::<MessageRegistration>.into_iter().collect();
        let infos: Vec<&'static MessageInfo> = linked.iter().map(|m| &m.info).collect();
        let registry = Wiring {
            messages: &infos,
            scopes: &self.scopes,
            unhandled_allowed: &self.unhandled_allowed,
            adapters: &has_adapter,
            has_database: database.is_some(),
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

        // What each handler takes from the bus, resolved once (an
        // adapter's `Arc`), not looked up at each call.
        let prepare_from = Adapters::new(&adapters);
        let mut commands = TypeIdMap::default();
        for c in registry.commands {
            commands.insert(
                c.command,
                Prepared::new(c, c.handler_fn.prepare(&prepare_from)),
            );
        }
        let mut events: TypeIdMap<Vec<Prepared<EventHandlerRegistration, dyn PreparedEvent>>> =
            TypeIdMap::default();
        for e in registry.events {
            let handler = e.handler_fn.prepare(&prepare_from);
            events
                .entry(e.event)
                .or_default()
                .push(Prepared::new(e, handler));
        }
        let messages: HashMap<&'static str, &'static MessageRegistration> =
            linked.iter().map(|m| (m.info.name, *m)).collect();
        let mut consumed: Vec<&'static str> = messages
            .values()
            .map(|m| &m.info)
            .filter(|m| match m.kind {
                crate::message::MessageKind::Command => accepted.contains_key(&m.type_id),
                crate::message::MessageKind::Event => m.external && events.contains_key(&m.type_id),
            })
            .map(|m| m.name)
            .collect();
        consumed.sort_unstable();
        let scopes = &self.scopes;
        let warnings = events_going_nowhere(
            infos.iter().copied(),
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

        let handled_events = events.keys().copied().collect();
        Ok(MessageBus {
            inner: Arc::new(BusInner {
                commands,
                events: events
                    .into_iter()
                    .map(|(k, v)| (k, v.into_boxed_slice()))
                    .collect(),
                messages,
                services: Arc::new(Services {
                    adapters,
                    database,
                    repositories,
                    finders,
                    handled_events,
                    uncommitted: Default::default(),
                }),
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
                traced: std::iter::once(Arc::new(super::trace::Trace) as Arc<dyn AnyLayer>)
                    .chain(self.layers.iter().cloned())
                    .collect(),
                layers: self.layers.into_boxed_slice(),
            }),
        })
    }
}
