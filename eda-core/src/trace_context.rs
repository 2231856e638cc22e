//! Trace context across services: the W3C `traceparent` (and `tracestate`,
//! `baggage`) of the span current when a unit of work commits, kept with
//! each outbox row, sent with each broker message, and continued by the
//! service that consumes it.
//!
//! eda reads and writes it through OpenTelemetry (feature `otel`): the span
//! is a `tracing` span, its OpenTelemetry context comes from
//! `tracing-opentelemetry`'s layer, and the fields are those of the global
//! text-map propagator (the service host installs W3C trace context and
//! baggage when OTLP export is configured). Without the feature, without
//! the layer, or with no propagator set, a message carries no trace
//! context and a consumer starts no trace: nothing is paid for it.

use std::collections::BTreeMap;

/// The trace context a message carries from the service that committed it
/// to the services that consume it: propagation fields by name, as the
/// global OpenTelemetry propagator writes them (W3C: `traceparent`,
/// `tracestate`, `baggage`).
///
/// It is stored as a JSON object in the outbox's `trace_context` column and
/// sent as AMQP headers of the same names.
///
/// ```
/// use eda_core::TraceContext;
///
/// let mut trace = TraceContext::default();
/// assert!(trace.is_empty());
/// trace.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(
///     trace.get("traceparent"),
///     Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TraceContext {
    fields: BTreeMap<String, String>,
}

impl TraceContext {
    /// No field: the message continues no trace.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Sets a field.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.fields.insert(name.into(), value.into());
    }

    /// The fields, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The context of the current span, as the global propagator writes it
    /// (empty without the feature `otel`, outside any span, or without an
    /// OpenTelemetry layer or propagator).
    pub(crate) fn current() -> Self {
        #[cfg(feature = "otel")]
        {
            let span = tracing::Span::current();
            if span.is_none() {
                return TraceContext::default();
            }
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let context = span.context();
            let mut trace = TraceContext::default();
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.inject_context(&context, &mut trace);
            });
            trace
        }
        #[cfg(not(feature = "otel"))]
        TraceContext::default()
    }

    /// Reads the fields the global propagator knows from a message's
    /// headers (none without the feature `otel`).
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) fn from_headers(header: impl Fn(&str) -> Option<String>) -> Self {
        #[cfg(feature = "otel")]
        {
            let mut trace = TraceContext::default();
            opentelemetry::global::get_text_map_propagator(|propagator| {
                for name in propagator.fields() {
                    if let Some(value) = header(name).filter(|v| !v.is_empty()) {
                        trace.insert(name, value);
                    }
                }
            });
            trace
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = header;
            TraceContext::default()
        }
    }

    /// Makes `span` a child of the span this context names (before it is
    /// first entered). Nothing when the context is empty.
    pub(crate) fn continue_in(&self, span: &tracing::Span) {
        #[cfg(feature = "otel")]
        if !self.is_empty() && !span.is_disabled() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(self)
            });
            // Only fails when no OpenTelemetry layer is installed.
            let _ = span.set_parent(parent);
        }
        #[cfg(not(feature = "otel"))]
        let _ = span;
    }

    /// Records the OpenTelemetry trace id of `span` in its field
    /// `trace_id` (declared empty), so that every log line inside it names
    /// the trace an operator looks up. Nothing without an OpenTelemetry
    /// layer.
    pub(crate) fn record_trace_id(span: &tracing::Span) {
        #[cfg(feature = "otel")]
        if !span.is_disabled() {
            use opentelemetry::trace::TraceContextExt;
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let context = span.context();
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                span.record("trace_id", tracing::field::display(span_context.trace_id()));
            }
        }
        #[cfg(not(feature = "otel"))]
        let _ = span;
    }

    /// The JSON of the outbox column, `None` when empty.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn to_column(&self) -> Option<String> {
        if self.is_empty() {
            None
        } else {
            serde_json::to_string(&self.fields).ok()
        }
    }

    /// Read back from the outbox column; a value that is not a JSON object
    /// of strings is no context (a trace is not worth a message).
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn from_column(column: Option<&str>) -> Self {
        column
            .and_then(|text| serde_json::from_str(text).ok())
            .map(|fields| TraceContext { fields })
            .unwrap_or_default()
    }
}

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        // W3C's propagator writes an empty `tracestate` when there is none.
        if !value.is_empty() {
            self.fields.insert(key.to_owned(), value);
        }
    }
}

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.fields.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_round_trips_and_bad_text_is_no_context() {
        let mut trace = TraceContext::default();
        assert_eq!(trace.to_column(), None);
        trace.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        trace.insert("baggage", "tenant=7");
        let column = trace.to_column().unwrap();
        assert_eq!(TraceContext::from_column(Some(&column)), trace);
        assert!(TraceContext::from_column(Some("not json")).is_empty());
        assert!(TraceContext::from_column(Some("[1,2]")).is_empty());
        assert!(TraceContext::from_column(None).is_empty());
    }
}
