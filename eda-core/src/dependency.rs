//! What a handler's parameters after the message are resolved from.

use crate::adapter::Adapter;
use crate::bus::{Context, MessageBus};
use crate::error::Error;
use std::sync::Arc;

use crate::handler::{Adapters, DepSlot};
use crate::message::Metadata;
use crate::registry::Requirements;

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
            .ok_or(Error::MissingAdapter(std::any::type_name::<T>()))
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

#[diagnostic::do_not_recommend]
impl Dependency for MessageBus {
    fn __sealed(_: sealed::Token) {}
    fn __resolve<'c>(
        _: &'c Option<Arc<MessageBus>>,
        ctx: &'c Context<'_>,
    ) -> Result<DepSlot<'c, MessageBus>, Error> {
        Ok(DepSlot::Lent(ctx.bus))
    }
    fn __require(_: &mut Requirements) {}
}

/// Only eda implements [`Dependency`]: a handler takes an adapter of the
/// user's by implementing [`Adapter`], never `Dependency` itself. (A token
/// in a method, not a supertrait: the error for a type that is not a
/// dependency stays the one `Dependency` explains.)
pub(crate) mod sealed {
    /// What only eda can name.
    pub struct Token;
}
