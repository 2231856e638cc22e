//! One trace across both example services (issue 14), in this process: the
//! pair's buses on the in-process broker, an OpenTelemetry layer collecting
//! spans in memory, and W3C trace context as the propagator (what the host
//! installs when OTLP is configured). An order placed inside a span of the
//! test's is handled by `orders`, allocated by `allocation` and recorded by
//! `orders` again: every one of those handler spans carries the test's
//! trace id, and so does each message on the broker.
//!
//! The same over RabbitMQ, with both binaries exporting OTLP, is in
//! `two_services.rs`. (This binary installs a global subscriber: its one
//! test is alone in it.)
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use allocation::domain::commands::CreateBatch;
use contracts::OrderLine;
use eda_core::RelayOptions;
use eda_core::entrypoints::ConsumerOptions;
use eda_tests::pair::InProcessPair;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orders::domain::commands::PlaceOrder;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_order_through_both_services_in_process() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let pair = InProcessPair::start(
        |queue: &str| ConsumerOptions::new(queue),
        RelayOptions {
            poll: Duration::from_millis(10),
            ..RelayOptions::default()
        },
    );
    pair.observe("observer.placed", "orders.order_placed");
    pair.observe("observer.allocated", "allocation.allocated");
    let (broker, allocation_bus, orders_bus) =
        (&pair.broker, &pair.allocation_bus, &pair.orders_bus);
    allocation_bus
        .handle(CreateBatch::new("batch-1", "LAMP", 10, None))
        .await
        .unwrap();

    // The client's span: a root, as an HTTP caller's would be.
    let client = tracing::info_span!("client");
    let trace_id = client.context().span().span_context().trace_id();
    assert_ne!(trace_id, TraceId::INVALID);
    orders_bus
        .handle(PlaceOrder::new("order-1", vec![OrderLine::new("LAMP", 2)]))
        .instrument(client.clone())
        .await
        .unwrap();
    drop(client);

    // Orders records the allocation: the end of the chain.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let recorded = spans.iter().any(|s| {
            s.name == "process"
                && attribute(s, "messaging.destination.name").as_deref()
                    == Some("allocation.allocated")
                && attribute(s, "eda.handler").as_deref() == Some("orders::record_allocation")
        });
        if recorded {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "orders did not record the allocation in 10 s: {:#?}",
            spans
                .iter()
                .map(|s| format!(
                    "{} trace={} parent={} {:?} {:?}",
                    s.name,
                    s.span_context.trace_id(),
                    s.parent_span_id,
                    attribute(s, "messaging.destination.name"),
                    attribute(s, "eda.handler")
                ))
                .collect::<Vec<_>>(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Every handler of the order, in both services, in the client's trace.
    let handlers_in_trace: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.name == "process" && s.span_context.trace_id() == trace_id)
        .map(|s| {
            (
                attribute(s, "messaging.destination.name").unwrap(),
                attribute(s, "eda.handler").unwrap(),
            )
        })
        .collect();
    for (message, handler) in [
        ("orders.place_order", "orders::place_order"),
        ("orders.order_placed", "allocation::allocate_placed_order"),
        ("allocation.allocate_order", "allocation::allocate_order"),
        ("allocation.allocated", "orders::record_allocation"),
    ] {
        assert!(
            handlers_in_trace
                .iter()
                .any(|(m, h)| m == message && h == handler),
            "{message} by {handler} in the client's trace: {handlers_in_trace:#?}"
        );
    }
    // Each delivery is a consumer span whose parent is remote: the span
    // that committed the message in the other service.
    let receives: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("receive ") && s.span_context.trace_id() == trace_id)
        .collect();
    for name in [
        "receive orders.order_placed",
        "receive allocation.allocated",
    ] {
        let span = receives
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} in the trace: {receives:#?}"));
        assert!(span.parent_span_is_remote, "{name}");
        // Every log line of the delivery names the trace.
        assert_eq!(
            attribute(span, "trace_id"),
            Some(trace_id.to_string()),
            "{name}"
        );
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert!(
            spans
                .iter()
                .any(|p| p.span_context.span_id() == span.parent_span_id),
            "{name}'s parent is a span of the publishing service"
        );
    }
    // The messages on the broker carry it.
    for queue in ["observer.placed", "observer.allocated"] {
        let message = broker.take(queue).expect("observed");
        let traceparent = message
            .message
            .trace
            .get("traceparent")
            .unwrap_or_else(|| panic!("{queue}: no traceparent"))
            .to_owned();
        assert!(
            traceparent.contains(&trace_id.to_string()),
            "{queue}: {traceparent} is not in trace {trace_id}"
        );
        // No empty field is sent (W3C's `tracestate` when there is none).
        assert!(
            message.message.trace.iter().all(|(_, v)| !v.is_empty()),
            "{queue}: {:?}",
            message.message.trace
        );
    }

    pair.stop().await;
    provider.shutdown().unwrap();
}
