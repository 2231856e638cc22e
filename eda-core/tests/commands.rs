//! Rules 1, 3 and 5 of DESIGN.md on the in-memory database: a command's
//! result reaches its caller; a failed command is rolled back and its events
//! discarded; events raised by tracked aggregates are processed after commit,
//! in order; concurrent updates are detected and retried.

#![allow(missing_docs)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eda_core::prelude::*;
use eda_core::{Envelope, Error, Finder, RetryPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

#[derive(Debug, Clone, PartialEq, Aggregate)]
pub struct Counter {
    #[aggregate(id)]
    pub id: String,
    pub value: i64,
    pub tags: Vec<String>,
    pub version: u64,
    pub events: Events,
}

impl Counter {
    fn new(id: &str) -> Self {
        Counter {
            id: id.into(),
            value: 0,
            tags: vec![],
            version: 0,
            events: Events::new(),
        }
    }

    fn add(&mut self, by: i64) {
        self.value += by;
        self.events.raise(Changed {
            id: self.id.clone(),
            value: self.value,
        });
        if self.value >= 10 && self.value - by < 10 {
            self.events.raise(ReachedTen {
                id: self.id.clone(),
            });
        }
    }
}

pub struct ByTag(String);

impl Finder<Counter> for ByTag {
    fn matches(&self, c: &Counter) -> bool {
        c.tags.contains(&self.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.create", output = ())]
pub struct Create {
    pub id: String,
    pub tag: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.add", output = i64, error = CounterError)]
pub struct Add {
    pub id: String,
    pub by: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.add_by_tag", output = i64, error = CounterError)]
pub struct AddByTag {
    pub tag: String,
    pub by: i64,
}

/// Changes the counter, raises its events, then fails: nothing may escape.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.add_then_fail", output = (), error = CounterError)]
pub struct AddThenFail {
    pub id: String,
}

/// Changes the counter and returns without committing.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.add_no_commit", output = (), error = CounterError)]
pub struct AddWithoutCommit {
    pub id: String,
}

/// Adds, but the first two runs wait for each other after loading, so that
/// they conflict.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.add_racing", output = i64, error = CounterError)]
pub struct AddRacing {
    pub id: String,
}

/// Reads a counter (without changing it), waits for a writer, commits.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.peek_racing", output = i64, error = CounterError)]
pub struct PeekRacing {
    pub id: String,
}

/// Sends `Add` in the conversation of the message being handled.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.add_later", output = i64, error = CounterError)]
pub struct AddLater {
    pub id: String,
}

/// Commits, then tries to commit again.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.commit_twice", output = (), error = CounterError)]
pub struct CommitTwice {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "test.changed", external)]
pub struct Changed {
    pub id: String,
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "test.reached_ten")]
pub struct ReachedTen {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "test.celebrated")]
pub struct Celebrated {
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("no counter {0}")]
    Unknown(String),
    #[error("refused")]
    Refused,
}
impl DomainError for CounterError {}

type Handled<T> = Result<T, CommandError<CounterError>>;

#[derive(UnitOfWork)]
pub struct CounterUow {
    #[uow(transaction)]
    tx: UowTransaction,
    counters: IdentityMap<Counter>,
}

/// Records what the event handlers saw, in order.
#[derive(Default)]
pub struct Log(Mutex<Vec<String>>);
impl Adapter for Log {}
impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Makes the first two runs of `add_racing` load, then wait for each other.
pub struct Race {
    barrier: Barrier,
    runs: AtomicUsize,
}
impl Adapter for Race {}

#[command_handler]
async fn create(cmd: Create, uow: &mut CounterUow) -> Result<(), Error> {
    let mut counter = Counter::new(&cmd.id);
    counter.tags.push(cmd.tag);
    uow.counters().add(counter)?;
    uow.commit().await
}

#[command_handler]
async fn add(cmd: &Add, uow: &mut CounterUow) -> Handled<i64> {
    let counter = uow
        .counters()
        .get(&cmd.id)
        .await?
        .ok_or_else(|| CounterError::Unknown(cmd.id.clone()))?;
    counter.add(cmd.by);
    let value = counter.value;
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_by_tag(cmd: AddByTag, uow: &mut CounterUow) -> Handled<i64> {
    let counter = uow
        .counters()
        .find(&ByTag(cmd.tag.clone()))
        .await?
        .ok_or_else(|| CounterError::Unknown(cmd.tag.clone()))?;
    counter.add(cmd.by);
    let value = counter.value;
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_then_fail(cmd: AddThenFail, uow: &mut CounterUow) -> Handled<()> {
    let counter = uow.counters().get(&cmd.id).await?.unwrap();
    counter.add(100);
    Err(CounterError::Refused)?
}

#[command_handler]
async fn add_without_commit(cmd: AddWithoutCommit, uow: &mut CounterUow) -> Handled<()> {
    let counter = uow.counters().get(&cmd.id).await?.unwrap();
    counter.add(100);
    Ok(())
}

#[command_handler]
async fn add_racing(cmd: AddRacing, uow: &mut CounterUow, race: &Race) -> Handled<i64> {
    let counter = uow.counters().get(&cmd.id).await?.unwrap();
    counter.add(1);
    let value = counter.value;
    if race.runs.fetch_add(1, Ordering::SeqCst) < 2 {
        race.barrier.wait().await;
    }
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn commit_twice(cmd: CommitTwice, uow: &mut CounterUow) -> Handled<()> {
    uow.counters().get(&cmd.id).await?.unwrap().add(1);
    uow.commit().await?;
    uow.commit().await?;
    Ok(())
}

#[command_handler]
async fn peek_racing(cmd: PeekRacing, uow: &mut CounterUow, race: &Race) -> Handled<i64> {
    let value = uow.counters().read(&cmd.id).await?.unwrap().value;
    if race.runs.fetch_add(1, Ordering::SeqCst) < 2 {
        race.barrier.wait().await;
    }
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_later(cmd: AddLater, cause: &Causation) -> Handled<i64> {
    let added = cause.send(Add { id: cmd.id, by: 1 }).await?;
    Ok(added.expect("handled in process: never a redelivery"))
}

#[event_handler]
async fn log_changed(event: &Changed, log: &Log, meta: &Metadata) {
    log.push(format!(
        "changed {} {} caused by {:?}",
        event.id,
        event.value,
        meta.causation_id.is_some()
    ));
}

#[event_handler]
async fn celebrate(event: &ReachedTen, log: &Log, uow: &mut CounterUow) -> Result<(), Error> {
    log.push(format!("reached ten {}", event.id));
    let counter = uow.counters().get(&event.id).await?.unwrap();
    counter.events.raise(Celebrated {
        id: event.id.clone(),
    });
    uow.commit().await
}

#[event_handler]
async fn log_celebrated(event: Celebrated, log: &Log) {
    log.push(format!("celebrated {}", event.id));
}

struct Service {
    db: InMemoryDatabase,
    bus: MessageBus,
}

impl Service {
    fn log(&self) -> Vec<String> {
        self.bus.adapter::<Log>().expect("log adapter").lines()
    }
}

fn service() -> Service {
    service_with(RetryPolicy::new(5).backoff(Duration::from_millis(1), Duration::from_millis(5)))
}

fn service_with(retry: RetryPolicy) -> Service {
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .adapter(db.clone())
        .adapter(Log::default())
        .adapter(Race {
            barrier: Barrier::new(2),
            runs: AtomicUsize::new(0),
        })
        .command_retry(retry)
        .build()
        .expect("wiring");
    Service { db, bus }
}

fn id(s: &str) -> String {
    s.to_string()
}

#[tokio::test]
async fn the_caller_gets_the_handlers_result() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    assert_eq!(s.bus.handle(Add { id: id("a"), by: 3 }).await.unwrap(), 3);
    assert_eq!(s.bus.handle(Add { id: id("a"), by: 4 }).await.unwrap(), 7);
    let stored = s.db.get::<Counter>(&id("a")).unwrap();
    assert_eq!(stored.value, 7);
    assert!(
        stored.events.is_empty(),
        "stored aggregates carry no pending events"
    );
}

#[tokio::test]
async fn the_handlers_own_error_is_returned_typed() {
    let s = service();
    let err = s
        .bus
        .handle(Add {
            id: id("nope"),
            by: 1,
        })
        .await
        .unwrap_err();
    match err {
        CommandError::Handler(CounterError::Unknown(x)) => assert_eq!(x, "nope"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_command_is_rolled_back_and_its_events_discarded() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let commits = s.db.commits();
    let outbox = s.db.outbox().len();

    let err = s.bus.handle(AddThenFail { id: id("a") }).await.unwrap_err();
    assert!(matches!(err, CommandError::Handler(CounterError::Refused)));

    assert_eq!(s.db.get::<Counter>(&id("a")).unwrap().value, 0);
    assert_eq!(s.db.commits(), commits);
    assert_eq!(
        s.db.outbox().len(),
        outbox,
        "no outbox row for a rolled-back change"
    );
    assert!(
        !s.log().iter().any(|l| l.contains("changed a 100")),
        "no handler saw the discarded event: {:?}",
        s.log()
    );
}

#[tokio::test]
async fn uncommitted_work_is_rolled_back_by_default() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let commits = s.db.commits();
    s.bus
        .handle(AddWithoutCommit { id: id("a") })
        .await
        .unwrap();
    assert_eq!(s.db.get::<Counter>(&id("a")).unwrap().value, 0);
    assert_eq!(s.db.commits(), commits);
    assert!(!s.log().iter().any(|l| l.contains("changed a 100")));
}

#[tokio::test]
async fn events_are_processed_after_commit_in_order_until_the_queue_is_empty() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    // +12 raises Changed(12) then ReachedTen; ReachedTen's handler raises
    // Celebrated, which is handled after everything queued before it.
    assert_eq!(
        s.bus
            .handle(Add {
                id: id("a"),
                by: 12
            })
            .await
            .unwrap(),
        12
    );
    assert_eq!(
        s.log(),
        vec![
            "changed a 12 caused by true".to_string(),
            "reached ten a".to_string(),
            "celebrated a".to_string(),
        ]
    );
}

#[tokio::test]
async fn external_events_go_to_the_outbox_with_their_metadata() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let envelope = Envelope::new(Add {
        id: id("a"),
        by: 12,
    });
    let command_id = envelope.metadata.message_id;
    s.bus.handle_envelope(envelope).await.unwrap();

    let outbox = s.db.outbox();
    assert_eq!(outbox.len(), 1, "only the external event: {outbox:?}");
    let row = &outbox[0];
    assert_eq!(row.name, "test.changed");
    assert_eq!(row.metadata.causation_id, Some(command_id));
    assert_eq!(row.metadata.correlation_id, command_id);
    assert_ne!(row.metadata.message_id, command_id);
    let body: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
    assert_eq!(body, serde_json::json!({"id": "a", "value": 12}));
}

#[tokio::test]
async fn a_finder_returns_the_tracked_aggregate() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("red"),
        })
        .await
        .unwrap();
    s.bus
        .handle(Create {
            id: id("b"),
            tag: id("blue"),
        })
        .await
        .unwrap();
    assert_eq!(
        s.bus
            .handle(AddByTag {
                tag: id("blue"),
                by: 5
            })
            .await
            .unwrap(),
        5
    );
    assert_eq!(s.db.get::<Counter>(&id("b")).unwrap().value, 5);
    assert_eq!(s.db.get::<Counter>(&id("a")).unwrap().value, 0);
    let err = s
        .bus
        .handle(AddByTag {
            tag: id("green"),
            by: 5,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Handler(CounterError::Unknown(_))
    ));
}

#[tokio::test]
async fn adding_an_existing_aggregate_conflicts() {
    let s = service_with(RetryPolicy::never());
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let err = s
        .bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap_err();
    // The handler returned the framework's error: it reaches the caller as
    // the framework's, not the domain's.
    assert!(
        matches!(err, CommandError::Bus(ref e) if e.is_conflict()),
        "{err:?}"
    );
}

/// From a broker, a conflict that outlived the retries says so (the
/// consumer retries it like any failure): `conflict` was always `false`.
#[tokio::test]
async fn an_incoming_command_that_conflicts_says_so() {
    let s = service_with(RetryPolicy::never());
    let body = format!(r#"{{"id":"{}","tag":"{}"}}"#, id("a"), id("t"));
    s.bus
        .handle_incoming("test.create", Metadata::new(), body.as_bytes())
        .await
        .unwrap();
    let err = s
        .bus
        .handle_incoming("test.create", Metadata::new(), body.as_bytes())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            eda_core::IncomingError::Handler {
                name: "test.create",
                conflict: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_update_is_detected_and_the_command_retried() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let (one, two) = tokio::join!(
        s.bus.handle(AddRacing { id: id("a") }),
        s.bus.handle(AddRacing { id: id("a") })
    );
    let mut results = vec![one.unwrap(), two.unwrap()];
    results.sort();
    // Both loaded value 0 and version 0; one committed, the other conflicted
    // and ran again on the new state: no lost update.
    assert_eq!(results, vec![1, 2]);
    let stored = s.db.get::<Counter>(&id("a")).unwrap();
    assert_eq!(stored.value, 2);
    assert_eq!(stored.version, 2, "one version per successful commit");
    assert_eq!(s.bus.metrics().command_conflicts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_out_of_attempts_is_returned_to_the_caller() {
    let s = service_with(RetryPolicy::never());
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let (one, two) = tokio::join!(
        s.bus.handle(AddRacing { id: id("a") }),
        s.bus.handle(AddRacing { id: id("a") })
    );
    let (ok, err): (Vec<_>, Vec<_>) = [one, two].into_iter().partition(|r| r.is_ok());
    assert_eq!(ok.len(), 1);
    // A conflict is the framework's failure, not the domain's.
    match err.into_iter().next().unwrap().unwrap_err() {
        CommandError::Bus(e) => assert!(e.is_conflict(), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.db.get::<Counter>(&id("a")).unwrap().value, 1);
}

#[tokio::test]
async fn a_committed_unit_of_work_cannot_commit_again() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let err = s.bus.handle(CommitTwice { id: id("a") }).await.unwrap_err();
    match err {
        CommandError::Bus(Error::TransactionFinished(state)) => assert_eq!(state, "committed"),
        other => panic!("unexpected {other:?}"),
    }
    // The first commit stands.
    assert_eq!(s.db.get::<Counter>(&id("a")).unwrap().value, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_only_read_is_not_saved_and_does_not_conflict() {
    let s = service_with(RetryPolicy::never());
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    // The reader and the writer both load version 0 and wait for each other;
    // both commit, and only the writer's change is saved.
    let (read, written) = tokio::join!(
        s.bus.handle(PeekRacing { id: id("a") }),
        s.bus.handle(AddRacing { id: id("a") })
    );
    assert_eq!(read.unwrap(), 0);
    assert_eq!(written.unwrap(), 1);
    let stored = s.db.get::<Counter>("a").unwrap();
    assert_eq!((stored.value, stored.version), (1, 1));
    assert_eq!(s.bus.metrics().command_conflicts, 0);
}

#[tokio::test]
async fn a_command_sent_by_a_handler_stays_in_the_conversation() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    let envelope = Envelope::new(AddLater { id: id("a") });
    let first = envelope.metadata;
    assert_eq!(s.bus.handle_envelope(envelope).await.unwrap(), 1);
    let changed = &s.db.outbox()[0];
    assert_eq!(changed.metadata.correlation_id, first.correlation_id);
    assert_ne!(
        changed.metadata.causation_id,
        Some(first.message_id),
        "caused by the Add, not by AddLater"
    );
}

#[tokio::test]
async fn a_unit_of_work_can_be_begun_outside_handlers_to_read() {
    let s = service();
    s.bus
        .handle(Create {
            id: id("a"),
            tag: id("t"),
        })
        .await
        .unwrap();
    s.bus.handle(Add { id: id("a"), by: 5 }).await.unwrap();
    let mut uow = s.bus.begin::<CounterUow>().await.unwrap();
    assert_eq!(
        uow.counters().read(&id("a")).await.unwrap().unwrap().value,
        5
    );
    assert!(uow.counters().read(&id("zz")).await.unwrap().is_none());
    let commits = s.db.commits();
    drop(uow);
    assert_eq!(s.db.commits(), commits, "dropping it rolled back");
}
