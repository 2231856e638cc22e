//! What a handler's parameters after the message are resolved from
//! ([`Dependency`], [`DepSlot`], the [`Adapters`] a handler is prepared
//! from), and what they require of the bus ([`Requirements`], checked by
//! `build()`).

use std::any::{Any, TypeId};
use std::sync::Arc;

use crate::adapter::{Adapter, AdapterEntry};
use crate::aggregate::Aggregate;
use crate::context::{Context, TypeIdMap};
use crate::error::Error;
use crate::message::Metadata;

/// A handler parameter the bus can provide: `&T` for any [`Adapter`] `T`
/// given to the bus, `&Metadata` (of the message being handled),
/// `&Causation` (to send commands caused by it, once only) and
/// `&MessageBus` (to start a new conversation).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be injected into a handler",
    label = "neither an adapter nor a unit of work",
    note = "implement `eda_core::Adapter` for `{Self}` and give it to `MessageBus::builder().adapter(..)`, or derive `UnitOfWork` for it and take it as `&mut {Self}`"
)]
pub trait Dependency: Send + Sync + 'static {
    /// Only eda implements it (a type outside cannot name the token).
    #[doc(hidden)]
    fn __sealed(_: sealed::Token);
    /// What it takes from the bus once, when the bus is built (an adapter).
    #[doc(hidden)]
    fn __prepare(_adapters: &Adapters<'_>) -> Option<Arc<Self>>
    where
        Self: Sized,
    {
        None
    }
    /// What the call holds while the handler runs: a reference to what
    /// the bus owns, or a value made for the call (a
    /// [`Causation`](crate::Causation)).
    #[doc(hidden)]
    fn __resolve<'c>(
        prepared: &'c Option<Arc<Self>>,
        ctx: &'c Context<'_>,
    ) -> Result<DepSlot<'c, Self>, Error>
    where
        Self: Sized;
    #[doc(hidden)]
    fn __require(requirements: &mut Requirements);
}

#[diagnostic::do_not_recommend]
impl<T: Adapter> Dependency for T {
    fn __sealed(_: sealed::Token) {}
    fn __prepare(adapters: &Adapters<'_>) -> Option<Arc<T>> {
        adapters.get::<T>()
    }
    fn __resolve<'c>(
        prepared: &'c Option<Arc<T>>,
        _: &'c Context<'_>,
    ) -> Result<DepSlot<'c, T>, Error> {
        prepared
            .as_deref()
            .map(DepSlot::Lent)
            .ok_or_else(|| Error::MissingAdapter(std::any::type_name::<T>()))
    }
    fn __require(requirements: &mut Requirements) {
        requirements.adapter::<T>();
    }
}

#[diagnostic::do_not_recommend]
impl Dependency for Metadata {
    fn __sealed(_: sealed::Token) {}
    fn __resolve<'c>(
        _: &'c Option<Arc<Metadata>>,
        ctx: &'c Context<'_>,
    ) -> Result<DepSlot<'c, Metadata>, Error> {
        Ok(DepSlot::Lent(ctx.metadata))
    }
    fn __require(_: &mut Requirements) {}
}

/// The adapters given to a bus, by type: what handlers are prepared from.
pub struct Adapters<'a> {
    map: &'a TypeIdMap<AdapterEntry>,
}

impl<'a> Adapters<'a> {
    pub(crate) fn new(map: &'a TypeIdMap<AdapterEntry>) -> Self {
        Adapters { map }
    }

    /// The adapter of type `T`, if the bus was given one.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let entry = self.map.get(&TypeId::of::<T>())?;
        entry.any.clone().downcast::<T>().ok()
    }
}

/// What a dependency's slot holds: a reference to what the bus owns, or a
/// value made for the call (a [`Causation`](crate::Causation)).
pub enum DepSlot<'c, T> {
    /// Owned by the bus.
    Lent(&'c T),
    /// Made for this call.
    Made(T),
}

/// What a handler needs from the bus, as its registration declares it.
#[derive(Default, Debug)]
pub struct Requirements {
    items: Vec<Requirement>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Requirement {
    Adapter {
        type_id: TypeId,
        name: &'static str,
    },
    Database {
        unit_of_work: &'static str,
    },
    Repository {
        aggregate: TypeId,
        name: &'static str,
        /// It serializes: a document store can keep it.
        document: bool,
        /// Its Rust type, for errors.
        type_name: &'static str,
    },
}

impl Requirements {
    /// An adapter of type `T`.
    pub fn adapter<T: Adapter>(&mut self) {
        self.items.push(Requirement::Adapter {
            type_id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
        });
    }

    /// A database, for the transaction of this unit of work.
    pub fn database(&mut self, unit_of_work: &'static str) {
        self.items.push(Requirement::Database { unit_of_work });
    }

    /// A repository of `A` on the bus's database.
    pub fn repository<A: Aggregate>(&mut self) {
        self.items.push(Requirement::Repository {
            aggregate: TypeId::of::<A>(),
            name: A::NAME,
            document: A::__codec().is_some(),
            type_name: std::any::type_name::<A>(),
        });
    }

    pub(crate) fn items(&self) -> &[Requirement] {
        &self.items
    }
}

/// Only eda implements [`Dependency`]: a handler takes an adapter of the
/// user's by implementing [`Adapter`], never `Dependency` itself. (A token
/// in a method, not a supertrait: the error for a type that is not a
/// dependency stays the one `Dependency` explains.)
pub(crate) mod sealed {
    /// What only eda can name.
    pub struct Token;
}
