//! What a handler call is given: the [`Context`] of the message being
//! handled, and the bus's [`Services`] (its adapters, its database, the
//! repositories on it) that parameters and units of work are resolved from.
//!
//! This module sits below the bus: the bus holds its handlers, and a
//! handler sees the bus only through these types, so that `handler`, `uow`
//! and `dependency` import nothing of `bus`. A handler that takes
//! `&MessageBus` (or a [`Causation`](crate::Causation), which sends
//! through it) gets it from [`Context::bus`], implemented by the bus.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::adapter::{Adapter, AdapterEntry, AnyAdapter, Database};
use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::message::Metadata;
use crate::repository::{Finder, FinderVTable, RepositoryVTable};

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

/// A map keyed by `TypeId`, hashed as is.
pub(crate) type TypeIdMap<V> = HashMap<TypeId, V, BuildHasherDefault<TypeIdHasher>>;

/// What the bus lends to the handlers it calls: its adapters, its database
/// and the repositories on it, and which events have handlers here (what a
/// commit journals). Built once, with the bus.
pub(crate) struct Services {
    pub(crate) adapters: TypeIdMap<AdapterEntry>,
    /// The adapter that is the bus's [`Database`](crate::backend::Database).
    pub(crate) database: Option<Arc<dyn AnyAdapter>>,
    pub(crate) repositories: TypeIdMap<&'static (dyn Any + Send + Sync)>,
    pub(crate) finders: HashMap<(TypeId, TypeId), &'static (dyn Any + Send + Sync)>,
    /// The events that have handlers in this bus.
    pub(crate) handled_events: HashSet<TypeId, BuildHasherDefault<TypeIdHasher>>,
    /// Handlers that succeeded without committing a unit of work that held
    /// changes (see [`BusMetrics::uncommitted`](crate::BusMetrics)).
    pub(crate) uncommitted: AtomicU64,
}

impl Services {
    /// The adapter of type `T`, if the bus was given one.
    pub(crate) fn adapter<T: Adapter>(&self) -> Option<&T> {
        self.adapters
            .get(&TypeId::of::<T>())
            .and_then(|a| a.value.as_any().downcast_ref::<T>())
    }

    /// The bus's database: what units of work begin their transactions on.
    pub(crate) fn database(&self) -> Option<&dyn Database> {
        self.database
            .as_ref()
            .and_then(|adapter| adapter.adapter().as_database())
    }

    /// Whether events of this type have handlers in this bus.
    pub(crate) fn has_event_handlers(&self, type_id: TypeId) -> bool {
        self.handled_events.contains(&type_id)
    }

    /// The repository of `A` on the bus's database; `None`: the
    /// database's own store keeps it.
    pub(crate) fn repository<A: Aggregate>(&self) -> Option<&'static RepositoryVTable<A>> {
        self.repositories
            .get(&TypeId::of::<A>())
            .and_then(|v| v.downcast_ref::<RepositoryVTable<A>>())
    }

    /// The finder `F` of `A`'s repository.
    pub(crate) fn finder<A: Aggregate, F: Finder<A>>(
        &self,
    ) -> Result<&'static FinderVTable<A, F>, Error> {
        self.finders
            .get(&(TypeId::of::<A>(), TypeId::of::<F>()))
            .and_then(|v| v.downcast_ref::<FinderVTable<A, F>>())
            .ok_or_else(|| Error::FinderMissing {
                aggregate: A::NAME,
                finder: std::any::type_name::<F>(),
                backend: self
                    .database()
                    .map_or("no database", |d| d.connection_type().1),
            })
    }

    /// A handler succeeded without committing its unit of work, which held
    /// changes: counted and logged.
    #[cold]
    pub(crate) fn uncommitted(&self, handler: &str, aggregates: usize, events: usize) {
        self.uncommitted.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            handler,
            aggregates,
            events,
            "a handler succeeded without committing its unit of work: what it changed is rolled back (call `uow.commit().await`, or `uow.rollback().await` to mean it)"
        );
    }
}

/// What the bus gives a handler call: its services, itself, and the
/// metadata of the message being handled.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub(crate) services: &'a Arc<Services>,
    /// The [`MessageBus`](crate::MessageBus) (see [`Context::bus`]).
    pub(crate) bus: &'a (dyn Any + Send + Sync),
    pub(crate) metadata: &'a Metadata,
    /// The message came from outside the service (or from the dispatch
    /// journal): handlers record it in their inbox, so that a redelivery
    /// changes nothing.
    pub(crate) incoming: bool,
    /// The bus handles the events its units of work commit (in a handler),
    /// so they go to the dispatch journal; `false` for
    /// [`MessageBus::begin`](crate::MessageBus::begin).
    pub(crate) dispatches: bool,
    /// The stable id of the handler being run (its key in the inbox); empty
    /// outside a handler.
    pub(crate) handler: &'static str,
}

impl<'a> Context<'a> {
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
