//! The bus's own tracing: a [`Layer`], the outermost of every handler
//! call while DEBUG spans are enabled, and not in the stack otherwise (a
//! disabled span still asks the `log` facade, with tracing's `log` feature
//! that sqlx turns on).
//!
//! Each run of a handler is one span, `command` or `event`, with the
//! message's name and id, the handler's stable id and the attempt: what
//! the handler, its unit of work and its repositories log is inside it.

use tracing::Instrument;

use crate::layer::{HandlerCall, Layer, Next, Outcome};
use crate::message::MessageKind;

/// The span of each handler call.
pub(super) struct Trace;

impl Trace {
    /// Whether the span would be recorded: the layer is in the stack.
    #[inline]
    pub(super) fn enabled() -> bool {
        tracing::level_enabled!(tracing::Level::DEBUG)
    }
}

impl Layer for Trace {
    async fn call(&self, call: HandlerCall<'_>, next: Next<'_>) -> Outcome {
        let span = match call.kind() {
            MessageKind::Command => tracing::debug_span!(
                "command",
                name = call.message(),
                id = %call.metadata().message_id,
                handler = call.handler(),
                attempt = call.attempt(),
            ),
            MessageKind::Event => tracing::debug_span!(
                "event",
                name = call.message(),
                id = %call.metadata().message_id,
                handler = call.handler(),
                attempt = call.attempt(),
            ),
        };
        if span.is_disabled() {
            next.run().await
        } else {
            next.run().instrument(span).await
        }
    }
}
