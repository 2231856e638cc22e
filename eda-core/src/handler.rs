//! Typed handlers: how the bus calls a handler function, in ordinary generic
//! Rust (the axum and bevy model).
//!
//! A handler is an `async fn` whose first parameter is the message (by
//! value or by reference: [`ByValue`], [`ByRef`]) and whose other
//! parameters are each a [`Param`]: a [`Dependency`](crate::Dependency)
//! lent by the bus (`&Db`, `&Metadata`, `&Causation`, `&MessageBus`: [`Dep`])
//! or a unit of work (`&mut ShopUow`: [`Uow`]); a tuple of them is
//! [`Params`]. [`HandlerFn`] is implemented, once per arity, for every
//! function of the message and those parameters whose future is `Send`.
//! [`command_handler`] and [`event_handler`] tie a function to its
//! parameters and return a [`TypedCommand`] or [`TypedEvent`], which the bus
//! calls through [`CommandHandlerFn`] / [`EventHandlerFn`], one pointer per
//! handler, made at compile time.
//!
//! What a call does, in order: resolve the parameters (begin the unit of
//! work's transaction), record the message in the inbox when it came from
//! outside, call the function, convert its result (a command's output goes
//! to the bus's output slot), hand on the events the unit of work committed,
//! and tell the bus how it ended ([`CallOutcome`], [`EventOutcome`]).
//!
//! `#[command_handler]` and `#[event_handler]` only register the function
//! and name these items with the spans of the user's tokens. Each bound a
//! user's mistake can break is asked once, where the type is named: by
//! [`dep`], [`uow`] and [`by_value`] (which keep what they need of the
//! type's traits as function pointers, so that nothing later asks again),
//! and by [`command_handler`] for the return type and the `Send` future.
//! rustc then reports each mistake once, at the user's tokens.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use crate::context::Context;
use crate::dependency::{Adapters, DepSlot, Dependency, Requirements};
use crate::error::{CommandError, Error};
use crate::future::BoxFuture;
use crate::inbox;
use crate::message::{AnyEvent, Command, Event};
use crate::uow::{Begun, UnitOfWork, UowTransaction};

/// The queue of events waiting for their handlers.
pub(crate) type EventQueue = VecDeque<Box<dyn AnyEvent>>;

/// Drops a queue. One that never held an event owns nothing and is not
/// dropped: that would be two calls (one per half of its ring) for
/// nothing, after most messages.
#[inline]
pub(crate) fn discard(queue: EventQueue) {
    if queue.capacity() == 0 {
        std::mem::forget(queue);
    }
}

/// Appends committed events to the queue, without copying when it is empty.
pub(crate) fn enqueue(queue: &mut EventQueue, events: Vec<Box<dyn AnyEvent>>) {
    if events.is_empty() {
    } else if queue.is_empty() {
        *queue = VecDeque::from(events);
    } else {
        queue.extend(events);
    }
}

/// One call of a command handler, type-erased. (Where its output goes is
/// an argument of its own: a fat pointer in a struct is written as two
/// words and read back as one 16-byte load, which waits for the writes to
/// land; as an argument it stays in registers.)
#[doc(hidden)]
pub struct CommandCall<'a> {
    /// Lent, not copied: the caller keeps it across the call's attempts.
    pub ctx: &'a Context<'a>,
    pub message: &'a (dyn Any + Send + Sync),
    pub events: &'a mut EventQueue,
}

/// One call of an event handler, type-erased.
#[doc(hidden)]
pub struct EventCall<'a> {
    pub ctx: &'a Context<'a>,
    pub event: &'a (dyn Any + Send + Sync),
    pub events: &'a mut EventQueue,
}

/// A registration with its handler, prepared when the bus was built.
pub(crate) struct Prepared<R: 'static, C: ?Sized> {
    registration: &'static R,
    /// The handler with what its parameters resolved once (the adapters
    /// they take), ready to call.
    pub(crate) prepared: Box<C>,
}

impl<R, C: ?Sized> Prepared<R, C> {
    pub(crate) fn new(registration: &'static R, prepared: Box<C>) -> Self {
        Prepared {
            registration,
            prepared,
        }
    }
}

impl<R, C: ?Sized> Deref for Prepared<R, C> {
    type Target = R;
    fn deref(&self) -> &R {
        self.registration
    }
}

/// How a command handler's run ended.
#[derive(Debug)]
pub enum CallOutcome {
    /// It returned; its result is in the output slot.
    Done {
        /// It returned an error.
        failed: bool,
    },
    /// It returned an error after its unit of work hit a version conflict:
    /// run it again.
    Conflict,
    /// The message was handled before (inbox): nothing ran.
    Duplicate,
    /// The framework could not run it. Boxed, like [`EventOutcome`]'s
    /// failure: an outcome is returned in registers.
    Failed(Box<Error>),
}

impl CallOutcome {
    /// The framework could not run it.
    #[cold]
    fn failed(e: Error) -> Self {
        CallOutcome::Failed(Box::new(e))
    }
}

impl CallOutcome {
    /// The bus runs the handler again: its unit of work hit a version
    /// conflict, or the database was too busy to begin it or to record
    /// the inbox before the handler ran.
    pub(crate) fn is_conflict(&self) -> bool {
        match self {
            CallOutcome::Conflict => true,
            CallOutcome::Failed(e) => e.is_conflict(),
            CallOutcome::Done { .. } | CallOutcome::Duplicate => false,
        }
    }
}

/// How an event handler's run ended.
#[derive(Debug)]
pub enum EventOutcome {
    /// It returned `Ok`.
    Done,
    /// The message was handled before (inbox): nothing ran.
    Duplicate,
    /// It failed. Boxed: an outcome is a word, returned in a register by
    /// every handler call (a `String` in it made the caller read it back
    /// from memory the callee had just written in pieces, which the CPU
    /// cannot forward: a stall on every call).
    Failed(Box<EventFailed>),
}

/// How an event handler failed.
#[derive(Debug)]
pub struct EventFailed {
    /// Why.
    pub error: String,
    /// Whether its unit of work had committed (it is not run again).
    pub committed: bool,
}

impl EventOutcome {
    /// It failed.
    #[cold]
    pub fn failed(error: String, committed: bool) -> Self {
        EventOutcome::Failed(Box::new(EventFailed { error, committed }))
    }

    /// The framework could not run it.
    #[cold]
    pub fn framework(e: Error) -> Self {
        Self::failed(e.to_string(), false)
    }
}

/// A command handler, type-erased: what a registration points at.
pub trait CommandHandlerFn: Send + Sync + 'static {
    /// Resolves, once, what its parameters take from the bus: the handler
    /// ready to call.
    fn prepare(&'static self, adapters: &Adapters<'_>) -> Box<dyn PreparedCommand>;
    /// What its parameters need from the bus (checked by `build()`).
    fn requirements(&self, requirements: &mut Requirements);
}

/// A command handler with what its parameters resolved when the bus was
/// built.
pub trait PreparedCommand: Send + Sync {
    /// Runs the handler once; its result goes to `out`.
    fn call<'a>(
        &'a self,
        call: CommandCall<'a>,
        out: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, CallOutcome>;
}

/// An event handler, type-erased: what a registration points at.
pub trait EventHandlerFn: Send + Sync + 'static {
    /// Resolves, once, what its parameters take from the bus: the handler
    /// ready to call.
    fn prepare(&'static self, adapters: &Adapters<'_>) -> Box<dyn PreparedEvent>;
    /// What its parameters need from the bus (checked by `build()`).
    fn requirements(&self, requirements: &mut Requirements);
}

/// An event handler with what its parameters resolved when the bus was
/// built.
pub trait PreparedEvent: Send + Sync {
    /// Runs the handler once.
    fn call<'a>(&'a self, call: EventCall<'a>) -> BoxFuture<'a, EventOutcome>;
}

/// How a handler takes its message.
pub trait MessageParam: Send + Sync + 'static {
    /// The message.
    type Message: 'static;
    /// What the function receives.
    type Arg<'s>;
    /// The argument, from the message the bus holds.
    fn arg<'s>(&self, message: &'s Self::Message) -> Self::Arg<'s>;
}

/// The message by reference (`cmd: &Allocate`).
pub struct ByRef<M>(PhantomData<fn() -> M>);

/// The message by reference.
pub const fn by_ref<M>() -> ByRef<M> {
    ByRef(PhantomData)
}

impl<M: 'static> MessageParam for ByRef<M> {
    type Message = M;
    type Arg<'s> = &'s M;
    fn arg<'s>(&self, message: &'s M) -> &'s M {
        message
    }
}

/// The message by value (`cmd: Allocate`): cloned for each run, so that the
/// bus can run the handler again after a conflict.
pub struct ByValue<M> {
    clone: fn(&M) -> M,
}

/// The message by value; it must be `Clone`.
pub const fn by_value<M: TakeByValue>() -> ByValue<M> {
    ByValue { clone: M::take }
}

impl<M: 'static> MessageParam for ByValue<M> {
    type Message = M;
    type Arg<'s> = M;
    fn arg(&self, message: &M) -> M {
        (self.clone)(message)
    }
}

/// A message a handler takes by value: the bus clones it for each run, so
/// that it can run the handler again.
#[diagnostic::on_unimplemented(
    message = "a handler that takes `{Self}` by value needs `{Self}: Clone`",
    label = "the bus keeps the message to retry the handler",
    note = "derive `Clone` for `{Self}`, or take it by reference (`&{Self}`)"
)]
pub trait TakeByValue: Sized {
    /// A copy for one run.
    fn take(&self) -> Self;
}

impl<T: Clone> TakeByValue for T {
    fn take(&self) -> Self {
        self.clone()
    }
}

/// A handler parameter after the message.
pub trait Param: Send + Sync + 'static {
    /// What it resolves once, when the bus is built.
    type Prepared: Send + Sync + 'static;
    /// What the call holds while the handler runs.
    type Slot<'c>: Send + 'c;
    /// What the function receives, borrowed from the slot.
    type Arg<'s>;
    /// Resolves what it can once, when the bus is built.
    fn prepare(&self, adapters: &Adapters<'_>) -> Self::Prepared;
    /// Resolves the parameter for one call, into `out`: where the call
    /// keeps it (not returned, then moved there: a unit of work is written
    /// once, in its place).
    fn slot<'c, 'o>(
        &'c self,
        prepared: &'c Self::Prepared,
        ctx: &'c Context<'_>,
        out: &'o mut Option<Self::Slot<'c>>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'o
    where
        'c: 'o;
    /// The argument, from the slot.
    fn arg<'s>(slot: &'s mut Self::Slot<'_>) -> Self::Arg<'s>;
    /// The transaction of a unit of work.
    fn transaction<'s>(&self, _slot: &'s mut Self::Slot<'_>) -> Option<&'s mut UowTransaction> {
        None
    }
    /// How many aggregates a unit of work would save.
    fn changes(&self, _slot: &Self::Slot<'_>) -> usize {
        0
    }
    /// What it needs from the bus.
    fn require(&self, requirements: &mut Requirements);
}

/// How a dependency is resolved for a call, from what it prepared.
type Resolve<T> =
    for<'c, 'x> fn(&'c Option<Arc<T>>, &'c Context<'x>) -> Result<DepSlot<'c, T>, Error>;

/// A dependency parameter (`db: &Db`).
pub struct Dep<T> {
    prepare: fn(&Adapters<'_>) -> Option<Arc<T>>,
    resolve: Resolve<T>,
    require: fn(&mut Requirements),
}

/// A dependency parameter: `T` is an adapter given to the bus, `Metadata`,
/// `Causation` or `MessageBus`.
pub const fn dep<T: Dependency>() -> Dep<T> {
    Dep {
        prepare: T::__prepare,
        resolve: T::__resolve,
        require: T::__require,
    }
}

impl<T: Send + Sync + 'static> Param for Dep<T> {
    type Prepared = Option<Arc<T>>;
    type Slot<'c> = DepSlot<'c, T>;
    type Arg<'s> = &'s T;
    fn prepare(&self, adapters: &Adapters<'_>) -> Option<Arc<T>> {
        (self.prepare)(adapters)
    }
    fn slot<'c, 'o>(
        &'c self,
        prepared: &'c Option<Arc<T>>,
        ctx: &'c Context<'_>,
        out: &'o mut Option<DepSlot<'c, T>>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'o
    where
        'c: 'o,
    {
        std::future::ready((self.resolve)(prepared, ctx).map(|slot| *out = Some(slot)))
    }
    fn arg<'s>(slot: &'s mut DepSlot<'_, T>) -> &'s T {
        match slot {
            DepSlot::Lent(t) => t,
            DepSlot::Made(t) => t,
        }
    }
    fn require(&self, requirements: &mut Requirements) {
        (self.require)(requirements)
    }
}

/// How a unit of work is built around its transaction, from what it
/// prepared (`P`).
type Assemble<U, P> = fn(Option<Begun>, &P, &Context<'_>, &mut Option<U>) -> Result<(), Error>;

/// A unit of work parameter (`uow: &mut ShopUow`).
pub struct Uow<U, P> {
    transaction: bool,
    prepare: fn(&Adapters<'_>) -> P,
    assemble: Assemble<U, P>,
    get: fn(&mut U) -> Option<&mut UowTransaction>,
    changes: fn(&U) -> usize,
    require: fn(&mut Requirements),
}

/// A unit of work parameter: `U` derives `UnitOfWork`.
pub const fn uow<U, P>() -> Uow<U, P>
where
    U: UnitOfWork<__Prepared = P>,
{
    Uow {
        transaction: U::__TRANSACTION,
        prepare: U::__prepare,
        assemble: U::__assemble,
        get: U::__transaction,
        changes: U::__changes,
        require: U::__require,
    }
}

impl<U: Send + 'static, P: Send + Sync + 'static> Param for Uow<U, P> {
    type Prepared = P;
    type Slot<'c> = U;
    type Arg<'s> = &'s mut U;
    fn prepare(&self, adapters: &Adapters<'_>) -> P {
        (self.prepare)(adapters)
    }
    #[allow(clippy::manual_async_fn)] // `Send` is part of the signature
    fn slot<'c, 'o>(
        &'c self,
        prepared: &'c P,
        ctx: &'c Context<'_>,
        out: &'o mut Option<U>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'o
    where
        'c: 'o,
    {
        async move {
            let tx = if self.transaction {
                Some(UowTransaction::__begin(ctx).await?)
            } else {
                None
            };
            (self.assemble)(tx, prepared, ctx, out)
        }
    }
    fn arg(slot: &mut U) -> &mut U {
        slot
    }
    fn transaction<'s>(&self, slot: &'s mut U) -> Option<&'s mut UowTransaction> {
        (self.get)(slot)
    }
    fn changes(&self, slot: &U) -> usize {
        (self.changes)(slot)
    }
    fn require(&self, requirements: &mut Requirements) {
        (self.require)(requirements)
    }
}

/// The parameters after the message, as a tuple: resolved in order for a
/// call, and what the call holds while the handler runs.
pub trait Params: Send + Sync + 'static {
    /// What they resolve once, when the bus is built.
    type Prepared: Send + Sync + 'static;
    /// The slots of one call (each `None` until it is resolved).
    type Slots<'c>: Send + 'c;
    /// Resolves what they can once, when the bus is built.
    fn prepare(&self, adapters: &Adapters<'_>) -> Self::Prepared;
    /// The slots of a call, none resolved yet.
    fn unresolved<'c>(&self) -> Self::Slots<'c>;
    /// Resolves every parameter (begins the unit of work) into `slots`.
    fn slots<'c, 'o>(
        &'c self,
        prepared: &'c Self::Prepared,
        ctx: &'c Context<'_>,
        slots: &'o mut Self::Slots<'c>,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'o
    where
        'c: 'o;
    /// The transaction of the unit of work, if a parameter is one.
    fn transaction<'s>(&self, slots: &'s mut Self::Slots<'_>) -> Option<&'s mut UowTransaction>;
    /// How many aggregates its unit of work would save.
    fn changes(&self, slots: &Self::Slots<'_>) -> usize;
    /// What they need from the bus.
    fn require(&self, requirements: &mut Requirements);
}

/// A handler function taking the message as `M` and then `Ps`, returning
/// `R`: an `async fn` whose future is `Send` for every lifetime of what it
/// borrows.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be called as a handler with these parameters",
    note = "a handler is an `async fn` whose future is `Send`"
)]
pub trait HandlerFn<M: MessageParam, Ps: Params, R>: Send + Sync + 'static {
    /// The handler's future for one call.
    type Future<'s>: Future<Output = R> + Send + 's;
    /// Calls it with the message and the resolved parameters.
    fn call<'s, 'c>(
        &'s self,
        message: M::Arg<'s>,
        slots: &'s mut Ps::Slots<'c>,
    ) -> Self::Future<'s>;
}

/// An `async fn` of `N` arguments whose future is `Send` for every
/// lifetime `'s` of its borrowed arguments (the way to say "returns a
/// future that borrows its arguments" on stable Rust).
macro_rules! call_trait {
    ($name:ident ($($a:ident),*)) => {
        #[doc(hidden)]
        pub trait $name<'s, $($a),*>: Send + Sync + 'static {
            /// The handler's future.
            type Future: Future<Output = Self::Out> + Send + 's;
            /// What it returns.
            type Out;
            /// Calls it.
            #[allow(non_snake_case, clippy::too_many_arguments)]
            fn call(&self, $($a: $a),*) -> Self::Future;
        }

        impl<'s, F, Fut, $($a),*> $name<'s, $($a),*> for F
        where
            F: Fn($($a),*) -> Fut + Send + Sync + 'static,
            Fut: Future + Send + 's,
        {
            type Future = Fut;
            type Out = Fut::Output;
            #[allow(non_snake_case)]
            fn call(&self, $($a: $a),*) -> Fut {
                self($($a),*)
            }
        }
    };
}

/// `Params` for a tuple of `N` parameters, and `HandlerFn` for functions
/// of the message and `N` parameters.
macro_rules! arity {
    ($call:ident ($($p:ident $i:tt),*)) => {
        call_trait!($call(A $(, $p)*));

        #[allow(unused_variables)]
        impl<$($p: Param),*> Params for ($($p,)*) {
            type Prepared = ($($p::Prepared,)*);
            type Slots<'c> = ($(Option<$p::Slot<'c>>,)*);
            #[allow(clippy::unused_unit)]
            fn prepare(&self, adapters: &Adapters<'_>) -> Self::Prepared {
                ($(self.$i.prepare(adapters),)*)
            }
            #[allow(clippy::unused_unit)]
            fn unresolved<'c>(&self) -> Self::Slots<'c> {
                ($(None::<$p::Slot<'c>>,)*)
            }
            #[allow(clippy::manual_async_fn)]
            fn slots<'c, 'o>(
                &'c self,
                prepared: &'c Self::Prepared,
                ctx: &'c Context<'_>,
                slots: &'o mut Self::Slots<'c>,
            ) -> impl Future<Output = Result<(), Error>> + Send + 'o
            where
                'c: 'o,
            {
                async move {
                    $(self.$i.slot(&prepared.$i, ctx, &mut slots.$i).await?;)*
                    Ok(())
                }
            }
            fn transaction<'s>(
                &self,
                slots: &'s mut Self::Slots<'_>,
            ) -> Option<&'s mut UowTransaction> {
                let tx: Option<&'s mut UowTransaction> = None;
                $(let tx = match tx {
                    Some(tx) => Some(tx),
                    None => slots.$i.as_mut().and_then(|slot| self.$i.transaction(slot)),
                };)*
                tx
            }
            fn changes(&self, slots: &Self::Slots<'_>) -> usize {
                0 $(+ slots.$i.as_ref().map_or(0, |slot| self.$i.changes(slot)))*
            }
            fn require(&self, requirements: &mut Requirements) {
                $(self.$i.require(requirements);)*
            }
        }

        impl<H, M: MessageParam, $($p: Param,)* R> HandlerFn<M, ($($p,)*), R> for H
        where
            H: for<'s> $call<'s, M::Arg<'s>, $($p::Arg<'s>,)* Out = R>,
        {
            type Future<'s> = <H as $call<'s, M::Arg<'s>, $($p::Arg<'s>,)*>>::Future;
            #[allow(unused_variables)]
            fn call<'s, 'c>(
                &'s self,
                message: M::Arg<'s>,
                slots: &'s mut ($(Option<$p::Slot<'c>>,)*),
            ) -> Self::Future<'s> {
                $call::call(
                    self,
                    message,
                    $($p::arg(slots.$i.as_mut().expect("the bus resolves every parameter first")),)*
                )
            }
        }
    };
}

arity!(Call1());
arity!(Call2(P0 0));
arity!(Call3(P0 0, P1 1));
arity!(Call4(P0 0, P1 1, P2 2));
arity!(Call5(P0 0, P1 1, P2 2, P3 3));
arity!(Call6(P0 0, P1 1, P2 2, P3 3, P4 4));
arity!(Call7(P0 0, P1 1, P2 2, P3 3, P4 4, P5 5));

// The most parameters a handler takes after its message is the last arity
// above: six. `eda-macros` refuses a seventh at its token (its own
// `MAX_PARAMS`, pinned by the UI tests `handler_shapes` and
// `handler_too_many_parameters`).

/// A command handler function with what its parameters are made of.
pub struct TypedCommand<M, Ps: Params, H> {
    handler: H,
    message: M,
    params: Ps,
    run: RunCommand<M, Ps, H>,
}

/// How a command handler's call is run.
type RunCommand<M, Ps, H> = for<'a> fn(
    &'a TypedCommand<M, Ps, H>,
    &'a <Ps as Params>::Prepared,
    CommandCall<'a>,
    &'a mut (dyn Any + Send),
) -> BoxFuture<'a, CallOutcome>;

/// How an event handler's call is run.
type RunEvent<M, Ps, H> = for<'a> fn(
    &'a TypedEvent<M, Ps, H>,
    &'a <Ps as Params>::Prepared,
    EventCall<'a>,
) -> BoxFuture<'a, EventOutcome>;

/// A typed handler with what its parameters prepared: called without
/// looking anything up or downcasting what it prepared.
struct WithPrepared<T: 'static, P> {
    typed: &'static T,
    prepared: P,
}

impl<M, Ps, H> CommandHandlerFn for TypedCommand<M, Ps, H>
where
    M: Send + Sync + 'static,
    Ps: Params,
    H: Send + Sync + 'static,
{
    fn prepare(&'static self, adapters: &Adapters<'_>) -> Box<dyn PreparedCommand> {
        Box::new(WithPrepared {
            typed: self,
            prepared: self.params.prepare(adapters),
        })
    }
    fn requirements(&self, requirements: &mut Requirements) {
        self.params.require(requirements)
    }
}

impl<M, Ps, H> PreparedCommand for WithPrepared<TypedCommand<M, Ps, H>, Ps::Prepared>
where
    M: Send + Sync + 'static,
    Ps: Params,
    H: Send + Sync + 'static,
{
    fn call<'a>(
        &'a self,
        call: CommandCall<'a>,
        out: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, CallOutcome> {
        (self.typed.run)(self.typed, &self.prepared, call, out)
    }
}

/// An event handler function with what its parameters are made of.
pub struct TypedEvent<M, Ps: Params, H> {
    handler: H,
    message: M,
    params: Ps,
    run: RunEvent<M, Ps, H>,
}

impl<M, Ps, H> EventHandlerFn for TypedEvent<M, Ps, H>
where
    M: Send + Sync + 'static,
    Ps: Params,
    H: Send + Sync + 'static,
{
    fn prepare(&'static self, adapters: &Adapters<'_>) -> Box<dyn PreparedEvent> {
        Box::new(WithPrepared {
            typed: self,
            prepared: self.params.prepare(adapters),
        })
    }
    fn requirements(&self, requirements: &mut Requirements) {
        self.params.require(requirements)
    }
}

impl<M, Ps, H> PreparedEvent for WithPrepared<TypedEvent<M, Ps, H>, Ps::Prepared>
where
    M: Send + Sync + 'static,
    Ps: Params,
    H: Send + Sync + 'static,
{
    fn call<'a>(&'a self, call: EventCall<'a>) -> BoxFuture<'a, EventOutcome> {
        (self.typed.run)(self.typed, &self.prepared, call)
    }
}

/// A command handler: the function, how it takes the command, and its
/// parameters. Each bound is one a user's mistake could break, checked
/// here once (the macro names each type with the span of the user's
/// tokens, where rustc reports it).
pub const fn command_handler<C, O, E, R, RE, M, Ps, H>(
    handler: H,
    message: M,
    params: Ps,
) -> TypedCommand<M, Ps, H>
where
    C: Command<Output = O, Error = E>,
    O: 'static,
    E: 'static,
    R: CommandHandlerResult<C, O, Error = RE>,
    RE: CommandHandlerError<C, E>,
    M: MessageParam<Message = C>,
    Ps: Params,
    H: HandlerFn<M, Ps, R>,
{
    TypedCommand {
        handler,
        message,
        params,
        run: run_command::<C, O, E, R, RE, M, Ps, H>,
    }
}

fn run_command<'a, C, O, E, R, RE, M, Ps, H>(
    this: &'a TypedCommand<M, Ps, H>,
    prepared: &'a Ps::Prepared,
    call: CommandCall<'a>,
    out: &'a mut (dyn Any + Send),
) -> BoxFuture<'a, CallOutcome>
where
    C: Command<Output = O, Error = E>,
    O: 'static,
    E: 'static,
    R: CommandHandlerResult<C, O, Error = RE>,
    RE: CommandHandlerError<C, E>,
    M: MessageParam<Message = C>,
    Ps: Params,
    H: HandlerFn<M, Ps, R>,
{
    // Taken apart and downcast before the future is made: it holds the
    // parts, not the call and them (a smaller future, moved into its box).
    let CommandCall {
        ctx,
        message,
        events,
    } = call;
    let message = message
        .downcast_ref::<C>()
        .expect("the bus calls a handler with the command it registered for");
    Box::pin(async move {
        let params = &this.params;
        let mut slots = params.unresolved();
        if let Err(e) = params.slots(prepared, ctx, &mut slots).await {
            return CallOutcome::failed(e);
        }
        if ctx.incoming {
            match Box::pin(inbox::record(params.transaction(&mut slots), ctx)).await {
                Ok(true) => {}
                Ok(false) => return CallOutcome::Duplicate,
                Err(e) => return CallOutcome::failed(e),
            }
        }
        let returned = this
            .handler
            .call(this.message.arg(message), &mut slots)
            .await
            .split();
        let failed = returned.is_err();
        if let Some(slot) = out.downcast_mut::<Option<Result<C::Output, CommandError<C::Error>>>>()
        {
            // Each variant written into the slot itself: a whole `Result`
            // made first was copied in, read back just after it was
            // written in other pieces (a wait for the writes to land).
            match returned {
                Ok(output) => *slot = Some(Ok(output)),
                Err(e) => *slot = Some(Err(RE::into_command_error(e))),
            }
        }
        let changes = params.changes(&slots);
        finish_command(failed, params.transaction(&mut slots), changes, events, ctx)
    })
}

/// An event handler: the function, how it takes the event, and its
/// parameters.
pub const fn event_handler<V, R, M, Ps, H>(
    handler: H,
    message: M,
    params: Ps,
) -> TypedEvent<M, Ps, H>
where
    V: Event,
    R: EventHandlerResult,
    M: MessageParam<Message = V>,
    Ps: Params,
    H: HandlerFn<M, Ps, R>,
{
    TypedEvent {
        handler,
        message,
        params,
        run: run_event::<V, R, M, Ps, H>,
    }
}

fn run_event<'a, V, R, M, Ps, H>(
    this: &'a TypedEvent<M, Ps, H>,
    prepared: &'a Ps::Prepared,
    call: EventCall<'a>,
) -> BoxFuture<'a, EventOutcome>
where
    V: Event,
    R: EventHandlerResult,
    M: MessageParam<Message = V>,
    Ps: Params,
    H: HandlerFn<M, Ps, R>,
{
    let EventCall { ctx, event, events } = call;
    let event = event
        .downcast_ref::<V>()
        .expect("the bus calls a handler with the event it registered for");
    Box::pin(async move {
        let params = &this.params;
        let mut slots = params.unresolved();
        if let Err(e) = params.slots(prepared, ctx, &mut slots).await {
            return EventOutcome::framework(e);
        }
        if ctx.incoming {
            match Box::pin(inbox::record(params.transaction(&mut slots), ctx)).await {
                Ok(true) => {}
                Ok(false) => return EventOutcome::Duplicate,
                Err(e) => return EventOutcome::framework(e),
            }
        }
        let error = this
            .handler
            .call(this.message.arg(event), &mut slots)
            .await
            .into_error();
        let changes = params.changes(&slots);
        finish_event(error, params.transaction(&mut slots), changes, events, ctx)
    })
}

/// What an event handler may return: `()` or `Result<(), E>` with a
/// displayable `E`.
#[diagnostic::on_unimplemented(
    message = "an event handler must return `()` or `Result<(), E>`, not `{Self}`",
    label = "wrong return type for an event handler",
    note = "`E` is any error that implements `Display` (e.g. `anyhow::Error`, `eda_core::BoxError`, your own)"
)]
pub trait EventHandlerResult {
    /// Its error, displayed.
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
    /// Its error type.
    type Error;
    /// Its output or its error.
    fn split(self) -> Result<O, Self::Error>;
}

#[diagnostic::do_not_recommend]
impl<C, O, E> CommandHandlerResult<C, O> for Result<O, E> {
    type Error = E;
    fn split(self) -> Result<O, E> {
        self
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
    /// The conversion.
    fn into_command_error(self) -> CommandError<Err>;
}

#[diagnostic::do_not_recommend]
impl<C, Err, E: Into<CommandError<Err>>> CommandHandlerError<C, Err> for E {
    fn into_command_error(self) -> CommandError<Err> {
        self.into()
    }
}

/// The end of every call: a handler that succeeded without committing a
/// unit of work that holds changes lost them (rule 10 of DESIGN.md: not
/// silently); the events its unit of work committed are queued. Returns
/// whether it had committed, and whether it hit a version conflict.
#[inline]
fn end(
    succeeded: bool,
    tx: Option<&mut UowTransaction>,
    changes: usize,
    events: &mut EventQueue,
    ctx: &Context<'_>,
) -> (bool, bool) {
    let Some(tx) = tx else {
        return (false, false);
    };
    // Most handlers committed: that is all this asks of them.
    if succeeded && tx.is_active() {
        let raised = tx.raised();
        if changes > 0 || raised > 0 {
            ctx.services.uncommitted(ctx.handler, changes, raised);
        }
    }
    let committed = tx.is_committed();
    if let Some(committed) = tx.take_committed_events() {
        enqueue(events, committed);
    }
    (committed, tx.conflicted())
}

/// After a command handler returned: ask for a retry if it failed on a
/// version conflict.
#[inline]
fn finish_command(
    failed: bool,
    tx: Option<&mut UowTransaction>,
    changes: usize,
    events: &mut EventQueue,
    ctx: &Context<'_>,
) -> CallOutcome {
    let (_, conflicted) = end(!failed, tx, changes, events, ctx);
    if failed && conflicted {
        CallOutcome::Conflict
    } else {
        CallOutcome::Done { failed }
    }
}

/// After an event handler returned: a handler that committed before it
/// failed is not run again.
#[inline]
fn finish_event(
    error: Option<String>,
    tx: Option<&mut UowTransaction>,
    changes: usize,
    events: &mut EventQueue,
    ctx: &Context<'_>,
) -> EventOutcome {
    let (committed, _) = end(error.is_none(), tx, changes, events, ctx);
    match error {
        None => EventOutcome::Done,
        Some(error) => EventOutcome::failed(error, committed),
    }
}
