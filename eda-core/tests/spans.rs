//! The bus's own tracing, a layer around every handler call while INFO
//! spans are enabled: one span per run of a handler (`process`, of a command or an event)
//! with OpenTelemetry's messaging fields (the message's name, id and
//! correlation id) and the handler's id and attempt, the user's layers and
//! the handler inside it, so that a handler's own log lines carry the ids.
//!
//! A subscriber of its own, written here (a test binary of its own: it is
//! the global one), records the spans.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use eda_core::prelude::*;
use eda_core::{HandlerCall, Layer, Next, Outcome};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Subscriber;
use tracing::{Event as TracingEvent, Metadata as TracingMetadata};

/// A span as it was made: its name and its fields.
#[derive(Clone, Debug)]
struct Made {
    name: &'static str,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, Made>>,
    /// Each log line (event), with the span it was logged in.
    lines: Mutex<Vec<(String, Option<Made>)>>,
}

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for &'static Recorder {
    fn enabled(&self, _: &TracingMetadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().insert(
            id,
            Made {
                name: attrs.metadata().name(),
                fields,
            },
        );
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &TracingEvent<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let span = ENTERED
            .with(|e| e.borrow().last().copied())
            .and_then(|id| self.spans.lock().unwrap().get(&id).cloned());
        self.lines.lock().unwrap().push((message, span));
    }
    fn enter(&self, id: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(id.into_u64()));
    }
    fn exit(&self, id: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(at) = e.iter().rposition(|x| *x == id.into_u64()) {
                e.remove(at);
            }
        });
    }
}

fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::default());
        tracing::subscriber::set_global_default(recorder).expect("the only subscriber");
        recorder
    })
}

/// The span the current thread is in, innermost.
fn current() -> Option<Made> {
    let id = ENTERED.with(|e| e.borrow().last().copied())?;
    recorder().spans.lock().unwrap().get(&id).cloned()
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "spans.ring", output = ())]
pub struct Ring {
    pub who: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "spans.rang")]
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

/// What the handlers saw as their current span.
#[derive(Default, Clone)]
pub struct Seen(Arc<Mutex<Vec<Option<Made>>>>);
impl Adapter for Seen {}

#[command_handler(id = "spans::ring")]
async fn ring(cmd: Ring, uow: &mut BellUow, seen: &Seen) -> Result<(), BoxError> {
    seen.0.lock().unwrap().push(current());
    tracing::info!("ringing for {}", cmd.who);
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

#[event_handler(id = "spans::echo")]
async fn echo(_: &Rang, seen: &Seen) {
    seen.0.lock().unwrap().push(current());
}

/// A user's layer: what it sees as the current span.
#[derive(Clone, Default)]
struct Peek(Arc<Mutex<Vec<Option<Made>>>>);

impl Layer for Peek {
    async fn call(&self, _: HandlerCall<'_>, next: Next<'_>) -> Outcome {
        self.0.lock().unwrap().push(current());
        next.run().await
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_handler_call_is_a_span_around_the_user_s_layers_and_the_handler() {
    recorder();
    let seen = Seen::default();
    let peek = Peek::default();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(InMemoryDatabase::new())
        .adapter(seen.clone())
        .layer(peek.clone())
        .build()
        .unwrap();
    let envelope = Envelope::new(Ring { who: "ada".into() });
    let id = envelope.metadata.message_id;
    let correlation = envelope.metadata.correlation_id;
    bus.handle_envelope(envelope).await.unwrap();

    let in_handlers: Vec<Made> = seen.0.lock().unwrap().iter().flatten().cloned().collect();
    let in_layer: Vec<Made> = peek.0.lock().unwrap().iter().flatten().cloned().collect();
    assert_eq!(in_handlers.len(), 2, "{in_handlers:?}");
    assert_eq!(in_layer.len(), 2, "the user's layer runs inside the span");

    let command = &in_handlers[0];
    assert_eq!(command.name, "process");
    assert_eq!(command.fields["eda.kind"], "command");
    assert_eq!(command.fields["messaging.system"], "eda");
    assert_eq!(command.fields["messaging.operation.name"], "process");
    assert_eq!(command.fields["messaging.destination.name"], "spans.ring");
    assert_eq!(command.fields["messaging.message.id"], id.to_string());
    assert_eq!(
        command.fields["messaging.message.conversation_id"],
        correlation.to_string()
    );
    assert_eq!(command.fields["eda.handler"], "spans::ring");
    assert_eq!(command.fields["eda.attempt"], "1");

    let event = &in_handlers[1];
    assert_eq!(event.name, "process");
    assert_eq!(event.fields["eda.kind"], "event");
    assert_eq!(event.fields["messaging.destination.name"], "spans.rang");
    assert_eq!(event.fields["eda.handler"], "spans::echo");
    assert_ne!(
        event.fields["messaging.message.id"],
        id.to_string(),
        "the event's own id"
    );
    assert_eq!(
        event.fields["messaging.message.conversation_id"],
        correlation.to_string(),
        "the conversation goes on"
    );

    // The handler's own log line is in its span: it carries the ids.
    let lines = recorder().lines.lock().unwrap().clone();
    let (_, span) = lines
        .iter()
        .find(|(message, _)| message == "ringing for ada")
        .expect("the handler's log line");
    let span = span.as_ref().expect("logged inside a span");
    assert_eq!(span.fields["messaging.message.id"], id.to_string());
    assert_eq!(
        span.fields["messaging.message.conversation_id"],
        correlation.to_string()
    );

    assert_eq!(in_layer[0].fields, command.fields);
    assert_eq!(in_layer[1].fields, event.fields);
}
