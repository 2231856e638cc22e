//! The allocation service of "Architecture Patterns with Python" (Percival
//! & Gregory), on eda: the framework's reference example.
//!
//! - [`domain`]: the model (order lines, batches, the `Product` aggregate)
//!   and the messages (commands and events). It knows eda only through the
//!   message and aggregate traits and derives.
//! - [`service_layer`]: the unit of work, the handlers and their error. Besides
//!   its own commands, the service allocates the orders the orders service
//!   places (`contracts::OrderPlaced`), answering `contracts::Allocated` or
//!   `contracts::AllocationFailed` per line, and releases the stock of the
//!   orders it cancels (`contracts::OrderCancelled`).
//! - [`views`]: the read model (which batch each line of an order went
//!   to), kept by event handlers.
//! - [`adapters`]: what the handlers talk to outside the domain:
//!   notifications, and the Postgres and SQLite tables and repositories.
//!
//! ```
//! use allocation::adapters::notifications::{FakeNotifier, Notifications};
//! use allocation::domain::commands::{Allocate, CreateBatch};
//! use eda_core::{InMemoryDatabase, MessageBus};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = InMemoryDatabase::new();
//! let bus = MessageBus::builder()
//!     .adapter(db.clone())
//!     .adapter(Notifications::new(FakeNotifier::new()))
//!     .scope("allocation")
//!     .build()?;
//! bus.handle(CreateBatch::new("b1", "LAMP", 100, None)).await?;
//! let batchref = bus.handle(Allocate::new("o1", "LAMP", 10)).await?;
//! assert_eq!(batchref.as_deref(), Some("b1"));
//! # Ok(()) }
//! ```

pub mod adapters;
pub mod config;
pub mod domain;
pub mod entrypoints;
pub mod service;
pub mod service_layer;
pub mod views;
