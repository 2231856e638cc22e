//! The bus's own tracing: a [`Layer`], the outermost of every handler
//! call while INFO spans are enabled, and not in the stack otherwise (a
//! disabled span still asks the `log` facade, with tracing's `log` feature
//! that sqlx turns on).
//!
//! Each run of a handler is one span, `process` (OpenTelemetry's
//! operation name), with the fields of OpenTelemetry's messaging conventions (`messaging.system`,
//! `messaging.operation.name`, `messaging.destination.name`: the message's
//! name, `messaging.message.id`, `messaging.message.conversation_id`: its
//! correlation id) and eda's own (`eda.kind`, `command` or `event`;
//! `eda.handler`, the handler's stable id; `eda.attempt`). What the handler, its unit of work and its repositories
//! log is inside it, so every log line of a handler carries the message's
//! id and its correlation id.

use tracing::Instrument;

use crate::layer::{HandlerCall, Layer, Next, Outcome};
use crate::message::MessageKind;

/// The span of each handler call.
pub(super) struct Trace;

impl Trace {
    /// Whether the span would be recorded: the layer is in the stack.
    #[inline]
    pub(super) fn enabled() -> bool {
        tracing::level_enabled!(tracing::Level::INFO)
    }
}

impl Layer for Trace {
    async fn call(&self, call: HandlerCall<'_>, next: Next<'_>) -> Outcome {
        let metadata = call.metadata();
        let kind = match call.kind() {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        };
        let span = tracing::info_span!(
            "process",
            messaging.system = "eda",
            messaging.operation.name = "process",
            messaging.destination.name = call.message(),
            messaging.message.id = %metadata.message_id,
            messaging.message.conversation_id = %metadata.correlation_id,
            eda.kind = kind,
            eda.handler = call.handler(),
            eda.attempt = call.attempt(),
        );
        if span.is_disabled() {
            next.run().await
        } else {
            next.run().instrument(span).await
        }
    }
}
