//! Layers: a service's own code around every handler call, the way tower
//! wraps a service (and axum's `middleware::from_fn`), cut to what a bus
//! needs.

use std::future::Future;
use std::sync::Arc;

use crate::future::BoxFuture;
use crate::handler::{CallOutcome, EventOutcome};
use crate::message::{MessageKind, Metadata};

/// Code run around every handler call of a bus: timing, counting, a span
/// or a log line of your own, a check before the handler runs.
///
/// A layer gets the call's description ([`HandlerCall`]) and the rest of
/// the stack ([`Next`]): it runs [`Next::run`] once, and returns what it
/// returns. Layers are added with [`BusBuilder::layer`]; the first one added
/// is the outermost. They wrap each run of a handler: a command handler run
/// again after a version conflict passes through them again (with
/// [`HandlerCall::attempt`] one higher), and so does a message from
/// another service, which reaches its handler through the same calls.
///
/// ```standalone_crate
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use eda_core::prelude::*;
/// use eda_core::{HandlerCall, Layer, Next, Outcome};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "doc.layer.greet", output = String)]
/// pub struct Greet { pub name: String }
///
/// #[command_handler]
/// async fn greet(cmd: Greet) -> Result<String, BoxError> {
///     Ok(format!("hello, {}", cmd.name))
/// }
///
/// /// Counts the handler calls that failed.
/// #[derive(Clone, Default)]
/// struct CountFailures(Arc<AtomicUsize>);
///
/// impl Layer for CountFailures {
///     async fn call(&self, call: HandlerCall<'_>, next: Next<'_>) -> Outcome {
///         let outcome = next.run().await;
///         if !outcome.is_ok() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///             eprintln!("{} failed in {}", call.message(), call.handler());
///         }
///         outcome
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let failures = CountFailures::default();
/// let bus = MessageBus::builder().layer(failures.clone()).build()?;
/// bus.handle(Greet { name: "you".into() }).await?;
/// assert_eq!(failures.0.load(Ordering::Relaxed), 0);
/// # Ok(()) }
/// ```
///
/// [`BusBuilder::layer`]: crate::BusBuilder::layer
pub trait Layer: Send + Sync + 'static {
    /// Runs around one handler call: call [`Next::run`] once, and return
    /// its outcome.
    fn call<'a>(
        &'a self,
        call: HandlerCall<'a>,
        next: Next<'a>,
    ) -> impl Future<Output = Outcome> + Send + 'a;
}

/// A [`Layer`], boxed for the bus.
pub(crate) trait AnyLayer: Send + Sync + 'static {
    fn call_boxed<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome>;
}

impl<L: Layer> AnyLayer for L {
    fn call_boxed<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(self.call(call, next))
    }
}

/// The layers of a bus, outermost first.
pub(crate) type Layers = Box<[Arc<dyn AnyLayer>]>;

/// One handler call, as a [`Layer`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct HandlerCall<'a> {
    pub(crate) kind: MessageKind,
    pub(crate) message: &'static str,
    pub(crate) handler: &'static str,
    pub(crate) metadata: &'a Metadata,
    pub(crate) attempt: u32,
    pub(crate) incoming: bool,
}

impl<'a> HandlerCall<'a> {
    /// Whether the message is a command or an event.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The message's name (`#[command(name = …)]`, `#[event(name = …)]`).
    pub fn message(&self) -> &'static str {
        self.message
    }

    /// The handler's stable id: `#[command_handler(id = "…")]`, or
    /// `<crate>::<fn name>` by default.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// The message's metadata: its id, correlation and causation.
    pub fn metadata(&self) -> &'a Metadata {
        self.metadata
    }

    /// Which run of the handler for this message this is, from 1: a
    /// command after a version conflict, an event handler after a failure.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the message came from outside the service (a broker, or the
    /// dispatch journal's recovery).
    pub fn is_incoming(&self) -> bool {
        self.incoming
    }
}

/// How a handler call ended, as a [`Layer`] sees it.
#[derive(Debug)]
pub struct Outcome {
    raw: Raw,
}

#[derive(Debug)]
enum Raw {
    Command(CallOutcome),
    Event(EventOutcome),
}

impl Outcome {
    /// The handler ran and returned `Ok`, or the message was handled before
    /// (the inbox skipped it).
    pub fn is_ok(&self) -> bool {
        matches!(
            self.raw,
            Raw::Command(CallOutcome::Done { failed: false } | CallOutcome::Duplicate)
                | Raw::Event(EventOutcome::Done | EventOutcome::Duplicate)
        )
    }

    /// The message was handled before: the inbox skipped the handler.
    pub fn is_duplicate(&self) -> bool {
        matches!(
            self.raw,
            Raw::Command(CallOutcome::Duplicate) | Raw::Event(EventOutcome::Duplicate)
        )
    }

    /// A command handler failed on a version conflict: the bus runs it
    /// again (up to its retry policy).
    pub fn is_conflict(&self) -> bool {
        match &self.raw {
            Raw::Command(outcome) => outcome.is_conflict(),
            Raw::Event(_) => false,
        }
    }

    pub(crate) fn into_command(self) -> CallOutcome {
        match self.raw {
            Raw::Command(outcome) => outcome,
            Raw::Event(_) => unreachable!("a command's layers return its outcome"),
        }
    }

    pub(crate) fn into_event(self) -> EventOutcome {
        match self.raw {
            Raw::Event(outcome) => outcome,
            Raw::Command(_) => unreachable!("an event's layers return its outcome"),
        }
    }
}

/// The rest of the stack below a [`Layer`]: the next layers, then the
/// handler.
pub struct Next<'a> {
    layers: &'a [Arc<dyn AnyLayer>],
    call: HandlerCall<'a>,
    handler: Handler<'a>,
}

/// The handler's call, below every layer.
pub(crate) enum Handler<'a> {
    Command(BoxFuture<'a, CallOutcome>),
    Event(BoxFuture<'a, EventOutcome>),
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("layers", &self.layers.len())
            .field("call", &self.call)
            .finish()
    }
}

impl<'a> Next<'a> {
    /// Runs the next layers and the handler.
    pub async fn run(self) -> Outcome {
        match self.layers.split_first() {
            Some((layer, rest)) => {
                let call = self.call;
                layer
                    .call_boxed(
                        call,
                        Next {
                            layers: rest,
                            call,
                            handler: self.handler,
                        },
                    )
                    .await
            }
            None => match self.handler {
                Handler::Command(handler) => Outcome {
                    raw: Raw::Command(handler.await),
                },
                Handler::Event(handler) => Outcome {
                    raw: Raw::Event(handler.await),
                },
            },
        }
    }
}

/// Runs a handler's call through the layers.
pub(crate) async fn run(
    layers: &[Arc<dyn AnyLayer>],
    call: HandlerCall<'_>,
    handler: Handler<'_>,
) -> Outcome {
    Next {
        layers,
        call,
        handler,
    }
    .run()
    .await
}
