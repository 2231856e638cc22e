//! Commands and events in process: the entry points [`MessageBus::handle`]
//! and [`MessageBus::publish`] (and [`MessageBus::begin`]), a command's
//! call and the event loop, each handler call run by the retry loop
//! (`retry`) through the layers, and what a message's handlers report
//! ([`Report`], [`EventHandlerFailure`]).

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::MessageBus;
use super::retry::{self, Attempt};
use crate::context::Context;
use crate::dependency::Adapters;
use crate::error::{CommandError, Error};
use crate::future::BoxFuture;
use crate::handler::{
    self, CallOutcome, CommandCall, EventCall, EventOutcome, EventQueue, Param, Prepared,
    PreparedCommand, PreparedEvent,
};
use crate::layer::{self, AnyLayer, HandlerCall};
use crate::message::{
    AnyEvent, Command, Envelope, Event, MessageId, MessageKind, Metadata, Raised,
};
use crate::registry::{CommandHandlerRegistration, EventHandlerRegistration};
use crate::wiring::HandlerRef;

/// An event handler that failed after its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventHandlerFailure {
    /// The event's name.
    pub event: &'static str,
    /// The event's metadata.
    pub metadata: Metadata,
    /// The handler.
    pub handler: HandlerRef,
    /// How many times it ran.
    pub attempts: u32,
    /// Its last error, displayed.
    pub error: String,
}

impl fmt::Display for EventHandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "handler {} of event `{}` ({}) failed after {} attempt(s): {}",
            self.handler, self.event, self.metadata.message_id, self.attempts, self.error
        )
    }
}

/// What happened to the events a message raised: which event handlers failed
/// after their retries. A failing event handler does not fail the command
/// that raised the event; it is reported here, logged, and counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// How many event handler runs succeeded.
    pub handled: usize,
    /// The event handlers that failed.
    pub failures: Vec<EventHandlerFailure>,
}

impl Report {
    /// Whether every event handler succeeded.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl MessageBus {
    /// The layers around each handler call: the user's, inside the bus's
    /// own tracing while its spans are enabled.
    #[inline]
    fn layers(&self) -> &[std::sync::Arc<dyn crate::layer::AnyLayer>] {
        if super::trace::Trace::enabled() {
            &self.inner.traced
        } else {
            &self.inner.layers
        }
    }

    /// Handles a command that starts a conversation: runs its handler,
    /// processes the events it raised, and returns the handler's result.
    pub async fn handle<C: Command>(
        &self,
        command: C,
    ) -> Result<C::Output, CommandError<C::Error>> {
        // Made here, where it is kept: handed to `handle_envelope` it was
        // copied just after its metadata was written, and the copy waited
        // for those writes to land.
        let envelope = Envelope::new(command);
        let mut report = Report::default();
        self.run_command(&envelope, &mut report, false).await
    }

    /// Handles a command with the given metadata (e.g. caused by another
    /// message).
    pub async fn handle_envelope<C: Command>(
        &self,
        envelope: Envelope<C>,
    ) -> Result<C::Output, CommandError<C::Error>> {
        let mut report = Report::default();
        self.run_command(&envelope, &mut report, false).await
    }

    /// Like [`handle`](Self::handle), and also returns the report of the
    /// event handlers that ran.
    pub async fn handle_with_report<C: Command>(
        &self,
        envelope: Envelope<C>,
    ) -> (Result<C::Output, CommandError<C::Error>>, Report) {
        let mut report = Report::default();
        let result = self.run_command(&envelope, &mut report, false).await;
        (result, report)
    }

    /// Handles an event that was not raised by an aggregate of this service
    /// (a test, an entrypoint): runs its handlers and the events they raise.
    pub async fn publish<E: Event>(&self, envelope: Envelope<E>) -> Report {
        self.run_event(envelope, false).await
    }

    pub(super) async fn run_event<E: Event>(
        &self,
        envelope: Envelope<E>,
        incoming: bool,
    ) -> Report {
        let mut report = Report::default();
        let mut queue = EventQueue::new();
        // On the stack: no allocation for the event, nor for the queue
        // unless its handlers raise more events.
        let event = Raised {
            metadata: envelope.metadata,
            event: envelope.message,
            journaled: false,
        };
        self.process_events(Some(&event), &mut queue, &mut report, incoming)
            .await;
        handler::discard(queue);
        report
    }

    /// Begins a unit of work outside any handler: for an entrypoint's reads
    /// (a read model, APwP's `views`), a script, a test. Dropping it rolls
    /// back; `commit` saves what it changed and writes the outbox, but the
    /// events it collects are not handled (raise them in a command's
    /// handler instead).
    ///
    /// ```ignore
    /// let mut uow = bus.begin::<ViewsUow>().await?;
    /// let view = uow.views().read(&orderid).await?;
    /// ```
    pub async fn begin<U: crate::UnitOfWork>(&self) -> Result<U, Error> {
        let metadata = Metadata::new();
        let ctx = Context {
            services: &self.inner.services,
            bus: self,
            metadata: &metadata,
            incoming: false,
            dispatches: false,
            handler: "",
        };
        // The same begin as a handler's unit of work (prepared here: it is
        // not one of the bus's handlers).
        let uow = handler::uow::<U, _>();
        let prepared = uow.prepare(&Adapters::new(&self.inner.services.adapters));
        let mut begun = None;
        uow.slot(&prepared, &ctx, &mut begun).await?;
        Ok(begun.expect("a unit of work's slot is filled when it resolves"))
    }

    pub(crate) async fn run_command<C: Command>(
        &self,
        envelope: &Envelope<C>,
        report: &mut Report,
        incoming: bool,
    ) -> Result<C::Output, CommandError<C::Error>> {
        let Some(entry) = self.inner.commands.get(&TypeId::of::<C>()) else {
            return Err(CommandError::Bus(Error::NoHandler(C::NAME)));
        };
        let mut queue = EventQueue::new();
        let mut call = CommandAttempt {
            bus: self,
            entry,
            envelope,
            ctx: Context {
                services: &self.inner.services,
                bus: self,
                metadata: &envelope.metadata,
                incoming,
                dispatches: true,
                handler: entry.id,
            },
            layers: self.layers(),
            out: None,
            queue: &mut queue,
        };
        // The first run here; the retry loop only after a conflict.
        let mut outcome = call.run(1).await;
        if call.retryable(&outcome) {
            let policy = &self.inner.command_retry;
            (outcome, _) = Box::pin(retry::after_first(policy, &mut call, outcome)).await;
        }
        let result = match outcome {
            CallOutcome::Done { .. } | CallOutcome::Conflict => match call.out.take() {
                Some(result) => result,
                None => Err(CommandError::Bus(Error::NoHandler(C::NAME))),
            },
            CallOutcome::Duplicate => Err(CommandError::Bus(Error::AlreadyHandled(
                envelope.metadata.message_id,
            ))),
            CallOutcome::Failed(e) => Err(CommandError::Bus(*e)),
        };
        // Events committed by the handler are processed even when it failed
        // afterwards: their state is saved, so they must not be lost.
        if !queue.is_empty() {
            // Boxed: a command that raised no event does not carry the
            // state of the event loop in its future (which every caller's
            // future embeds and copies).
            Box::pin(self.process_events(None, &mut queue, report, false)).await;
        }
        handler::discard(queue);
        result
    }

    /// Runs the handlers of each queued event, in order, until the queue is
    /// empty. `incoming`: the first event came from outside the service.
    ///
    /// Kept flat on purpose: the state kept across each handler's await is
    /// its boxed future and a few words, not a nest of async fn futures that
    /// would be copied on every call.
    pub(crate) async fn process_events(
        &self,
        mut first: Option<&dyn AnyEvent>,
        queue: &mut EventQueue,
        report: &mut Report,
        mut incoming: bool,
    ) {
        let mut dispatched: Vec<MessageId> = Vec::new();
        loop {
            let popped;
            let event: &dyn AnyEvent = match first.take() {
                Some(event) => event,
                None => match queue.pop_front() {
                    Some(event) => {
                        popped = event;
                        &*popped
                    }
                    None => break,
                },
            };
            let Some(handlers) = self.inner.events.get(&event.__type_id()) else {
                if !event.is_external() {
                    self.went_nowhere(event);
                }
                incoming = false;
                continue;
            };
            // A journaled event is recorded in its handlers' inboxes, so
            // that the recovery skips the ones that ran.
            let journaled = event.__journaled();
            let incoming = std::mem::take(&mut incoming) || journaled;
            for handler in handlers.iter() {
                let mut call = EventAttempt {
                    bus: self,
                    handler,
                    event,
                    ctx: Context {
                        services: &self.inner.services,
                        bus: self,
                        metadata: event.metadata(),
                        incoming,
                        dispatches: true,
                        handler: handler.id,
                    },
                    layers: self.layers(),
                    queue,
                };
                // The first run here; the retry loop only after a failure.
                let mut ran = (call.run(1).await, 1);
                if call.retryable(&ran.0) {
                    let policy = &self.inner.event_retry;
                    ran = Box::pin(retry::after_first(policy, &mut call, ran.0)).await;
                }
                match ran {
                    // A duplicate was handled, by an earlier delivery.
                    (EventOutcome::Done | EventOutcome::Duplicate, _) => report.handled += 1,
                    (EventOutcome::Failed(failed), attempts) => {
                        self.event_handler_failed(handler, event, attempts, failed.error, report);
                    }
                }
            }
            if journaled {
                dispatched.push(event.metadata().message_id);
            }
        }
        if !dispatched.is_empty() {
            self.mark_dispatched(&dispatched).await;
        }
    }

    /// An event with no handler here and not `external` was raised: counted,
    /// and logged once per name.
    #[cold]
    fn went_nowhere(&self, event: &dyn AnyEvent) {
        self.inner
            .metrics
            .events_unhandled
            .fetch_add(1, Ordering::Relaxed);
        let first = self
            .inner
            .went_nowhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event.name());
        if first {
            tracing::warn!(
                event = event.name(),
                id = %event.metadata().message_id,
                "an event with no handler in this service, and not `external`, was raised: it goes nowhere (logged once per event)"
            );
        }
    }

    /// An event handler failed for good (after its retries, or once it had
    /// committed): reported, logged and counted.
    #[cold]
    fn event_handler_failed(
        &self,
        handler: &EventHandlerRegistration,
        event: &dyn AnyEvent,
        attempt: u32,
        error: String,
        report: &mut Report,
    ) {
        let metrics = &self.inner.metrics;
        let failure = EventHandlerFailure {
            event: event.name(),
            metadata: *event.metadata(),
            handler: handler.describe(),
            attempts: attempt,
            error,
        };
        tracing::error!(%failure, "event handler failed");
        metrics
            .event_handler_failures
            .fetch_add(1, Ordering::Relaxed);
        report.failures.push(failure);
    }
}

/// A command's handler call, for the retry loop: run again on a version
/// conflict.
struct CommandAttempt<'a, C: Command> {
    bus: &'a MessageBus,
    entry: &'a Prepared<CommandHandlerRegistration, dyn PreparedCommand>,
    envelope: &'a Envelope<C>,
    /// What each run is given (the same for every attempt: lent to it).
    ctx: Context<'a>,
    layers: &'a [Arc<dyn AnyLayer>],
    /// The handler's result, written by the last run.
    out: Option<Result<C::Output, CommandError<C::Error>>>,
    queue: &'a mut EventQueue,
}

impl<C: Command> Attempt for CommandAttempt<'_, C> {
    type Outcome = CallOutcome;

    #[inline]
    fn run(&mut self, attempt: u32) -> BoxFuture<'_, CallOutcome> {
        self.out = None;
        let call = self.entry.prepared.call(
            CommandCall {
                ctx: &self.ctx,
                message: &self.envelope.message,
                events: self.queue,
            },
            &mut self.out,
        );
        if self.layers.is_empty() {
            return call;
        }
        let described = HandlerCall {
            kind: MessageKind::Command,
            message: C::NAME,
            handler: self.entry.id,
            metadata: &self.envelope.metadata,
            attempt,
            incoming: self.ctx.incoming,
        };
        let layers = self.layers;
        Box::pin(async move {
            layer::run(layers, described, layer::Handler::Command(call))
                .await
                .into_command()
        })
    }

    fn retryable(&self, outcome: &CallOutcome) -> bool {
        outcome.is_conflict()
    }

    fn retrying(&self, _: &CallOutcome, attempt: u32, delay: Duration) {
        self.bus
            .inner
            .metrics
            .command_conflicts
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            command = C::NAME,
            handler = self.entry.id,
            attempt,
            ?delay,
            "version conflict, retrying"
        );
    }

    fn out_of_attempts(&self, _: &CallOutcome, attempt: u32) {
        self.bus
            .inner
            .metrics
            .command_conflicts
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            command = C::NAME,
            handler = self.entry.id,
            id = %self.envelope.metadata.message_id,
            attempt,
            "version conflict, out of attempts"
        );
    }
}

/// An event handler's call, for the retry loop: run again after a failure,
/// unless it had committed (its effects are saved).
struct EventAttempt<'a> {
    bus: &'a MessageBus,
    handler: &'a Prepared<EventHandlerRegistration, dyn PreparedEvent>,
    event: &'a dyn AnyEvent,
    /// What each run is given (the same for every attempt: lent to it).
    ctx: Context<'a>,
    layers: &'a [Arc<dyn AnyLayer>],
    queue: &'a mut EventQueue,
}

impl Attempt for EventAttempt<'_> {
    type Outcome = EventOutcome;

    #[inline]
    fn run(&mut self, attempt: u32) -> BoxFuture<'_, EventOutcome> {
        let call = self.handler.prepared.call(EventCall {
            ctx: &self.ctx,
            event: self.event.as_any(),
            events: self.queue,
        });
        if self.layers.is_empty() {
            return call;
        }
        let described = HandlerCall {
            kind: MessageKind::Event,
            message: self.event.name(),
            handler: self.handler.id,
            metadata: self.event.metadata(),
            attempt,
            incoming: self.ctx.incoming,
        };
        let layers = self.layers;
        Box::pin(async move {
            layer::run(layers, described, layer::Handler::Event(call))
                .await
                .into_event()
        })
    }

    fn retryable(&self, outcome: &EventOutcome) -> bool {
        matches!(outcome, EventOutcome::Failed(failed) if !failed.committed)
    }

    fn retrying(&self, outcome: &EventOutcome, attempt: u32, delay: Duration) {
        self.bus
            .inner
            .metrics
            .event_handler_retries
            .fetch_add(1, Ordering::Relaxed);
        if let EventOutcome::Failed(failed) = outcome {
            let error = &failed.error;
            tracing::debug!(
                event = self.event.name(),
                handler = self.handler.id,
                attempt,
                ?delay,
                %error,
                "event handler failed, retrying"
            );
        }
    }

    // Reported by the event loop, with every failure that is not retried.
    fn out_of_attempts(&self, _: &EventOutcome, _: u32) {}
}
