//! Layers around handler calls: the order they wrap in, what they see of
//! each call (message, handler, attempt, outcome), and that a command's
//! error and an event handler's retry pass through them.
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::prelude::*;
use eda_core::{Error, HandlerCall, Layer, Next, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "layers.greet", output = String)]
pub struct Greet {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "layers.greeted")]
pub struct Greeted {
    pub name: String,
}

#[derive(Debug, Clone, Aggregate)]
pub struct Greeting {
    #[aggregate(id)]
    pub name: String,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct GreetUow {
    tx: UowTransaction,
    greetings: IdentityMap<Greeting>,
}

/// What the handlers and layers did, in order.
#[derive(Default, Clone)]
pub struct Journal(Arc<Mutex<Vec<String>>>);
impl Adapter for Journal {}

impl Journal {
    fn push(&self, line: impl Into<String>) {
        self.0.lock().unwrap().push(line.into());
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[command_handler]
async fn greet(cmd: Greet, uow: &mut GreetUow, journal: &Journal) -> Result<String, BoxError> {
    journal.push(format!("greet {}", cmd.name));
    if cmd.name.is_empty() {
        return Err("no name".into());
    }
    let mut greeting = Greeting {
        name: cmd.name.clone(),
        version: 0,
        events: Events::new(),
    };
    greeting.events.raise(Greeted {
        name: cmd.name.clone(),
    });
    uow.greetings().add(greeting)?;
    uow.commit().await?;
    Ok(format!("hello, {}", cmd.name))
}

/// Fails on its first run for each greeting, then succeeds.
#[event_handler]
async fn remember(event: &Greeted, journal: &Journal, metadata: &Metadata) -> Result<(), BoxError> {
    let first = !journal
        .lines()
        .iter()
        .any(|l| l == &format!("remember {} failed", event.name));
    if first {
        journal.push(format!("remember {} failed", event.name));
        return Err(format!("first run for {} ({})", event.name, metadata.message_id).into());
    }
    journal.push(format!("remember {}", event.name));
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "layers.visited")]
pub struct Visited {
    pub name: String,
}

/// Records each visit in its unit of work's transaction: the inbox keeps a
/// redelivered visit from running it again.
#[event_handler]
async fn count_visit(event: &Visited, uow: &mut GreetUow, journal: &Journal) -> Result<(), Error> {
    journal.push(format!("visit {}", event.name));
    uow.commit().await
}

/// A layer that writes what it sees before and after the rest of the stack.
struct Trace {
    name: &'static str,
    journal: Journal,
}

impl Layer for Trace {
    async fn call(&self, call: HandlerCall<'_>, next: Next<'_>) -> Outcome {
        self.journal.push(format!(
            "{} enter {:?} {} {} #{}",
            self.name,
            call.kind(),
            call.message(),
            call.handler(),
            call.attempt()
        ));
        let outcome = next.run().await;
        self.journal.push(format!(
            "{} leave ok={} conflict={} duplicate={}",
            self.name,
            outcome.is_ok(),
            outcome.is_conflict(),
            outcome.is_duplicate()
        ));
        outcome
    }
}

fn bus(journal: &Journal) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(InMemoryDatabase::new())
        .adapter(journal.clone())
        .layer(Trace {
            name: "outer",
            journal: journal.clone(),
        })
        .layer(Trace {
            name: "inner",
            journal: journal.clone(),
        })
        .event_retry(
            RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .build()
        .expect("wiring")
}

#[tokio::test]
async fn layers_wrap_every_handler_call_outermost_first() {
    let journal = Journal::default();
    let bus = bus(&journal);
    assert_eq!(
        bus.handle(Greet { name: "ann".into() }).await.unwrap(),
        "hello, ann"
    );
    assert_eq!(
        journal.lines(),
        [
            "outer enter Command layers.greet layers::greet #1",
            "inner enter Command layers.greet layers::greet #1",
            "greet ann",
            "inner leave ok=true conflict=false duplicate=false",
            "outer leave ok=true conflict=false duplicate=false",
            // The event handler fails once, and is run again: both runs
            // pass through the layers, the second as attempt 2.
            "outer enter Event layers.greeted layers::remember #1",
            "inner enter Event layers.greeted layers::remember #1",
            "remember ann failed",
            "inner leave ok=false conflict=false duplicate=false",
            "outer leave ok=false conflict=false duplicate=false",
            "outer enter Event layers.greeted layers::remember #2",
            "inner enter Event layers.greeted layers::remember #2",
            "remember ann",
            "inner leave ok=true conflict=false duplicate=false",
            "outer leave ok=true conflict=false duplicate=false",
        ]
    );
}

#[tokio::test]
async fn a_command_handler_s_error_is_a_failed_outcome_and_still_reaches_the_caller() {
    let journal = Journal::default();
    let bus = bus(&journal);
    let error = bus
        .handle(Greet {
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no name"), "{error}");
    assert_eq!(
        journal.lines(),
        [
            "outer enter Command layers.greet layers::greet #1",
            "inner enter Command layers.greet layers::greet #1",
            "greet ",
            "inner leave ok=false conflict=false duplicate=false",
            "outer leave ok=false conflict=false duplicate=false",
        ]
    );
}

/// Without layers, the same calls and retries happen, with nothing around
/// them.
#[tokio::test]
async fn without_layers_handlers_run_and_retry_as_with_them() {
    let journal = Journal::default();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(InMemoryDatabase::new())
        .adapter(journal.clone())
        .build()
        .unwrap();
    bus.handle(Greet { name: "bo".into() }).await.unwrap();
    assert_eq!(
        journal.lines(),
        ["greet bo", "remember bo failed", "remember bo"]
    );
}

#[tokio::test]
async fn a_redelivered_message_is_a_duplicate_outcome_and_its_handler_does_not_run() {
    let journal = Journal::default();
    let bus = bus(&journal);
    let metadata = Metadata::new();
    let body = serde_json::to_vec(&Visited { name: "cy".into() }).unwrap();
    for _ in 0..2 {
        bus.handle_incoming("layers.visited", metadata, &body)
            .await
            .unwrap();
    }
    assert_eq!(
        journal.lines(),
        [
            "outer enter Event layers.visited layers::count_visit #1",
            "inner enter Event layers.visited layers::count_visit #1",
            "visit cy",
            "inner leave ok=true conflict=false duplicate=false",
            "outer leave ok=true conflict=false duplicate=false",
            // The same message again: the inbox skips the handler.
            "outer enter Event layers.visited layers::count_visit #1",
            "inner enter Event layers.visited layers::count_visit #1",
            "inner leave ok=true conflict=false duplicate=true",
            "outer leave ok=true conflict=false duplicate=true",
        ]
    );
}
