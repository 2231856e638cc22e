//! Trace context across services (issue 14), piece by piece: a unit of
//! work's commit keeps the W3C trace context of the span current at commit
//! with each outbox row; each database gives it back to the relay as it was
//! written (SQLite, Postgres, in memory); the RabbitMQ adapter sends it as
//! headers and reads it back from a delivery. The whole path across the
//! two example services is in `tests/tests/traces.rs` (in process) and
//! `tests/tests/two_services.rs` (RabbitMQ, OTLP).
//!
//! An OpenTelemetry layer and the W3C propagator are installed once, as
//! the global ones (a test binary of its own).
#![allow(missing_docs)]

use std::sync::OnceLock;

use eda_core::adapters::rabbitmq::{properties, trace_context};
use eda_core::backend::{Database, OutboxStore, OutboxWrite};
use eda_core::prelude::*;
use eda_core::testing::{TestPostgres, TestSqlite};
use eda_core::{ExternalMessage, TraceContext};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

/// The global OpenTelemetry layer and propagator; the spans it recorded.
fn otel() -> &'static InMemorySpanExporter {
    static ONCE: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    &ONCE
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
                .init();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            (provider, exporter)
        })
        .1
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traced(name: &str) -> ExternalMessage {
    let mut trace = TraceContext::default();
    trace.insert("traceparent", TRACEPARENT);
    trace.insert("tracestate", "vendor=1");
    ExternalMessage {
        name: name.to_owned(),
        metadata: Metadata::new(),
        payload: b"{}".to_vec(),
        trace,
    }
}

fn untraced(name: &str) -> ExternalMessage {
    ExternalMessage {
        trace: TraceContext::default(),
        ..traced(name)
    }
}

/// Rows written both ways (the outbox alone; the outbox with the dispatch
/// journal) come back to the relay with the trace they were written with.
async fn outbox_keeps_the_trace(db: &(impl Database + OutboxStore)) {
    let written = [traced("a.one"), untraced("a.two"), traced("a.three")];
    let mut tx = db.begin().await.unwrap();
    tx.write_outbox(&written[..2]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.write_events(&[OutboxWrite {
        message: written[2].clone(),
        publish: true,
        dispatch: false,
    }])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // One row alone takes another statement on Postgres.
    let mut tx = db.begin().await.unwrap();
    tx.write_outbox(&[traced("a.four")]).await.unwrap();
    tx.commit().await.unwrap();

    let unsent = db.unsent(10).await.unwrap();
    let read: Vec<(&str, &TraceContext)> = unsent
        .iter()
        .map(|e| (e.message.name.as_str(), &e.message.trace))
        .collect();
    let expected = traced("").trace;
    assert_eq!(
        read,
        [
            ("a.one", &expected),
            ("a.two", &TraceContext::default()),
            ("a.three", &expected),
            ("a.four", &expected),
        ]
    );
}

#[tokio::test]
async fn the_sqlite_outbox_keeps_each_row_s_trace() {
    let s = TestSqlite::start().await;
    outbox_keeps_the_trace(&s.db).await;
    s.cleanup().await;
}

#[tokio::test]
async fn the_postgres_outbox_keeps_each_row_s_trace() {
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    outbox_keeps_the_trace(&pg.db).await;
    pg.drop_schema().await;
}

#[tokio::test]
async fn the_in_memory_outbox_keeps_each_row_s_trace() {
    outbox_keeps_the_trace(&InMemoryDatabase::new()).await;
}

#[test]
fn rabbitmq_messages_carry_the_trace_as_headers() {
    otel();
    let message = traced("a.one");
    let props = properties(&message);
    assert_eq!(
        eda_core::adapters::rabbitmq::header_string(&props, "traceparent").as_deref(),
        Some(TRACEPARENT)
    );
    assert_eq!(trace_context(&props), message.trace);
    // None sent, none read; and a header the propagator does not know is
    // not taken for one.
    let mut untraced = untraced("a.two");
    untraced.trace.insert("x-vendor-trace", "abc");
    let props = properties(&untraced);
    assert_eq!(
        eda_core::adapters::rabbitmq::header_string(&props, "traceparent"),
        None
    );
    assert_eq!(
        eda_core::adapters::rabbitmq::header_string(&props, "x-vendor-trace").as_deref(),
        Some("abc"),
        "sent as it was kept"
    );
    assert!(trace_context(&props).is_empty());
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "trace.ring", output = ())]
pub struct Ring {
    pub who: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trace.rang", external)]
pub struct Rang {
    pub who: String,
}

#[derive(Debug, Clone, Aggregate)]
pub struct Bell {
    #[aggregate(id)]
    pub who: String,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct BellUow {
    tx: UowTransaction,
    bells: IdentityMap<Bell>,
}

#[command_handler(id = "trace::ring")]
async fn ring(cmd: Ring, uow: &mut BellUow) -> Result<(), BoxError> {
    let mut bell = Bell {
        who: cmd.who.clone(),
        version: 0,
        events: Events::new(),
    };
    bell.events.raise(Rang { who: cmd.who });
    uow.bells().add(bell)?;
    uow.commit().await?;
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_commit_keeps_the_trace_of_its_handler_s_span() {
    otel();
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(db.clone())
        .build()
        .unwrap();
    let caller = tracing::info_span!("caller");
    let (trace_id, caller_id) = {
        let context = caller.context();
        let span = context.span();
        (
            span.span_context().trace_id(),
            span.span_context().span_id(),
        )
    };
    bus.handle(Ring { who: "ada".into() })
        .instrument(caller)
        .await
        .unwrap();
    // Outside any span: a trace of its own, started by the handler's span.
    bus.handle(Ring { who: "bob".into() }).await.unwrap();

    let unsent = db.unsent(10).await.unwrap();
    assert_eq!(unsent.len(), 2);
    let traceparent = |i: usize| {
        unsent[i]
            .message
            .trace
            .get("traceparent")
            .unwrap_or_else(|| panic!("row {i} has a traceparent: {:?}", unsent[i]))
            .to_owned()
    };
    // `00-<trace id>-<span id>-<flags>`: the caller's trace, and the span
    // of the handler (not the caller's own span).
    let (first, second) = (traceparent(0), traceparent(1));
    let parts: Vec<&str> = first.split('-').collect();
    assert_eq!(parts[1], trace_id.to_string(), "{first}");
    assert_ne!(parts[2], "0000000000000000");
    assert_ne!(
        parts[2],
        caller_id.to_string(),
        "the handler's span, inside"
    );
    assert!(!second.contains(&trace_id.to_string()), "{second}");
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "trace.knock", output = ())]
pub struct Knock {
    pub who: String,
}

/// Internal: handled in this process only, through the dispatch journal.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "trace.knocked")]
pub struct Knocked {
    pub who: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
pub struct Door {
    #[aggregate(id)]
    pub who: String,
    pub version: u64,
    #[serde(skip)]
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct DoorUow {
    tx: UowTransaction,
    doors: IdentityMap<Door>,
}

mod journal {
    use super::*;

    #[command_handler(id = "trace::knock")]
    async fn knock(cmd: Knock, uow: &mut DoorUow) -> Result<(), BoxError> {
        let mut door = Door {
            who: cmd.who.clone(),
            version: 0,
            events: Events::new(),
        };
        door.events.raise(Knocked { who: cmd.who });
        uow.doors().add(door)?;
        uow.commit().await?;
        Ok(())
    }

    #[event_handler(id = "trace::answer")]
    async fn answer(_: &Knocked) {}
}

/// An internal event's journal row keeps the trace too, and an event the
/// recovery handles (its process died before its handlers ran) is handled
/// in the trace of the handler that committed it.
#[tokio::test(flavor = "current_thread")]
async fn a_recovered_event_is_handled_in_the_trace_that_committed_it() {
    let exporter = otel();
    let s = TestSqlite::start().await;
    let bus = MessageBus::builder()
        .scope("trace_context::journal")
        .adapter(s.db.clone())
        .build()
        .unwrap();
    let caller = tracing::info_span!("caller");
    let trace_id = caller.context().span().span_context().trace_id();
    bus.handle(Knock { who: "ada".into() })
        .instrument(caller)
        .await
        .unwrap();
    let column: Option<String> = eda_core::sqlx::query_scalar(
        "SELECT trace_context FROM eda_outbox WHERE name = 'trace.knocked'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    let column = column.expect("the journal row keeps the trace");
    assert!(column.contains(&trace_id.to_string()), "{column}");

    // As if the process had died before the handler ran.
    eda_core::sqlx::query("UPDATE eda_outbox SET dispatched_at = NULL")
        .execute(s.pool())
        .await
        .unwrap();
    exporter.reset();
    assert_eq!(
        bus.recover_undispatched(std::time::Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    let spans = exporter.get_finished_spans().unwrap();
    let recover = spans
        .iter()
        .find(|s| s.name == "recover trace.knocked")
        .unwrap_or_else(|| panic!("a recover span: {spans:#?}"));
    assert_eq!(recover.span_context.trace_id(), trace_id);
    assert!(recover.parent_span_is_remote);
    let handler = spans
        .iter()
        .find(|s| {
            s.name == "process"
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "eda.handler" && kv.value.as_str() == "trace::answer"
                })
        })
        .unwrap_or_else(|| panic!("the handler's span: {spans:#?}"));
    assert_eq!(handler.span_context.trace_id(), trace_id);
    assert_eq!(handler.parent_span_id, recover.span_context.span_id());
    s.cleanup().await;
}
