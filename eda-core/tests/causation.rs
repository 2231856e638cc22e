//! Rule 11 of DESIGN.md, once-only through causation: what a message's
//! handlers cause is deduplicated when that message is redelivered, and the
//! identities the inbox keeps handlers by are stable across moves and
//! renames.
#![allow(missing_docs)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use eda_core::prelude::*;
use eda_core::sqlx;
use eda_core::testing::TestSqlite;
use eda_core::{Error, Metadata, WiringProblem};
use serde::{Deserialize, Serialize};

/// A stock of units and the commands that reserve them.
mod stock {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Aggregate)]
    pub(crate) struct Stock {
        #[aggregate(id)]
        pub(crate) sku: String,
        pub(crate) reserved: u32,
        pub(crate) version: u64,
        pub(crate) events: Events,
    }

    #[derive(UnitOfWork)]
    pub(crate) struct StockUow {
        tx: UowTransaction,
        stock: IdentityMap<Stock>,
    }

    /// Reserves one unit: not idempotent by itself, so a second run shows.
    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "causation.reserve", output = u32)]
    pub(crate) struct Reserve {
        pub(crate) sku: String,
    }

    /// Arrives from another service; its handler reserves one unit per sku.
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "causation.order_placed", external)]
    pub(crate) struct OrderPlaced {
        pub(crate) skus: Vec<String>,
    }

    #[command_handler]
    async fn reserve(cmd: Reserve, uow: &mut StockUow) -> Result<u32, CommandError<BoxError>> {
        let stock = uow.stock().get(&cmd.sku).await?.ok_or("unknown sku")?;
        stock.reserved += 1;
        let reserved = stock.reserved;
        uow.commit().await?;
        Ok(reserved)
    }

    /// Sends one command per sku, as a handler with no unit of work of its own
    /// (so no inbox of its own): what it sends is what must be once-only.
    #[event_handler]
    async fn reserve_each(
        event: &OrderPlaced,
        cause: &Causation,
        sent: &Sent,
    ) -> Result<(), CommandError<BoxError>> {
        for sku in &event.skus {
            let output = cause.send(Reserve { sku: sku.clone() }).await?;
            sent.0.lock().unwrap().push(output);
        }
        Ok(())
    }

    /// What `reserve_each` got back from each send.
    #[derive(Default)]
    pub(crate) struct Sent(pub(crate) Mutex<Vec<Option<u32>>>);
    impl Adapter for Sent {}
}
use stock::{OrderPlaced, Sent, Stock};

fn stock(sku: &str) -> Stock {
    Stock {
        sku: sku.into(),
        reserved: 0,
        version: 0,
        events: Events::new(),
    }
}

fn memory_bus() -> (InMemoryDatabase, MessageBus) {
    let db = InMemoryDatabase::new();
    db.insert(stock("LAMP"));
    db.insert(stock("DESK"));
    let bus = MessageBus::builder()
        .scope("causation::stock")
        .adapter(db.clone())
        .adapter(Sent::default())
        .build()
        .expect("wiring");
    (db, bus)
}

/// The issue's trial: a redelivered event whose handler sends a command
/// applied that command twice (the command got a new id each time, and the
/// inbox only knew the event).
#[tokio::test]
async fn a_command_sent_by_a_redelivered_event_is_applied_once() {
    let (db, bus) = memory_bus();
    let metadata = Metadata::new();
    let body = br#"{"skus":["LAMP","DESK"]}"#;
    bus.handle_incoming("causation.order_placed", metadata, body)
        .await
        .unwrap();
    // The broker delivers it again (the consumer died before its ack).
    bus.handle_incoming("causation.order_placed", metadata, body)
        .await
        .unwrap();
    assert_eq!(db.get::<Stock>("LAMP").unwrap().reserved, 1);
    assert_eq!(db.get::<Stock>("DESK").unwrap().reserved, 1);
    let sent = bus.adapter::<Sent>().unwrap().0.lock().unwrap().clone();
    // The first delivery's sends ran; the redelivery's were recognised.
    assert_eq!(sent, vec![Some(1), Some(1), None, None]);
}

/// A different event (another message id) causes new commands.
#[tokio::test]
async fn another_event_causes_new_commands() {
    let (db, bus) = memory_bus();
    let body = br#"{"skus":["LAMP"]}"#;
    for _ in 0..3 {
        bus.handle_incoming("causation.order_placed", Metadata::new(), body)
            .await
            .unwrap();
    }
    assert_eq!(db.get::<Stock>("LAMP").unwrap().reserved, 3);
}

/// Raised in the service itself (not from a broker, not journaled): there
/// is no redelivery to guard against, and each raise causes its commands.
#[tokio::test]
async fn an_event_published_in_process_causes_its_commands_each_time() {
    let (db, bus) = memory_bus();
    let event = OrderPlaced {
        skus: vec!["LAMP".into(), "LAMP".into()],
    };
    bus.publish(Envelope::new(event.clone())).await;
    bus.publish(Envelope::new(event)).await;
    assert_eq!(db.get::<Stock>("LAMP").unwrap().reserved, 4);
}

/// The metadata of a caused command: the conversation goes on, and its id
/// is the same for the same cause, handler and place among the handler's
/// sends.
#[test]
fn caused_ids_are_derived_from_the_cause_the_handler_and_the_order_of_sends() {
    use eda_core::MessageId;
    let cause = MessageId::new();
    let a = MessageId::caused(cause, "shop::reserve_each", 0);
    assert_eq!(a, MessageId::caused(cause, "shop::reserve_each", 0));
    assert_ne!(a, MessageId::caused(cause, "shop::reserve_each", 1));
    assert_ne!(a, MessageId::caused(cause, "shop::other", 0));
    assert_ne!(
        a,
        MessageId::caused(MessageId::new(), "shop::reserve_each", 0)
    );
    assert_eq!(a.as_uuid().get_version_num(), 8);
    // Pinned: a redelivery to a newer build must derive the same id.
    let fixed: MessageId = "0190f3a2-7c1e-7a4b-8d2e-3f4a5b6c7d8e".parse().unwrap();
    // (The value is FNV-1a 128 of the cause's bytes, the handler's, 0xff and
    // n in little-endian, with the version and variant bits set, computed
    // apart from this code.)
    assert_eq!(
        MessageId::caused(fixed, "shop::reserve_each", 2).to_string(),
        "9a607534-d4f9-8f82-9955-fab4f2b953b1"
    );
}

// --- Handler identities ------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "causation.pinged", external)]
pub struct Pinged {}

/// A unit of work with nothing but its transaction: its inbox row is what
/// these tests read.
#[derive(UnitOfWork)]
pub struct PlainUow {
    tx: UowTransaction,
}

#[derive(Default)]
pub struct Counted {
    default_id: AtomicU32,
    renamed: AtomicU32,
}
impl Adapter for Counted {}

mod deep {
    pub(crate) mod inside {
        use super::super::*;

        /// No id given: `<crate>::<fn>`, whatever module it sits in.
        #[event_handler]
        async fn counted_by_default(
            _: &Pinged,
            uow: &mut PlainUow,
            n: &Counted,
        ) -> Result<(), Error> {
            n.default_id.fetch_add(1, Ordering::SeqCst);
            uow.commit().await
        }

        /// Was `notify_warehouse`; renamed and moved here, it keeps its id.
        #[event_handler(id = "causation::notify_warehouse")]
        async fn tell_the_warehouse(
            _: &Pinged,
            uow: &mut PlainUow,
            n: &Counted,
        ) -> Result<(), Error> {
            n.renamed.fetch_add(1, Ordering::SeqCst);
            uow.commit().await
        }
    }
}

async fn sqlite_bus() -> (TestSqlite, MessageBus) {
    let db = TestSqlite::start().await;
    let bus = MessageBus::builder()
        .scope("causation::deep")
        .adapter(db.db.clone())
        .adapter(Counted::default())
        .build()
        .expect("wiring");
    (db, bus)
}

#[tokio::test]
async fn a_handler_is_kept_in_the_inbox_by_crate_and_name_not_by_module() {
    let (db, bus) = sqlite_bus().await;
    let metadata = Metadata::new();
    bus.handle_incoming("causation.pinged", metadata, b"{}")
        .await
        .unwrap();
    let mut handlers: Vec<String> = sqlx::query_scalar("SELECT handler FROM eda_inbox")
        .fetch_all(db.pool())
        .await
        .unwrap();
    handlers.sort();
    assert_eq!(
        handlers,
        [
            "causation::counted_by_default",
            "causation::notify_warehouse"
        ]
    );
}

/// The message was handled by the handler before its rename (its inbox row
/// says so); the renamed handler, with the old id, does not run it again.
#[tokio::test]
async fn a_renamed_handler_with_its_old_id_does_not_handle_a_message_again() {
    let (db, bus) = sqlite_bus().await;
    let metadata = Metadata::new();
    sqlx::query("INSERT INTO eda_inbox (message_id, handler) VALUES (?1, ?2)")
        .bind(metadata.message_id.to_string())
        .bind("causation::notify_warehouse")
        .execute(db.pool())
        .await
        .unwrap();
    bus.handle_incoming("causation.pinged", metadata, b"{}")
        .await
        .unwrap();
    let counted = bus.adapter::<Counted>().unwrap();
    assert_eq!(counted.renamed.load(Ordering::SeqCst), 0);
    assert_eq!(counted.default_id.load(Ordering::SeqCst), 1);
}

mod clash {
    pub(crate) mod a {
        use super::super::*;
        #[derive(Debug, Clone, Serialize, Deserialize, Event)]
        #[event(name = "causation.clash.happened")]
        pub(crate) struct Happened {}

        #[event_handler]
        async fn record(_: &Happened) {}
    }
    pub(crate) mod b {
        use super::a::Happened;

        /// Same crate, same name, another module: the same default id.
        #[eda_core::event_handler]
        async fn record(_: &Happened) {}
    }
}

#[test]
fn two_handlers_of_one_event_with_one_id_do_not_build() {
    let err = MessageBus::builder()
        .scope(format!("{}::clash", module_path!()))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            &err.problems[..],
            [WiringProblem::DuplicateHandlerId { message: "causation.clash.happened", id: "causation::record", handlers }]
                if handlers.len() == 2
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("clash::a") && text.contains("clash::b"),
        "{text}"
    );
    assert!(text.contains("id = "), "{text}");
}
