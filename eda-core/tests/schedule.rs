//! Scheduled messages (issue 15, item 1), on each database: a unit of work
//! schedules commands and events in its transaction; the bus's scheduler
//! delivers them when due (a command to its handler, an event to its
//! handlers here and, if external, to the outbox), once; they can be
//! cancelled; they roll back with the unit of work; they survive a restart
//! (SQLite file, Postgres); a claim whose instance died is delivered after
//! its lease; a command whose handler keeps failing is retried, then
//! parked.
#![allow(missing_docs)]

use std::time::Duration;

use eda_core::backend::{Database, OutboxStore};
use eda_core::prelude::*;
use eda_core::testing::{TestPostgres, TestSqlite};
use eda_core::{Adapter, Error, MessageId, RetryPolicy, SchedulerOptions, Timestamp};
use serde::{Deserialize, Serialize};

/// A process whose steps the handlers write down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
struct Process {
    #[aggregate(id)]
    id: String,
    steps: Vec<String>,
    version: u64,
    events: Events,
}

#[derive(UnitOfWork)]
struct Processes {
    tx: UowTransaction,
    processes: IdentityMap<Process>,
}

/// Starts a process and schedules, after `delay_ms`, an `Expire` (a
/// command), a `Remind` (an internal event) and an `Announce` (an external
/// one). Returns the `Expire`'s id.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "schedule_test.start", output = MessageId)]
struct Start {
    id: String,
    delay_ms: u64,
    /// Return an error after scheduling, without committing.
    fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "schedule_test.expire")]
struct Expire {
    id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "schedule_test.remind")]
struct Remind {
    id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "schedule_test.announce", external)]
struct Announce {
    id: String,
}

/// Cancels a scheduled message; returns whether it was cancelled.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "schedule_test.cancel", output = bool)]
struct Cancel {
    scheduled: MessageId,
}

/// Schedules a `Fail`, whose handler always fails.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "schedule_test.start_failing")]
struct StartFailing;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "schedule_test.fail")]
struct Fail;

#[command_handler]
async fn start(cmd: Start, uow: &mut Processes) -> Result<MessageId, BoxError> {
    uow.processes().add(Process {
        id: cmd.id.clone(),
        steps: vec!["started".into()],
        version: 0,
        events: Events::new(),
    })?;
    let delay = Duration::from_millis(cmd.delay_ms);
    let expire = uow.schedule(Expire { id: cmd.id.clone() }, delay)?;
    uow.schedule(Remind { id: cmd.id.clone() }, delay)?;
    uow.schedule(Announce { id: cmd.id }, delay)?;
    if cmd.fail {
        return Err("failed after scheduling".into());
    }
    uow.commit().await?;
    Ok(expire)
}

async fn step(uow: &mut Processes, id: &str, step: &str) -> Result<(), BoxError> {
    let process = uow
        .processes()
        .get(&id.to_owned())
        .await?
        .ok_or("no process")?;
    process.steps.push(step.to_owned());
    uow.commit().await?;
    Ok(())
}

#[command_handler]
async fn expire(cmd: Expire, uow: &mut Processes) -> Result<(), BoxError> {
    step(uow, &cmd.id, "expired").await
}

#[event_handler]
async fn remind(event: &Remind, uow: &mut Processes) -> Result<(), BoxError> {
    step(uow, &event.id, "reminded").await
}

#[command_handler]
async fn cancel(cmd: Cancel, uow: &mut Processes) -> Result<bool, BoxError> {
    let cancelled = uow.cancel_scheduled(cmd.scheduled).await?;
    uow.commit().await?;
    Ok(cancelled)
}

#[command_handler]
async fn start_failing(_: StartFailing, uow: &mut Processes) -> Result<(), BoxError> {
    uow.schedule(Fail, Duration::ZERO)?;
    uow.commit().await?;
    Ok(())
}

#[command_handler]
async fn fail(_: Fail) -> Result<(), BoxError> {
    Err("this handler always fails".into())
}

fn bus<D: Adapter + Clone>(db: &D) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(db.clone())
        .build()
        .expect("the test's wiring is complete")
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        retry: RetryPolicy::new(3).backoff(Duration::ZERO, Duration::ZERO),
        ..SchedulerOptions::default()
    }
}

/// The steps of a process, those after "started" sorted: messages due at
/// the same time are delivered in no particular order.
async fn steps(bus: &MessageBus, id: &str) -> Vec<String> {
    let mut uow = bus.begin::<Processes>().await.unwrap();
    let process = uow.processes().read(&id.to_owned()).await.unwrap();
    let mut steps = process.map(|p| p.steps.clone()).unwrap_or_default();
    if steps.len() > 1 {
        steps[1..].sort();
    }
    steps
}

async fn announced<D: OutboxStore>(db: &D, id: &str) -> usize {
    let payload = serde_json::to_vec(&Announce { id: id.to_owned() }).unwrap();
    db.unsent(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.message.name == "schedule_test.announce" && e.message.payload == payload)
        .count()
}

/// Due delivery, not before; once; cancellation; rollback; parking.
async fn scheduled_messages<D: Adapter + Database + OutboxStore + Clone>(db: D) {
    let bus = bus(&db);
    let opts = options();

    // Not due yet: nothing delivered, nothing claimed.
    bus.handle(Start {
        id: "later".into(),
        delay_ms: 3_600_000,
        fail: false,
    })
    .await
    .unwrap();
    // Due at once.
    bus.handle(Start {
        id: "now".into(),
        delay_ms: 0,
        fail: false,
    })
    .await
    .unwrap();
    assert_eq!(db.scheduled_rows(100).await.unwrap().pending, 6);
    assert_eq!(
        announced(&db, "now").await,
        0,
        "nothing in the outbox before it is due"
    );

    assert_eq!(bus.deliver_due(&opts).await.unwrap(), 3);
    assert_eq!(steps(&bus, "now").await, ["started", "expired", "reminded"]);
    assert_eq!(
        announced(&db, "now").await,
        1,
        "the external event is in the outbox"
    );
    assert_eq!(steps(&bus, "later").await, ["started"]);
    assert_eq!(db.scheduled_rows(100).await.unwrap().pending, 3);

    // Delivered once: a second round has nothing.
    assert_eq!(bus.deliver_due(&opts).await.unwrap(), 0);
    assert_eq!(steps(&bus, "now").await, ["started", "expired", "reminded"]);
    assert_eq!(announced(&db, "now").await, 1);

    // Cancellation: of a pending one, yes; of a delivered one, no.
    let pending = bus
        .handle(Start {
            id: "cancelled".into(),
            delay_ms: 0,
            fail: false,
        })
        .await
        .unwrap();
    assert!(bus.handle(Cancel { scheduled: pending }).await.unwrap());
    assert!(
        !bus.handle(Cancel { scheduled: pending }).await.unwrap(),
        "cancelled already"
    );
    assert_eq!(
        bus.deliver_due(&opts).await.unwrap(),
        2,
        "the two events only"
    );
    assert_eq!(steps(&bus, "cancelled").await, ["started", "reminded"]);
    let delivered = bus
        .handle(Start {
            id: "delivered".into(),
            delay_ms: 0,
            fail: false,
        })
        .await
        .unwrap();
    assert_eq!(bus.deliver_due(&opts).await.unwrap(), 3);
    assert!(
        !bus.handle(Cancel {
            scheduled: delivered
        })
        .await
        .unwrap()
    );

    // Rolled back with the unit of work.
    let before = db.scheduled_rows(100).await.unwrap().pending;
    assert!(
        bus.handle(Start {
            id: "rolled back".into(),
            delay_ms: 0,
            fail: true
        })
        .await
        .is_err()
    );
    assert_eq!(db.scheduled_rows(100).await.unwrap().pending, before);
    assert_eq!(bus.deliver_due(&opts).await.unwrap(), 0);

    // A command whose handler keeps failing: tried 3 times, then parked.
    bus.handle(StartFailing).await.unwrap();
    for round in 1..=3 {
        assert_eq!(bus.deliver_due(&opts).await.unwrap(), 0, "round {round}");
    }
    let rows = db.scheduled_rows(100).await.unwrap();
    assert_eq!(rows.parked, 1, "{rows:?}");
    assert_eq!(rows.pending, before + 1, "the parked one is kept");
    assert_eq!(bus.deliver_due(&opts).await.unwrap(), 0);
    assert_eq!(
        db.scheduled_rows(100).await.unwrap().parked,
        1,
        "parked: not tried again"
    );
}

/// A claim whose instance died is delivered after its lease, once.
async fn lease_expires<D: Adapter + Database + OutboxStore + Clone>(db: D) {
    let bus = bus(&db);
    bus.handle(Start {
        id: "orphan".into(),
        delay_ms: 0,
        fail: false,
    })
    .await
    .unwrap();
    let names = [
        "schedule_test.expire",
        "schedule_test.remind",
        "schedule_test.announce",
    ];
    // An instance claims them for 300 ms, and dies.
    let claimed = db
        .claim_due(&names, Timestamp::now(), Duration::from_millis(300), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|s| s.attempts == 1));
    // Claimed: not delivered by another, nor cancellable.
    assert_eq!(bus.deliver_due(&options()).await.unwrap(), 0);
    let expire = claimed
        .iter()
        .find(|s| s.message.name == "schedule_test.expire")
        .unwrap();
    assert!(
        !bus.handle(Cancel {
            scheduled: expire.id()
        })
        .await
        .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(bus.deliver_due(&options()).await.unwrap(), 3);
    assert_eq!(
        steps(&bus, "orphan").await,
        ["started", "expired", "reminded"]
    );
    assert_eq!(announced(&db, "orphan").await, 1);
}

/// The scheduler's task delivers what falls due, and stops when asked.
async fn scheduler_task<D: Adapter + Database + OutboxStore + Clone>(db: D) {
    let bus = bus(&db);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = SchedulerOptions {
        poll: Duration::from_millis(20),
        ..options()
    };
    let task = tokio::spawn(bus.scheduler(options, async {
        let _ = stopped.await;
    }));
    bus.handle(Start {
        id: "task".into(),
        delay_ms: 200,
        fail: false,
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while steps(&bus, "task").await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {:?}",
            steps(&bus, "task").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        steps(&bus, "task").await,
        ["started", "expired", "reminded"]
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the scheduler stops when asked")
        .unwrap();
}

#[tokio::test]
async fn in_memory() {
    scheduled_messages(InMemoryDatabase::new()).await;
    lease_expires(InMemoryDatabase::new()).await;
    scheduler_task(InMemoryDatabase::new()).await;
}

#[tokio::test]
async fn sqlite() {
    let s = TestSqlite::start().await;
    scheduled_messages(s.db.clone()).await;
    s.cleanup().await;
    let s = TestSqlite::start().await;
    lease_expires(s.db.clone()).await;
    s.cleanup().await;
    let s = TestSqlite::start().await;
    scheduler_task(s.db.clone()).await;
    s.cleanup().await;
}

#[tokio::test]
async fn postgres() {
    for test in 0..3 {
        let Some(pg) = TestPostgres::start().await else {
            return;
        };
        match test {
            0 => scheduled_messages(pg.db.clone()).await,
            1 => lease_expires(pg.db.clone()).await,
            _ => scheduler_task(pg.db.clone()).await,
        }
        pg.drop_schema().await;
    }
}

/// A message scheduled before a restart is delivered after it: what fell
/// due while the service was down, at once.
#[tokio::test]
async fn sqlite_survives_a_restart() {
    let s = TestSqlite::start().await;
    {
        let bus = bus(&s.db);
        bus.handle(Start {
            id: "restart".into(),
            delay_ms: 100,
            fail: false,
        })
        .await
        .unwrap();
    }
    s.db.pool().close().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let db = eda_core::adapters::sqlite::SqliteDatabase::connect(&s.url)
        .await
        .unwrap();
    let bus = bus(&db);
    assert_eq!(bus.deliver_due(&options()).await.unwrap(), 3);
    assert_eq!(
        steps(&bus, "restart").await,
        ["started", "expired", "reminded"]
    );
    db.pool().close().await;
    s.cleanup().await;
}

#[path = "common/minimal.rs"]
mod minimal;

mod without_scheduling {
    use super::*;

    use crate::minimal::Minimal;

    #[derive(UnitOfWork)]
    struct Plain {
        tx: UowTransaction,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "schedule_test.plain", output = ())]
    struct SchedulePlain;

    #[command_handler]
    async fn schedule_plain(_: SchedulePlain, uow: &mut Plain) -> Result<(), Error> {
        uow.schedule(Fail, Duration::from_secs(1))?;
        uow.commit().await
    }

    /// A database that does not keep scheduled messages says so, with a typed
    /// error, at the commit of a unit of work that scheduled one; the bus goes
    /// on serving, and its scheduler has nothing to deliver.
    #[tokio::test]
    async fn a_database_without_scheduling_says_so() {
        let bus = MessageBus::builder()
            .scope(module_path!())
            .adapter(Minimal)
            .build()
            .unwrap();
        let error = bus.handle(SchedulePlain).await.unwrap_err();
        assert!(
            matches!(
                error,
                CommandError::Bus(Error::Unsupported {
                    what: "scheduled messages"
                })
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "scheduled messages are not supported by this database adapter"
        );
        assert_eq!(bus.deliver_due(&options()).await.unwrap(), 0);
    }
}

/// A claim never takes more than its limit, however its plan was cached:
/// a connection that polled the empty, analyzed table (a schedule that sat
/// idle) keeps a generic plan; with the claim's subquery as `IN (..)` that
/// plan ran the subquery again for each row, claiming more rows than asked
/// (and taking seconds over thousands of due rows).
#[tokio::test]
async fn a_claim_takes_at_most_its_limit_after_an_idle_schedule_on_postgres() {
    let Some(pg) = TestPostgres::start_with(
        eda_core::adapters::postgres::PostgresOptions::default().max_connections(1),
    )
    .await
    else {
        return;
    };
    let db = pg.db.clone();
    let bus = bus(&db);
    let names = ["schedule_test.expire"];
    eda_core::sqlx::query("ANALYZE eda_scheduled")
        .execute(db.pool())
        .await
        .unwrap();
    // Idle polls: past the fifth, Postgres may keep a generic plan.
    for _ in 0..10 {
        let none = db
            .claim_due(&names, Timestamp::now(), Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
    // A burst falls due: 300 processes, each scheduling an `Expire` now.
    for i in 0..300 {
        bus.handle(Start {
            id: format!("burst-{i}"),
            delay_ms: 0,
            fail: false,
        })
        .await
        .unwrap();
    }
    let mut claimed = 0;
    for _ in 0..3 {
        let batch = db
            .claim_due(&names, Timestamp::now(), Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert!(batch.len() <= 10, "a claim of 10 took {}", batch.len());
        claimed += batch.len();
    }
    assert_eq!(claimed, 30);
    pg.drop_schema().await;
}
