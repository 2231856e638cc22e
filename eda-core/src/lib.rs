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
//! pub struct ShopUow { #[uow(transaction)] tx: Transaction, products: IdentityMap<Product> }
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

pub mod adapter;
pub mod adapters;
pub mod aggregate;
pub mod bus;
pub mod causation;
pub mod entrypoints;
pub mod error;
#[cfg(feature = "host")]
pub mod host;
pub mod message;
pub mod outbox;
pub mod registry;
pub mod relay;
pub mod repository;
pub mod retry;
pub mod store;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "rabbitmq"))]
pub mod testing;
pub mod topology;
pub mod uow;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
pub(crate) use __private as private;

pub use __private::BoxFuture;
pub use adapter::{Adapter, Database, DatabaseTransaction, Dependency};
pub use adapters::memory::InMemoryDatabase;
pub use aggregate::{Aggregate, Events};
pub use bus::{BusBuilder, BusMetrics, Context, EventHandlerFailure, MessageBus, Report};
pub use causation::Causation;
pub use error::{BoxError, CommandError, DomainError, Error, IncomingError};
pub use message::{
    AnyEvent, Command, Envelope, Event, Message, MessageId, MessageKind, Metadata, Timestamp,
};
pub use outbox::{ExternalMessage, OutboxWrite};
pub use registry::{HandlerRef, Location, WiringError, WiringProblem};
pub use relay::{OutboxRelay, OutboxStore, Publisher, RelayOptions};
pub use repository::{Find, Finder, Repository, RepositoryError};
pub use retry::RetryPolicy;
pub use topology::{Topology, TopologyWarning};
pub use uow::{Aggregates, IdentityMap, Transaction, UnitOfWork, UowField};

#[cfg(feature = "macros")]
pub use eda_macros::{
    Aggregate, Command, Event, UnitOfWork, command_handler, event_handler, repository,
};

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
        RepositoryError, Transaction, UnitOfWork,
    };
    #[cfg(feature = "macros")]
    pub use crate::{command_handler, event_handler, repository};
}

/// The sqlx eda's database adapters are built on: use this one in your
/// repositories, so that the connection types are the same.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sqlx;
