//! Metrics of handler calls, as a [`Layer`], and the Prometheus text format
//! they and the bus's counters are read in (the host serves it at
//! `/metrics`).
//!
//! The names follow OpenTelemetry's messaging conventions where one exists
//! (`messaging.process.duration`, in Prometheus form
//! `messaging_process_duration_seconds`, with the message's name as
//! `messaging_destination_name`), and are eda's own otherwise
//! (`eda_handler_calls_total`, by outcome; the bus's counters).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::bus::BusMetrics;
#[cfg(feature = "host")]
use crate::entrypoints::ConsumerMetrics;
use crate::layer::{HandlerCall, Layer, Next, Outcome};
#[cfg(feature = "host")]
use crate::outbox::OutboxStore;
#[cfg(feature = "host")]
use crate::relay::RelayMetrics;

/// The upper bounds of the duration histogram's buckets, in seconds.
pub(crate) const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How a call ended, as a label.
const OUTCOMES: [&str; 4] = ["ok", "failed", "conflict", "duplicate"];

/// One handler's figures.
#[derive(Default)]
struct Series {
    /// Calls by outcome, in the order of [`OUTCOMES`].
    calls: [AtomicU64; 4],
    /// Calls with a duration under each bucket's bound (not cumulative:
    /// summed when rendered), and over the last.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// The sum of the durations, in nanoseconds.
    nanos: AtomicU64,
}

/// Each handler's figures, by (message name, handler id).
type SeriesMap = HashMap<(&'static str, &'static str), Series>;

/// A [`Layer`] that counts every handler call by message, handler and
/// outcome, and measures how long it took; [`render`](Self::render) writes
/// the figures in the Prometheus text format. The host adds one to every
/// service and serves it at `/metrics`; a service of its own adds it with
/// [`BusBuilder::layer`](crate::BusBuilder::layer).
///
/// ```standalone_crate
/// use eda_core::prelude::*;
/// use eda_core::HandlerMetrics;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "doc.metrics.ping", output = ())]
/// pub struct Ping;
///
/// #[command_handler]
/// async fn ping(_: Ping) -> Result<(), BoxError> {
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = HandlerMetrics::new();
/// let bus = MessageBus::builder().layer(metrics.clone()).build()?;
/// bus.handle(Ping).await?;
/// let text = metrics.render(&bus);
/// assert!(text.contains(r#"eda_handler_calls_total{messaging_destination_name="doc.metrics.ping",eda_handler="#));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct HandlerMetrics {
    series: Arc<RwLock<SeriesMap>>,
    /// The OpenTelemetry histogram each call is recorded in too, once the
    /// host exports metrics over OTLP.
    #[cfg(feature = "host")]
    otel_duration: Arc<std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>>>,
}

impl fmt::Debug for HandlerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let handlers = self.series.read().map_or(0, |s| s.len());
        f.debug_struct("HandlerMetrics")
            .field("handlers", &handlers)
            .finish()
    }
}

impl HandlerMetrics {
    /// No calls counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one call: one lookup under the read lock (the write lock
    /// only for a handler's first call), no clone.
    fn record(&self, key: (&'static str, &'static str), outcome: usize, elapsed: Duration) {
        let record = |series: &Series| {
            series.calls[outcome].fetch_add(1, Ordering::Relaxed);
            let secs = elapsed.as_secs_f64();
            let bucket = BUCKETS
                .iter()
                .position(|bound| secs <= *bound)
                .unwrap_or(BUCKETS.len());
            series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            series.nanos.fetch_add(
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        };
        if let Some(series) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return record(series);
        }
        record(
            self.series
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default(),
        );
    }

    /// Each handler's calls so far: (message, handler, outcome, calls).
    #[cfg(feature = "host")]
    pub(crate) fn calls(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut calls = Vec::with_capacity(map.len() * OUTCOMES.len());
        for ((message, handler), series) in map.iter() {
            for (i, outcome) in OUTCOMES.iter().enumerate() {
                calls.push((
                    *message,
                    *handler,
                    *outcome,
                    series.calls[i].load(Ordering::Relaxed),
                ));
            }
        }
        calls
    }

    /// Records each call in `histogram` too, from now on (OTLP export).
    #[cfg(feature = "host")]
    pub(crate) fn export_durations(&self, histogram: opentelemetry::metrics::Histogram<f64>) {
        let _ = self.otel_duration.set(histogram);
    }

    /// The figures of every handler called so far and the counters of
    /// `bus`, in the Prometheus text format (version 0.0.4).
    pub fn render(&self, bus: &crate::MessageBus) -> String {
        let mut out = String::new();
        // Read under the lock (calls only wait for it on a handler's first
        // call), in a stable order.
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut series: Vec<_> = map.iter().map(|(k, v)| (*k, v)).collect();
        series.sort_by_key(|(k, _)| *k);

        out.push_str("# HELP eda_handler_calls_total Handler calls, by message, handler and outcome (a command run again after a conflict counts each run).\n");
        out.push_str("# TYPE eda_handler_calls_total counter\n");
        for ((message, handler), s) in &series {
            for (i, outcome) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "eda_handler_calls_total{{{},outcome=\"{outcome}\"}} {}",
                    labels(message, handler),
                    s.calls[i].load(Ordering::Relaxed)
                );
            }
        }

        out.push_str("# HELP messaging_process_duration_seconds How long handler calls took, in seconds (OpenTelemetry's messaging.process.duration).\n");
        out.push_str("# TYPE messaging_process_duration_seconds histogram\n");
        for ((message, handler), s) in &series {
            let labels = format!(
                "messaging_system=\"eda\",messaging_operation_name=\"process\",{}",
                labels(message, handler)
            );
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "messaging_process_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += s.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "messaging_process_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "messaging_process_duration_seconds_sum{{{labels}}} {}",
                s.nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "messaging_process_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }

        let BusMetrics {
            command_conflicts,
            event_handler_failures,
            event_handler_retries,
            events_unhandled,
            uncommitted,
        } = bus.metrics();
        for (name, help, value) in [
            (
                "eda_command_conflicts_total",
                "Command runs that ended in a version conflict.",
                command_conflicts,
            ),
            (
                "eda_event_handler_retries_total",
                "Event handler runs that failed and were retried.",
                event_handler_retries,
            ),
            (
                "eda_event_handler_failures_total",
                "Event handlers that failed after their retries.",
                event_handler_failures,
            ),
            (
                "eda_events_unhandled_total",
                "Events raised with no handler here that are not external.",
                events_unhandled,
            ),
            (
                "eda_uncommitted_total",
                "Handlers that succeeded without committing a unit of work that held changes.",
                uncommitted,
            ),
        ] {
            write_metric(&mut out, name, "counter", help, value);
        }
        out
    }
}

/// The labels of one handler's series.
fn labels(message: &str, handler: &str) -> String {
    format!(
        "messaging_destination_name=\"{}\",eda_handler=\"{}\"",
        escape(message),
        escape(handler)
    )
}

/// A label value, escaped as the text format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Layer for HandlerMetrics {
    async fn call(&self, call: HandlerCall<'_>, next: Next<'_>) -> Outcome {
        let started = Instant::now();
        let outcome = next.run().await;
        let elapsed = started.elapsed();
        let index = if outcome.is_duplicate() {
            3
        } else if outcome.is_conflict() {
            2
        } else if outcome.is_ok() {
            0
        } else {
            1
        };
        self.record((call.message(), call.handler()), index, elapsed);
        #[cfg(feature = "host")]
        if let Some(histogram) = self.otel_duration.get() {
            histogram.record(
                elapsed.as_secs_f64(),
                &[
                    opentelemetry::KeyValue::new("messaging.system", "eda"),
                    opentelemetry::KeyValue::new("messaging.operation.name", "process"),
                    opentelemetry::KeyValue::new("messaging.destination.name", call.message()),
                    opentelemetry::KeyValue::new("eda.handler", call.handler()),
                    opentelemetry::KeyValue::new("eda.outcome", OUTCOMES[index]),
                ],
            );
        }
        outcome
    }
}

/// One sample of a metric without labels, with its help and type.
fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The outbox relay's counters, in the same format.
#[cfg(feature = "host")]
pub(crate) fn render_relay(out: &mut String, relay: &RelayMetrics) {
    for (name, help, value) in [
        (
            "eda_relay_published_total",
            "Messages the broker confirmed and routed to a queue.",
            relay.published(),
        ),
        (
            "eda_relay_unroutable_total",
            "Publications no queue was bound to (kept and published again).",
            relay.unroutable(),
        ),
        (
            "eda_relay_parked_total",
            "Events that no queue took in time, parked.",
            relay.parked(),
        ),
        (
            "eda_relay_failures_total",
            "Relay batches that failed (broker or database) and were retried.",
            relay.failures(),
        ),
    ] {
        write_metric(out, name, "counter", help, value);
    }
}

/// The consumer's counters, in the same format.
#[cfg(feature = "host")]
pub(crate) fn render_consumer(out: &mut String, consumer: &ConsumerMetrics) {
    write_metric(
        out,
        "eda_consumer_consuming",
        "gauge",
        "1 while the consumer is consuming (its topology declared and bound).",
        u8::from(consumer.consuming()),
    );
    write_metric(
        out,
        "eda_consumer_in_flight",
        "gauge",
        "Deliveries being handled now (at most the prefetch).",
        consumer.in_flight(),
    );
    for (name, help, value) in [
        (
            "eda_consumer_handled_total",
            "Messages from the broker handled and acknowledged.",
            consumer.handled(),
        ),
        (
            "eda_consumer_own_events_total",
            "The service's own events that came back, acknowledged without handling them again.",
            consumer.own_events(),
        ),
        (
            "eda_consumer_retried_total",
            "Messages from the broker that failed and were sent to be retried.",
            consumer.retried(),
        ),
        (
            "eda_consumer_dead_lettered_total",
            "Messages sent to the dead-letter queue.",
            consumer.dead_lettered(),
        ),
        (
            "eda_consumer_reconnects_total",
            "Times the consumer reconnected.",
            consumer.reconnects(),
        ),
    ] {
        write_metric(out, name, "counter", help, value);
    }
    out.push_str("# HELP eda_consumer_messages_total Messages from the broker, by name and by what the consumer did with them (the first 1000 names, then \"(other)\").\n");
    out.push_str("# TYPE eda_consumer_messages_total counter\n");
    for (message, counts) in consumer.per_message() {
        for (outcome, value) in [
            ("handled", counts.handled),
            ("retried", counts.retried),
            ("dead_lettered", counts.dead_lettered),
        ] {
            let _ = writeln!(
                out,
                "eda_consumer_messages_total{{messaging_destination_name=\"{}\",outcome=\"{outcome}\"}} {value}",
                escape(&message)
            );
        }
    }
}

/// The inbox's rows (counted up to `bound`), in the same format.
#[cfg(feature = "host")]
pub(crate) fn render_inbox(out: &mut String, rows: u64, bound: u64) {
    write_metric(
        out,
        "eda_inbox_rows",
        "gauge",
        &format!("Messages remembered as handled, per handler (counted up to {bound})."),
        rows,
    );
}

/// The scheduled messages (counted up to `bound`), in the same format.
#[cfg(feature = "host")]
pub(crate) fn render_scheduled(out: &mut String, rows: crate::adapter::ScheduledRows, bound: u64) {
    write_metric(
        out,
        "eda_scheduled_rows",
        "gauge",
        &format!(
            "Scheduled messages waiting to be delivered, parked ones included (counted up to {bound})."
        ),
        rows.pending,
    );
    write_metric(
        out,
        "eda_scheduled_parked_rows",
        "gauge",
        "Scheduled messages parked: their delivery failed as often as the scheduler tries.",
        rows.parked,
    );
}

/// The outbox's backlog, in the same format: the rows ready to publish
/// and the age of the oldest (counted by the database, no message read);
/// whether the outbox could be read at all.
#[cfg(feature = "host")]
pub(crate) async fn render_outbox(out: &mut String, store: &dyn OutboxStore) {
    let backlog = store.backlog().await;
    write_metric(
        out,
        "eda_outbox_readable",
        "gauge",
        "1 if the outbox could be read for this scrape.",
        u8::from(backlog.is_ok()),
    );
    let backlog = backlog.unwrap_or_default();
    write_metric(
        out,
        "eda_outbox_unsent_rows",
        "gauge",
        "Outbox rows ready to publish.",
        backlog.rows,
    );
    write_metric(
        out,
        "eda_outbox_oldest_unsent_age_seconds",
        "gauge",
        "How long the oldest row ready to publish has waited (0: none).",
        backlog.age().as_secs_f64(),
    );
}
