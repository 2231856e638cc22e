//! Tracing costs no allocation per message when nothing listens (issue
//! 14): a command whose unit of work commits an external event (the commit
//! asks for the current trace context), and a message handled as if from a
//! broker, allocate as much with no subscriber as with a subscriber that
//! logs warnings only (spans off); with spans recorded (an OpenTelemetry
//! layer at INFO) they allocate more, which shows the count sees tracing's
//! allocations.
//!
//! A counting global allocator: one test in this binary, on a runtime of
//! one thread, so that nothing else allocates meanwhile.
#![allow(missing_docs)]

use std::sync::atomic::Ordering;

use eda_core::prelude::*;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::prelude::*;

#[path = "common/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "alloc.tick", output = ())]
pub struct Tick;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "alloc.ticked", external)]
pub struct Ticked {
    pub n: u64,
}

#[derive(Debug, Clone, Aggregate)]
pub struct Clock {
    #[aggregate(id)]
    pub id: String,
    pub n: u64,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct ClockUow {
    tx: UowTransaction,
    clocks: IdentityMap<Clock>,
}

#[command_handler(id = "alloc::tick")]
async fn tick(_: Tick, uow: &mut ClockUow) -> Result<(), BoxError> {
    let id = "c".to_owned();
    let n = match uow.clocks().get(&id).await? {
        Some(clock) => {
            clock.n += 1;
            clock.events.raise(Ticked { n: clock.n });
            clock.n
        }
        None => {
            let mut clock = Clock {
                id,
                n: 1,
                version: 0,
                events: Events::new(),
            };
            clock.events.raise(Ticked { n: 1 });
            uow.clocks().add(clock)?;
            1
        }
    };
    let _ = n;
    uow.commit().await?;
    Ok(())
}

/// The event, as another service's consumer hands it over.
#[event_handler(id = "alloc::seen")]
async fn seen(_: &Ticked) {}

const MESSAGES: u64 = 2000;

/// Allocations of `MESSAGES` commands and as many incoming events, after a
/// warm-up.
fn count(bus: &MessageBus) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let payload = serde_json::to_vec(&Ticked { n: 0 }).unwrap();
        let run = |n: u64| {
            let payload = payload.clone();
            async move {
                for _ in 0..n {
                    bus.handle(Tick).await.unwrap();
                    bus.handle_incoming("alloc.ticked", Metadata::new(), &payload)
                        .await
                        .unwrap();
                }
            }
        };
        run(200).await;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        run(MESSAGES).await;
        ALLOCATIONS.load(Ordering::Relaxed) - before
    })
}

#[test]
fn tracing_allocates_nothing_per_message_when_nothing_listens() {
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(db.clone())
        .accept::<Tick>()
        .build()
        .unwrap();
    let nothing = count(&bus);
    let warnings = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        ),
        || count(&bus),
    );
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let spans = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        ),
        || count(&bus),
    );
    let per = |n: u64| n as f64 / MESSAGES as f64;
    println!(
        "allocations per command and incoming event: {:.2} with no subscriber, {:.2} logging warnings, {:.2} with spans recorded",
        per(nothing),
        per(warnings),
        per(spans)
    );
    // The in-memory outbox and stores grow as messages accumulate (a
    // vector doubling now and then): a few allocations in all, not one per
    // message.
    assert!(
        nothing.abs_diff(warnings) < MESSAGES / 20,
        "no subscriber: {nothing}, warnings only: {warnings}"
    );
    assert!(
        spans > warnings + MESSAGES,
        "spans recorded allocate: {spans} against {warnings}"
    );
}
