//! The orders service, on eda: the second service of the example pair. It
//! places orders and follows their allocation, talking to the allocation
//! service only through the broker, with the messages of the `contracts`
//! crate:
//!
//! 1. `POST /orders` places an order (pending), which raises
//!    `contracts::OrderPlaced`, published through the outbox.
//! 2. Allocation allocates each line and answers `contracts::Allocated`
//!    or `contracts::AllocationFailed`.
//! 3. Once every line is allocated the order is confirmed; at the first
//!    failure it is cancelled, which raises `contracts::OrderCancelled`, and
//!    allocation releases the lines it had allocated.
//! 4. An order allocation has not answered for within
//!    [`OrderTimeout`](service_layer::OrderTimeout) (`ORDER_TIMEOUT_MS`) is
//!    cancelled with the reason `timeout`: its fulfilment, a process
//!    manager ([`service_layer::fulfilment`]), scheduled an `ExpireOrder`
//!    when it was placed. An allocation that arrives for a cancelled order
//!    is refused (`contracts::AllocationRefused`), and allocation releases
//!    it.
//!
//! The modules:
//!
//! - [`domain`]: the `Order` aggregate, the `PlaceOrder` command and its
//!   error. It knows eda only through the message and aggregate traits and
//!   derives.
//! - [`service_layer`]: the unit of work, the fulfilment process and the
//!   handlers.
//! - [`views`]: reading an order for the HTTP API.
//!
//! There is no repository and no table: an `Order` serializes, and eda
//! stores it as a document on Postgres and SQLite (and as a value in
//! memory).
//! - [`entrypoints`]: HTTP; [`config`] and [`service`] turn the
//!   environment into a running service.
//!
//! ```
//! use contracts::{Allocated, OrderLine};
//! use eda_core::{Envelope, InMemoryDatabase, MessageBus};
//! use orders::domain::commands::PlaceOrder;
//! use orders::domain::model::Status;
//! use orders::service_layer::OrderTimeout;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = InMemoryDatabase::new();
//! let bus = MessageBus::builder()
//!     .adapter(db.clone())
//!     .adapter(OrderTimeout::default())
//!     .scope("orders")
//!     .build()?;
//! bus.handle(PlaceOrder::new("o1", vec![OrderLine::new("LAMP", 2)])).await?;
//! assert_eq!(db.outbox()[0].name, "orders.order_placed");
//!
//! // What allocation answers, through the broker:
//! let allocated = Allocated {
//!     orderid: "o1".into(),
//!     sku: "LAMP".into(),
//!     qty: 2,
//!     batchref: "b1".into(),
//! };
//! bus.publish(Envelope::new(allocated)).await;
//! let order = orders::views::order("o1", &bus).await?.expect("placed");
//! assert_eq!(order.status(), Status::Confirmed);
//! # Ok(()) }
//! ```

pub mod config;
pub mod domain;
pub mod entrypoints;
pub mod service;
pub mod service_layer;
pub mod views;
