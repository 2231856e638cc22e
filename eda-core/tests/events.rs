//! Rule 2 of DESIGN.md: an event has zero or more handlers, each in its own
//! unit of work; one failing does not stop the others and is not the command
//! caller's error; it is retried by policy, then reported. And the entry for
//! messages from outside: decoding by name, typed errors for bad input, the
//! inbox that makes a redelivery change nothing.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use eda_core::prelude::*;
use eda_core::{Envelope, Error, IncomingError, RetryPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Aggregate)]
pub struct Account {
    #[aggregate(id)]
    pub id: String,
    pub deposits: u32,
    pub version: u64,
    pub events: Events,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bank.open", output = ())]
pub struct Open {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bank.deposit", output = u32)]
pub struct Deposit {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "bank.deposited", external)]
pub struct Deposited {
    pub id: String,
}

/// Three handlers: one always fails, one fails twice then succeeds, one
/// succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "bank.audited")]
pub struct Audited {
    pub id: String,
}

/// Its handler commits, then fails: it must not run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "bank.committed_then_failed")]
pub struct CommittedThenFailed {
    pub id: String,
}

/// No handler at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "bank.ignored")]
pub struct Ignored {}

#[derive(UnitOfWork)]
pub struct BankUow {
    #[uow(transaction)]
    tx: UowTransaction,
    accounts: IdentityMap<Account>,
}

/// Counts the runs of each handler.
#[derive(Default)]
pub struct Runs(Mutex<HashMap<&'static str, u32>>);
impl Adapter for Runs {}
impl Runs {
    fn hit(&self, name: &'static str) -> u32 {
        let mut runs = self.0.lock().unwrap();
        let n = runs.entry(name).or_default();
        *n += 1;
        *n
    }
    fn get(&self, name: &str) -> u32 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

#[command_handler]
async fn open(cmd: Open, uow: &mut BankUow) -> Result<(), BoxError> {
    uow.accounts().add(Account {
        id: cmd.id,
        deposits: 0,
        version: 0,
        events: Events::new(),
    })?;
    Ok(uow.commit().await?)
}

#[command_handler]
async fn deposit(cmd: Deposit, uow: &mut BankUow) -> Result<u32, BoxError> {
    let account = uow
        .accounts()
        .get(&cmd.id)
        .await?
        .ok_or("no such account")?;
    account.deposits += 1;
    account.events.raise(Deposited { id: cmd.id.clone() });
    let deposits = account.deposits;
    uow.commit().await?;
    Ok(deposits)
}

/// Deposited has two handlers, each in its own unit of work: this one fails
/// after changing the account, the other commits its change.
#[event_handler]
async fn deposit_bonus_fails(
    event: &Deposited,
    uow: &mut BankUow,
    runs: &Runs,
) -> Result<(), Error> {
    runs.hit("bonus");
    let account = uow.accounts().get(&event.id).await?.unwrap();
    account.deposits += 1000;
    Err(Error::NoHandler("bonus refused"))
}

#[event_handler]
async fn deposit_audit(event: &Deposited, uow: &mut BankUow, runs: &Runs) -> Result<(), Error> {
    runs.hit("audit");
    let account = uow.accounts().get(&event.id).await?.unwrap();
    account.events.raise(Audited {
        id: event.id.clone(),
    });
    uow.commit().await
}

#[event_handler]
async fn audited_always_fails(_: &Audited, runs: &Runs) -> Result<(), std::io::Error> {
    runs.hit("always");
    Err(std::io::Error::other("disk on fire"))
}

#[event_handler]
async fn audited_fails_twice(_: &Audited, runs: &Runs) -> Result<(), String> {
    if runs.hit("twice") <= 2 {
        Err("not yet".to_string())
    } else {
        Ok(())
    }
}

#[event_handler]
async fn audited_succeeds(_: &Audited, runs: &Runs) {
    runs.hit("succeeds");
}

#[event_handler]
async fn commits_then_fails(
    event: &CommittedThenFailed,
    uow: &mut BankUow,
    runs: &Runs,
) -> Result<(), String> {
    runs.hit("commits_then_fails");
    let account = uow
        .accounts()
        .get(&event.id)
        .await
        .map_err(|e| e.to_string())?
        .unwrap();
    account.deposits += 1;
    uow.commit().await.map_err(|e| e.to_string())?;
    Err("after commit".into())
}

fn bus(db: &InMemoryDatabase) -> MessageBus {
    MessageBus::builder()
        .adapter(db.clone())
        .adapter(Runs::default())
        .event_retry(
            RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .build()
        .expect("wiring")
}

fn runs(bus: &MessageBus, name: &str) -> u32 {
    bus.adapter::<Runs>().unwrap().get(name)
}

async fn opened(db: &InMemoryDatabase) -> MessageBus {
    let bus = bus(db);
    bus.handle(Open { id: "acc".into() }).await.unwrap();
    bus
}

#[tokio::test]
async fn a_failing_event_handler_is_not_the_callers_error_and_does_not_stop_the_others() {
    let db = InMemoryDatabase::new();
    let bus = opened(&db).await;
    let (result, report) = bus
        .handle_with_report(Envelope::new(Deposit { id: "acc".into() }))
        .await;
    assert_eq!(result.unwrap(), 1, "the command succeeded");

    // The bonus handler failed (3 attempts) and rolled back; the audit handler
    // committed in its own unit of work; Audited's three handlers all ran.
    assert_eq!(runs(&bus, "bonus"), 3);
    assert_eq!(runs(&bus, "audit"), 1);
    assert_eq!(db.get::<Account>(&"acc".to_string()).unwrap().deposits, 1);
    assert_eq!(runs(&bus, "always"), 3);
    assert_eq!(runs(&bus, "twice"), 3, "retried until it succeeded");
    assert_eq!(runs(&bus, "succeeds"), 1);

    let failed: Vec<_> = report
        .failures
        .iter()
        .map(|f| (f.handler.name, f.attempts))
        .collect();
    assert_eq!(
        failed,
        vec![("deposit_bonus_fails", 3), ("audited_always_fails", 3)]
    );
    let always = &report.failures[1];
    assert_eq!(always.event, "bank.audited");
    assert_eq!(always.error, "disk on fire");
    assert!(always.handler.location.file.ends_with("events.rs"));
    assert!(
        always.to_string().contains("audited_always_fails"),
        "{always}"
    );
    assert_eq!(report.handled, 3, "audit, twice and succeeds");
    assert_eq!(bus.metrics().event_handler_failures, 2);
    assert_eq!(bus.metrics().event_handler_retries, 2 + 2 + 2);
}

#[tokio::test]
async fn a_handler_that_committed_before_failing_is_not_run_again() {
    let db = InMemoryDatabase::new();
    let bus = opened(&db).await;
    let report = bus
        .publish(Envelope::new(CommittedThenFailed { id: "acc".into() }))
        .await;
    assert_eq!(runs(&bus, "commits_then_fails"), 1);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].attempts, 1);
    assert_eq!(db.get::<Account>(&"acc".to_string()).unwrap().deposits, 1);
}

#[tokio::test]
async fn an_event_without_handlers_is_a_no_op() {
    let db = InMemoryDatabase::new();
    let bus = bus(&db);
    let report = bus.publish(Envelope::new(Ignored {})).await;
    assert!(report.is_ok());
    assert_eq!(report.handled, 0);
    bus.handle_incoming("bank.ignored", Metadata::new(), b"{}")
        .await
        .unwrap();
}

#[tokio::test]
async fn incoming_messages_are_decoded_by_name() {
    let db = InMemoryDatabase::new();
    let bus = bus(&db);
    bus.handle_incoming("bank.open", Metadata::new(), br#"{"id":"x"}"#)
        .await
        .unwrap();
    assert!(db.get::<Account>(&"x".to_string()).is_some());

    let unknown = bus
        .handle_incoming("bank.close", Metadata::new(), b"{}")
        .await
        .unwrap_err();
    assert!(matches!(unknown, IncomingError::UnknownMessage { ref name } if name == "bank.close"));
    assert_eq!(unknown.to_string(), "unknown message `bank.close`");

    let malformed = bus
        .handle_incoming("bank.open", Metadata::new(), br#"{"id":42}"#)
        .await
        .unwrap_err();
    assert!(matches!(
        malformed,
        IncomingError::Malformed {
            name: "bank.open",
            ..
        }
    ));
    assert!(
        malformed.to_string().contains("invalid type"),
        "{malformed}"
    );

    let not_json = bus
        .handle_incoming("bank.open", Metadata::new(), b"\xff\x00")
        .await
        .unwrap_err();
    assert!(matches!(not_json, IncomingError::Malformed { .. }));

    let failed = bus
        .handle_incoming("bank.deposit", Metadata::new(), br#"{"id":"nobody"}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(failed, IncomingError::Handler { name: "bank.deposit", ref error, .. } if error == "no such account"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_redelivered_command_is_handled_once() {
    let db = InMemoryDatabase::new();
    let bus = opened(&db).await;
    let metadata = Metadata::new();
    for _ in 0..3 {
        bus.handle_incoming("bank.deposit", metadata, br#"{"id":"acc"}"#)
            .await
            .unwrap();
    }
    assert_eq!(db.get::<Account>(&"acc".to_string()).unwrap().deposits, 1);
    assert_eq!(db.outbox().len(), 1);
    // A new message id is a new deposit.
    bus.handle_incoming("bank.deposit", Metadata::new(), br#"{"id":"acc"}"#)
        .await
        .unwrap();
    assert_eq!(db.get::<Account>(&"acc".to_string()).unwrap().deposits, 2);
}

/// The in-memory outbox's backlog: what `unsent` would give, counted, the
/// oldest's time; nothing once sent.
#[tokio::test]
async fn the_in_memory_backlog_counts_what_is_ready_to_publish() {
    use eda_core::backend::{Backlog, OutboxStore};
    let db = InMemoryDatabase::new();
    let bus = opened(&db).await;
    for _ in 0..2 {
        bus.handle_incoming("bank.deposit", Metadata::new(), br#"{"id":"acc"}"#)
            .await
            .unwrap();
    }
    let unsent = db.unsent(10).await.unwrap();
    let backlog = db.backlog().await.unwrap();
    assert_eq!(backlog.rows, unsent.len() as u64);
    assert!(backlog.rows >= 2);
    assert_eq!(
        backlog.oldest,
        unsent.iter().map(|e| e.message.metadata.timestamp).min()
    );
    let positions: Vec<i64> = unsent.iter().map(|e| e.position).collect();
    db.mark_sent(&positions).await.unwrap();
    assert_eq!(db.backlog().await.unwrap(), Backlog::default());
}

#[tokio::test]
async fn a_redelivered_event_is_handled_once_per_handler() {
    let db = InMemoryDatabase::new();
    let bus = opened(&db).await;
    let metadata = Metadata::new();
    for _ in 0..2 {
        let _ = bus
            .handle_incoming("bank.deposited", metadata, br#"{"id":"acc"}"#)
            .await;
    }
    // The audit handler committed once; the bonus handler never commits, so
    // it ran on each delivery (3 attempts each) and changed nothing.
    assert_eq!(runs(&bus, "audit"), 1);
    assert_eq!(runs(&bus, "bonus"), 6);
}

#[tokio::test]
async fn incoming_event_failures_are_reported_to_the_consumer() {
    let db = InMemoryDatabase::new();
    let bus = opened(&db).await;
    let err = bus
        .handle_incoming("bank.audited", Metadata::new(), br#"{"id":"acc"}"#)
        .await
        .unwrap_err();
    match err {
        IncomingError::EventHandlers {
            name,
            failed,
            first,
        } => {
            assert_eq!(name, "bank.audited");
            assert_eq!(failed, 1);
            assert!(first.contains("disk on fire"), "{first}");
        }
        other => panic!("unexpected {other:?}"),
    }
}
