//! Process managers (issue 15, item 2), on each database: a process is
//! started by a message, goes on with later ones, schedules its own
//! timeout, ends; a message for a process that has ended or never started
//! gets the declared outcome (ignored, or an error), never a panic; two
//! messages for one process at once never both win (one retries, on the
//! state the other left); a process is not started twice.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::prelude::*;
use eda_core::testing::{TestPostgres, TestSqlite};
use eda_core::{
    Adapter, Error, Lookup, MessageId, ProcessMap, ProcessState, Report, SchedulerOptions,
};
use serde::{Deserialize, Serialize};

/// A trip: booked, then paid within the timeout, or expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ProcessState)]
#[process(name = "process_test.trip", key = String)]
struct Trip {
    timeout: MessageId,
    paid: Vec<u32>,
    outcome: Option<String>,
}

/// The same kind of process, strict: a message for one that is not
/// running is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ProcessState)]
#[process(name = "process_test.strict", key = u64, missing = "error")]
struct Strict {
    steps: u32,
}

#[derive(UnitOfWork)]
struct Trips {
    tx: UowTransaction,
    trips: ProcessMap<Trip>,
    stricts: ProcessMap<Strict>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "process_test.booked")]
struct Booked {
    trip: String,
    timeout_ms: u64,
}

/// A payment; `amount` is what the process records.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "process_test.paid")]
struct Paid {
    trip: String,
    amount: u32,
    /// Pay in full: ends the process.
    last: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "process_test.expire")]
struct Expire {
    trip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "process_test.strict_step", output = ())]
struct StrictStep {
    key: u64,
    start: bool,
}

/// Tells what the lookup of a trip finds.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "process_test.inspect", output = String)]
struct Inspect {
    trip: String,
}

/// Handler calls of `paid`, per trip; and, for trips named `meet-…`, a
/// barrier at which their first two calls wait for each other (the
/// concurrency test). Per trip: the tests run at once, in one process.
static PAID_CALLS: std::sync::LazyLock<Mutex<HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);
static RENDEZVOUS: std::sync::LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Barrier>>>> =
    std::sync::LazyLock::new(Default::default);

fn paid_calls(trip: &str) -> usize {
    PAID_CALLS.lock().unwrap().get(trip).copied().unwrap_or(0)
}

#[event_handler]
async fn booked(event: &Booked, uow: &mut Trips) -> Result<(), Error> {
    let timeout = uow.schedule(
        Expire {
            trip: event.trip.clone(),
        },
        Duration::from_millis(event.timeout_ms),
    )?;
    uow.trips()
        .start(
            event.trip.clone(),
            Trip {
                timeout,
                paid: Vec::new(),
                outcome: None,
            },
        )
        .await?;
    uow.commit().await
}

#[event_handler]
async fn paid(event: &Paid, uow: &mut Trips) -> Result<(), Error> {
    let call = {
        let mut calls = PAID_CALLS.lock().unwrap();
        let calls = calls.entry(event.trip.clone()).or_default();
        *calls += 1;
        *calls - 1
    };
    let Some(trip) = uow.trips().get(&event.trip).await? else {
        return Ok(());
    };
    trip.paid.push(event.amount);
    let timeout = trip.timeout;
    if event.last {
        trip.outcome = Some("paid".into());
        trip.end();
    }
    if event.trip.starts_with("meet-") && call < 2 {
        let rendezvous = RENDEZVOUS
            .lock()
            .unwrap()
            .entry(event.trip.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Barrier::new(2)))
            .clone();
        // Both loaded the same state before either commits (where the
        // database lets two transactions be open at once).
        let _ = tokio::time::timeout(Duration::from_millis(500), rendezvous.wait()).await;
    }
    if event.last {
        uow.cancel_scheduled(timeout).await?;
    }
    uow.commit().await
}

#[command_handler]
async fn expire(cmd: Expire, uow: &mut Trips) -> Result<(), Error> {
    if let Some(trip) = uow.trips().get(&cmd.trip).await? {
        trip.outcome = Some("expired".into());
        trip.end();
    }
    uow.commit().await
}

#[command_handler]
async fn strict_step(cmd: StrictStep, uow: &mut Trips) -> Result<(), Error> {
    if cmd.start {
        uow.stricts().start(cmd.key, Strict { steps: 0 }).await?;
    } else if let Some(strict) = uow.stricts().get(&cmd.key).await? {
        strict.steps += 1;
        strict.end();
    }
    uow.commit().await
}

#[command_handler]
async fn inspect(cmd: Inspect, uow: &mut Trips) -> Result<String, Error> {
    Ok(match uow.trips().lookup(&cmd.trip).await? {
        Lookup::Running(trip) => format!("running {:?}", trip.paid),
        Lookup::Ended(trip) => format!("ended {:?} {:?}", trip.outcome, trip.paid),
        Lookup::NotStarted => "not started".into(),
    })
}

fn bus<D: Adapter + Clone>(db: &D) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(db.clone())
        .build()
        .expect("the test's wiring is complete")
}

async fn inspect_trip(bus: &MessageBus, trip: &str) -> String {
    bus.handle(Inspect { trip: trip.into() }).await.unwrap()
}

async fn book(bus: &MessageBus, trip: &str, timeout_ms: u64) {
    let report = bus
        .publish(Envelope::new(Booked {
            trip: trip.into(),
            timeout_ms,
        }))
        .await;
    assert!(report.is_ok(), "{report:?}");
}

async fn pay(bus: &MessageBus, trip: &str, amount: u32, last: bool) -> Report {
    bus.publish(Envelope::new(Paid {
        trip: trip.into(),
        amount,
        last,
    }))
    .await
}

/// Start, continue, end, timeout, late messages, the strict outcome,
/// starting twice.
async fn life_cycle<D: Adapter + Clone>(db: D) {
    let bus = bus(&db);
    let scheduler = SchedulerOptions::default();

    // Paid in two steps before the timeout: ended "paid", its timeout
    // cancelled.
    book(&bus, "t1", 60_000).await;
    assert_eq!(inspect_trip(&bus, "t1").await, "running []");
    assert!(pay(&bus, "t1", 10, false).await.is_ok());
    assert_eq!(inspect_trip(&bus, "t1").await, "running [10]");
    assert!(pay(&bus, "t1", 20, true).await.is_ok());
    assert_eq!(
        inspect_trip(&bus, "t1").await,
        r#"ended Some("paid") [10, 20]"#
    );

    // Not paid: the timeout ends it.
    book(&bus, "t2", 0).await;
    assert_eq!(
        bus.deliver_due(&scheduler).await.unwrap(),
        1,
        "only t2's timeout is due"
    );
    assert_eq!(
        inspect_trip(&bus, "t2").await,
        r#"ended Some("expired") []"#
    );

    // A late payment, after the end, and one for a trip never booked:
    // ignored (the declared outcome), the handler succeeds.
    assert!(pay(&bus, "t2", 5, false).await.is_ok());
    assert_eq!(
        inspect_trip(&bus, "t2").await,
        r#"ended Some("expired") []"#
    );
    assert!(pay(&bus, "nowhere", 5, false).await.is_ok());
    assert_eq!(inspect_trip(&bus, "nowhere").await, "not started");

    // Not started twice.
    let report = bus
        .publish(Envelope::new(Booked {
            trip: "t1".into(),
            timeout_ms: 0,
        }))
        .await;
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert!(
        report.failures[0]
            .error
            .contains("process process_test.trip \"t1\" was started already (and has ended)"),
        "{report:?}"
    );

    // Strict: a message for a process that is not running is an error.
    bus.handle(StrictStep {
        key: 7,
        start: true,
    })
    .await
    .unwrap();
    bus.handle(StrictStep {
        key: 7,
        start: false,
    })
    .await
    .unwrap();
    let ended = bus
        .handle(StrictStep {
            key: 7,
            start: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            &ended,
            CommandError::Bus(Error::NoProcess {
                process: "process_test.strict",
                ended: true,
                ..
            })
        ),
        "{ended:?}"
    );
    let never = bus
        .handle(StrictStep {
            key: 8,
            start: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        never.to_string(),
        "no running process process_test.strict 8: it was never started"
    );
}

/// Two payments of one trip at once: both recorded, one after the other
/// (one handler ran again after the other's commit); neither lost.
async fn concurrent<D: Adapter + Clone>(db: D, trip: &str, retried: bool) {
    let bus = bus(&db);
    book(&bus, trip, 60_000).await;
    let (a, b) = tokio::join!(
        tokio::spawn({
            let (bus, trip) = (bus.clone(), trip.to_owned());
            async move { pay(&bus, &trip, 1, false).await }
        }),
        tokio::spawn({
            let (bus, trip) = (bus.clone(), trip.to_owned());
            async move { pay(&bus, &trip, 2, false).await }
        }),
    );
    assert!(a.unwrap().is_ok());
    assert!(b.unwrap().is_ok());
    let state = inspect_trip(&bus, trip).await;
    assert!(
        state == "running [1, 2]" || state == "running [2, 1]",
        "{state}"
    );
    let calls = paid_calls(trip);
    if retried {
        assert_eq!(
            calls, 3,
            "one of the two ran again after the other's commit"
        );
    } else {
        assert_eq!(calls, 2, "the second waited for the first's commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    life_cycle(InMemoryDatabase::new()).await;
    concurrent(InMemoryDatabase::new(), "meet-memory", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let s = TestSqlite::start().await;
    life_cycle(s.db.clone()).await;
    // SQLite takes its write lock at `begin`: the second transaction waits
    // for the first to commit, and reads its state.
    concurrent(s.db.clone(), "meet-sqlite", false).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    life_cycle(pg.db.clone()).await;
    concurrent(pg.db.clone(), "meet-postgres", true).await;
    pg.drop_schema().await;
}

#[path = "common/minimal.rs"]
mod minimal;

/// A process on a database that cannot store it (no aggregate store, no
/// repository for it) stops `build()`, naming each handler that uses it,
/// at its file and line.
#[test]
fn a_database_that_cannot_keep_processes_stops_build() {
    let error = MessageBus::builder()
        .scope(module_path!())
        .adapter(minimal::Minimal)
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("process_test.trip"), "{error}");
    assert!(error.contains("process_test.strict"), "{error}");
    assert!(error.contains("eda-core/tests/process.rs:"), "{error}");
    assert!(error.contains("booked"), "{error}");
    assert!(
        error.contains("keeps aggregates and processes as documents"),
        "{error}"
    );
}
