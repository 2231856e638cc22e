//! What the macros' generated code names, and nothing else. Not a public
//! API: it changes without notice.
#![allow(missing_docs)]

use std::any::Any;
use std::fmt;
use std::future::Future;

pub use inventory;

pub use crate::bus::{CommandCall, Context, EventCall};
pub use crate::registry::{
    CallOutcome, CommandHandlerRegistration, EventHandlerRegistration, EventOutcome,
    MessageRegistration, Requirements,
};
pub use crate::repository::{FinderVTableOf, RepositoryRegistration, RepositoryVTableOf};

use crate::MessageBus;
use crate::bus::{EventQueue, enqueue};
use crate::domain_error::BoxError;
use crate::error::{CommandError, IncomingError};
use crate::message::{Command, Event, Metadata};
use crate::uow::UnitOfWork;

pub use crate::future::BoxFuture;

impl<'a> CommandCall<'a> {
    #[allow(clippy::type_complexity)]
    pub fn into_parts<C: Command>(
        self,
    ) -> (
        Context<'a>,
        &'a C,
        &'a mut (dyn Any + Send),
        &'a mut EventQueue,
    ) {
        let message = self
            .message
            .downcast_ref::<C>()
            .expect("the bus calls a handler with the command it registered for");
        (self.ctx, message, self.out, self.events)
    }
}

impl<'a> EventCall<'a> {
    pub fn into_parts<E: Event>(self) -> (Context<'a>, &'a E, &'a mut EventQueue) {
        let event = self
            .event
            .downcast_ref::<E>()
            .expect("the bus calls a handler with the event it registered for");
        (self.ctx, event, self.events)
    }
}

/// For a message from outside, records it in the inbox, in the transaction
/// of the handler's unit of work. `false`: it was handled already.
/// (Generated code begins the unit of work itself, through trait paths, so
/// that a type that is not a unit of work is reported once, at the handler's
/// parameter.)
pub async fn record_inbox(tx: Option<&mut Transaction>, ctx: &Context<'_>) -> Result<bool, Error> {
    if ctx.incoming
        && let Some(tx) = tx
        && !tx.__record_inbox(ctx.handler).await?
    {
        tracing::debug!(handler = ctx.handler, "already handled (inbox), skipped");
        return Ok(false);
    }
    Ok(true)
}

/// After a command handler without a unit of work returned: its result
/// is in the output slot, whatever it is.
pub fn finish_command() -> CallOutcome {
    CallOutcome::Done
}

/// After a command handler with a unit of work returned: queue the events it
/// committed, and ask for a retry if it failed on a version conflict.
pub fn finish_command_uow<U: UnitOfWork>(
    failed: bool,
    uow: &mut U,
    events: &mut EventQueue,
    ctx: &Context<'_>,
) -> CallOutcome {
    if !failed {
        check_committed(uow, ctx);
    }
    let conflicted = match uow.__transaction() {
        Some(tx) => {
            enqueue(events, tx.take_committed_events());
            tx.conflicted()
        }
        None => false,
    };
    if failed && conflicted {
        CallOutcome::Conflict
    } else {
        CallOutcome::Done
    }
}

/// A handler that succeeded without committing a unit of work that holds
/// changes lost them (rule 10 of DESIGN.md: not silently).
fn check_committed<U: UnitOfWork>(uow: &mut U, ctx: &Context<'_>) {
    // Most handlers committed: that is all this asks of them.
    let raised = match uow.__transaction() {
        Some(tx) if tx.is_active() => tx.raised(),
        _ => return,
    };
    let changes = uow.__changes();
    if changes > 0 || raised > 0 {
        ctx.bus.uncommitted(ctx.handler, changes, raised);
    }
}

/// After an event handler without a unit of work returned.
pub fn finish_event(error: Option<String>) -> EventOutcome {
    match error {
        None => EventOutcome::Done,
        Some(error) => EventOutcome::Failed {
            error,
            committed: false,
        },
    }
}

/// After an event handler with a unit of work returned.
pub fn finish_event_uow<U: UnitOfWork>(
    error: Option<String>,
    uow: &mut U,
    events: &mut EventQueue,
    ctx: &Context<'_>,
) -> EventOutcome {
    if error.is_none() {
        check_committed(uow, ctx);
    }
    let committed = match uow.__transaction() {
        Some(tx) => {
            let committed = tx.is_committed();
            enqueue(events, tx.take_committed_events());
            committed
        }
        None => false,
    };
    match error {
        None => EventOutcome::Done,
        Some(error) => EventOutcome::Failed { error, committed },
    }
}

/// What an event handler may return: `()` or `Result<(), E>` with a
/// displayable `E`.
#[diagnostic::on_unimplemented(
    message = "an event handler must return `()` or `Result<(), E>`, not `{Self}`",
    label = "wrong return type for an event handler",
    note = "`E` is any error that implements `Display` (e.g. `anyhow::Error`, `eda_core::BoxError`, your own)"
)]
pub trait EventHandlerResult {
    fn into_error(self) -> Option<String>;
}

// `do_not_recommend`: the error names the handler's return type, not these
// impls (whose source the user cannot act on).
#[diagnostic::do_not_recommend]
impl EventHandlerResult for () {
    fn into_error(self) -> Option<String> {
        None
    }
}

#[diagnostic::do_not_recommend]
impl<E: fmt::Display> EventHandlerResult for Result<(), E> {
    fn into_error(self) -> Option<String> {
        self.err().map(|e| format!("{e:#}"))
    }
}

/// What a command handler for `C` may return: `Result<O, E>` where `O` is
/// the command's output (a parameter, so that the error can name it).
#[diagnostic::on_unimplemented(
    message = "a handler of command `{C}` must return `Result<{O}, E>`, not `{Self}`",
    label = "expected `Result<{O}, E>`",
    note = "the output type is set by `#[command(output = …)]` on `{C}`; `E` is `CommandError<Error>` (so that `?` sends the framework's errors to `CommandError::Bus`), the command's `Error` itself (`#[command(error = …)]`, `eda_core::BoxError` by default), or `eda_core::Error`"
)]
pub trait CommandHandlerResult<C, O> {
    type Error;
    fn split(self) -> Result<O, Self::Error>;
}

// No `C: Command` bound here or below: generated code passes `O` and `Err`
// as `C`'s, and "not a command" is reported once, at the parameter.
#[diagnostic::do_not_recommend]
impl<C: Command<Output = O>, O, E> CommandHandlerResult<C, O> for Result<O, E> {
    type Error = E;
    fn split(self) -> Result<O, E> {
        self
    }
}

/// Never used: with it, the bound above is ambiguous (not an error) while
/// `O` is unknown, i.e. when the handler's first parameter is not a command,
/// which is reported once, at the parameter.
#[doc(hidden)]
pub enum NotAnOutput<T> {
    #[allow(dead_code)]
    Never(std::convert::Infallible, T),
}

#[diagnostic::do_not_recommend]
impl<C, T, E> CommandHandlerResult<C, NotAnOutput<T>> for Result<T, E> {
    type Error = E;
    fn split(self) -> Result<NotAnOutput<T>, E> {
        unreachable!("`NotAnOutput` is never a command's output")
    }
}

/// The error a command handler returns, which converts into
/// `CommandError<Err>`, `Err` being the command's domain error.
#[diagnostic::on_unimplemented(
    message = "a handler of command `{C}` returns errors of type `{Self}`, which does not convert into `CommandError<{Err}>`",
    label = "`{Self}` does not convert into `CommandError<{Err}>`",
    note = "return `CommandError<{Err}>` (then `?` sends `{Err}` to `CommandError::Handler` and the framework's errors to `CommandError::Bus`), `{Err}` itself, or `eda_core::Error`; `{Err}` is set by `#[command(error = …)]` on `{C}`"
)]
pub trait CommandHandlerError<C, Err> {
    fn into_command_error(self) -> CommandError<Err>;
}

#[diagnostic::do_not_recommend]
impl<C, Err, E: Into<CommandError<Err>>> CommandHandlerError<C, Err> for E {
    fn into_command_error(self) -> CommandError<Err> {
        self.into()
    }
}

/// Writes a command handler's result in the bus's output slot; returns
/// whether it is an error.
pub fn write_command_result<C: Command>(
    result: Result<C::Output, CommandError<C::Error>>,
    out: &mut (dyn Any + Send),
) -> bool {
    let failed = result.is_err();
    if let Some(slot) = out.downcast_mut::<Option<Result<C::Output, CommandError<C::Error>>>>() {
        *slot = Some(result);
    }
    failed
}

/// Boxes a handler's future. Generated code first checks that the
/// handler's own future is `Send` (at the handler's name), so that a
/// failure names the handler, not this function.
pub fn send<'a, F: Future + Send + 'a>(future: F) -> BoxFuture<'a, F::Output> {
    Box::pin(future)
}

/// A message a handler takes by value: the bus clones it for each run, so
/// that it can run the handler again.
#[diagnostic::on_unimplemented(
    message = "a handler that takes `{Self}` by value needs `{Self}: Clone`",
    label = "the bus keeps the message to retry the handler",
    note = "derive `Clone` for `{Self}`, or take it by reference (`&{Self}`)"
)]
pub trait ByValue: Sized {
    fn take(&self) -> Self;
}

impl<T: Clone> ByValue for T {
    fn take(&self) -> Self {
        self.clone()
    }
}

/// Decodes and runs an incoming command.
pub fn dispatch_command<'a, C: Command>(
    bus: &'a MessageBus,
    metadata: Metadata,
    payload: &'a [u8],
) -> BoxFuture<'a, Result<(), IncomingError>> {
    Box::pin(crate::bus::dispatch_command::<C>(bus, metadata, payload))
}

/// Decodes and runs an incoming event.
pub fn dispatch_event<'a, E: Event>(
    bus: &'a MessageBus,
    metadata: Metadata,
    payload: &'a [u8],
) -> BoxFuture<'a, Result<(), IncomingError>> {
    Box::pin(crate::bus::dispatch_event::<E>(bus, metadata, payload))
}

pub type DefaultError = BoxError;

pub use crate::aggregate::{Aggregate, Events};
pub use crate::aggregate::{Codec, Probe, ViaSerde, WithoutSerde};
pub use crate::dependency::Dependency;
pub use crate::error::Error;
pub use crate::message::{Message, MessageKind};
pub use crate::repository::{Find, FinderVTable, Repository, RepositoryVTable};
pub use crate::uow::{Transaction, UowField};
pub use crate::{Command as CommandTrait, Event as EventTrait, UnitOfWork as UnitOfWorkTrait};
