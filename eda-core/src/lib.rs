//! # eda: event-driven services, checked by the compiler
//!
//! Commands and events flow through an internal [`MessageBus`] into handlers
//! that work on aggregates through a unit of work; the events that matter to
//! other services leave through an outbox. Handlers, repositories and units of
//! work are declared with macros and collected at start-up; nothing is wired
//! by hand, and [`BusBuilder::build`] checks the wiring before the service
//! takes any work.
//!
//! ```standalone_crate
//! use eda_core::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Command)]
//! #[command(name = "shop.add_product", output = ())]
//! pub struct AddProduct { pub sku: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "shop.product_added", external)]
//! pub struct ProductAdded { pub sku: String }
//!
//! #[derive(Debug, Clone, Aggregate)]
//! pub struct Product { #[aggregate(id)] pub sku: String, pub version: u64, pub events: Events }
//!
//! #[derive(UnitOfWork)]
//! pub struct ShopUow { #[uow(transaction)] tx: UowTransaction, products: IdentityMap<Product> }
//!
//! #[command_handler]
//! async fn add_product(cmd: AddProduct, uow: &mut ShopUow) -> Result<(), eda_core::Error> {
//!     let mut product = Product { sku: cmd.sku.clone(), version: 0, events: Events::new() };
//!     product.events.raise(ProductAdded { sku: cmd.sku });
//!     uow.products().add(product)?;
//!     uow.commit().await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = InMemoryDatabase::new();
//! let bus = MessageBus::builder().adapter(db.clone()).build()?;
//! bus.handle(AddProduct { sku: "LAMP".into() }).await?;
//! assert!(db.get::<Product>(&"LAMP".to_string()).is_some());
//! assert_eq!(db.outbox()[0].name, "shop.product_added");
//! # Ok(()) }
//! ```
//!
//! See the README for the architecture, and `examples/allocation` for a
//! whole service.

mod adapter;
pub mod adapters;
mod aggregate;
mod bus;
mod causation;
mod context;
mod dependency;
mod domain_error;
pub mod entrypoints;
mod error;
mod future;
mod handler;
#[cfg(feature = "host")]
pub mod host;
mod inbox;
mod layer;
mod message;
mod outbox;
mod process;
mod registry;
mod relay;
mod repository;
mod retry;
mod schedule;
mod store;
mod telemetry;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "rabbitmq"))]
pub mod testing;
mod topology;
mod trace_context;
mod uow;
mod wiring;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

// The user's API: each item at one path, here (and the most used again in
// the prelude). What adapter authors implement is in `backend`; what the
// macros' generated code names is in `__private`.
pub use adapter::Adapter;
pub use adapters::memory::InMemoryDatabase;
pub use aggregate::{Aggregate, Events};
pub use bus::{BusBuilder, BusMetrics, EventHandlerFailure, MessageBus, Report};
pub use causation::Causation;
pub use dependency::Dependency;
pub use domain_error::{BoxError, DomainError};
pub use error::{CommandError, Error, IncomingError};
pub use layer::{HandlerCall, Layer, Next, Outcome};
pub use message::{
    AnyEvent, Command, Envelope, Event, Message, MessageId, MessageKind, Metadata, Timestamp,
};
pub use outbox::ExternalMessage;
pub use process::{Lookup, OnMissing, Process, ProcessKey, ProcessMap, ProcessState, Processes};
pub use relay::{OutboxRelay, RelayMetrics, RelayOptions};
pub use repository::{Find, Finder, Repository, RepositoryError};
pub use retry::RetryPolicy;
pub use schedule::SchedulerOptions;
pub use telemetry::HandlerMetrics;
pub use topology::{Topology, TopologyWarning};
pub use trace_context::TraceContext;
pub use uow::{Aggregates, IdentityMap, UnitOfWork, UowField, UowTransaction};
pub use wiring::{HandlerRef, Location, WiringError, WiringProblem};

#[cfg(feature = "macros")]
pub use eda_macros::{
    Aggregate, Command, Event, ProcessState, UnitOfWork, command_handler, event_handler, repository,
};

pub mod backend {
    //! For authors of adapters: what a database or a broker implements so that
    //! the bus, its units of work and the outbox relay can use it. The
    //! built-in ones (in [`adapters`](crate::adapters)) implement the same traits; a database
    //! written outside eda gets everything they get.
    //!
    //! - A database: [`Database`] and its [`DatabaseTransaction`] (the
    //!   outbox and inbox rows of a commit, the dispatch journal, and the
    //!   aggregate store below). A transaction may borrow its database
    //!   ([`Database::begin`] returns `Box<dyn DatabaseTransaction + '_>`):
    //!   a unit of work keeps the database for as long as its transaction.
    //! - The aggregate store: how a database keeps the aggregates that have no
    //!   [`Repository`](crate::Repository). The SQL databases keep an aggregate
    //!   that derives serde's `Serialize` and `Deserialize` as a
    //!   [`Stored::Document`] (its JSON and its version, in one table keyed by
    //!   the aggregate's name and [`key`]); the in-memory database keeps the
    //!   value itself ([`Stored::Value`]), so any aggregate. The unit of work
    //!   loads through [`DatabaseTransaction::load_aggregate`], saves through
    //!   [`DatabaseTransaction::save_aggregate`] (a [`Save`], whose version
    //!   check is the store's to make), and a finder looks through
    //!   [`DatabaseTransaction::aggregates`]; [`Database::aggregate_storage`]
    //!   says which aggregates it keeps, so that `build()` can tell the ones it
    //!   cannot.
    //! - The outbox relay's side: [`OutboxStore`] (the unsent rows of a
    //!   database) and [`Publisher`] (a broker), with [`OutboxEntry`],
    //!   [`Delivery`] and [`OutboxWrite`].
    //! - A broker's order per key: a message whose type declares an
    //!   ordering key goes to its key's slot ([`ordering_slot`],
    //!   [`slot_routing_key`], [`ORDERING_SLOTS`]), and each consuming
    //!   service binds the slots to its ordered partitions.
    //! - Scheduled messages: [`DatabaseTransaction::schedule`] keeps them
    //!   with the commit, [`Database::claim_due`] gives the due ones to the
    //!   bus's scheduler ([`ScheduledMessage`], [`ScheduledRows`]). A database
    //!   that does not keep them says [`Error::Unsupported`](crate::Error)
    //!   when a unit of work schedules one.

    pub use crate::adapter::{Database, DatabaseTransaction, ScheduledRows};
    pub use crate::future::BoxFuture;
    pub use crate::outbox::OutboxWrite;
    pub use crate::outbox::{Backlog, OutboxEntry, OutboxStore};
    pub use crate::relay::{Delivery, Publisher};
    pub use crate::schedule::ScheduledMessage;
    pub use crate::store::{AggregateStorage, AggregateType, Save, Stored, key};
    pub use crate::topology::{ORDERING_SLOTS, ordering_slot, slot_routing_key};
}

/// The README's examples are compiled and run as doctests, so that they
/// cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The names a service module usually needs.
pub mod prelude {
    pub use crate::{
        Adapter, Aggregate, BoxError, Causation, Command, CommandError, DomainError, Envelope,
        Event, Events, Finder, IdentityMap, InMemoryDatabase, MessageBus, Metadata, Repository,
        RepositoryError, UnitOfWork, UowTransaction,
    };
    #[cfg(feature = "macros")]
    pub use crate::{command_handler, event_handler, repository};
}

/// The sqlx eda's database adapters are built on: use this one in your
/// repositories, so that the connection types are the same.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sqlx;
