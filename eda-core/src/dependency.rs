//! What a handler's parameters after the message are resolved from.

use crate::adapter::Adapter;
use crate::bus::{Context, MessageBus};
use crate::error::Error;
use crate::handler::DepSlot;
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
    /// What the call holds while the handler runs: a reference to what
    /// the bus owns, or a value made for the call (a
    /// [`Causation`](crate::Causation)).
    #[doc(hidden)]
    fn __resolve<'c>(ctx: &'c Context<'_>) -> Result<DepSlot<'c, Self>, Error>
    where
        Self: Sized;
    #[doc(hidden)]
    fn __require(requirements: &mut Requirements);
}

#[diagnostic::do_not_recommend]
impl<T: Adapter> Dependency for T {
    fn __sealed(_: sealed::Token) {}
    fn __resolve<'c>(ctx: &'c Context<'_>) -> Result<DepSlot<'c, T>, Error> {
        ctx.bus
            .adapter::<T>()
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
    fn __resolve<'c>(ctx: &'c Context<'_>) -> Result<DepSlot<'c, Metadata>, Error> {
        Ok(DepSlot::Lent(ctx.metadata))
    }
    fn __require(_: &mut Requirements) {}
}

#[diagnostic::do_not_recommend]
impl Dependency for MessageBus {
    fn __sealed(_: sealed::Token) {}
    fn __resolve<'c>(ctx: &'c Context<'_>) -> Result<DepSlot<'c, MessageBus>, Error> {
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
