//! Events: what happened to a product. `Allocated` and `OutOfStock` are
//! external: they go through the outbox to other services.
//!
//! `Allocated` is part of the contract with the orders service, so it is
//! defined in the `contracts` crate; it is re-exported here, where the
//! product raises it. (`contracts::AllocationFailed`, the other message
//! allocation publishes to orders, is raised by the handlers: see
//! `service_layer`.)

use eda_core::Event;
use serde::{Deserialize, Serialize};

pub use contracts::Allocated;

/// An order line lost its allocation (its batch shrank); it must be
/// allocated again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.deallocated")]
pub struct Deallocated {
    /// The order the line belongs to.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
    /// The batch it was taken from: a read model removes exactly that
    /// allocation, whether or not the line was allocated again already.
    pub batchref: String,
}

/// An order line could not be allocated: no batch of the product has enough
/// stock. Published to other services (purchasing would want to know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.out_of_stock", external)]
pub struct OutOfStock {
    /// The product.
    pub sku: String,
}

/// An order line's allocation was removed because its order was cancelled:
/// the stock is back in the batch. Unlike [`Deallocated`], the line is not
/// allocated again; only the read model listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.released")]
pub struct Released {
    /// The cancelled order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units came back.
    pub qty: u32,
    /// The batch they came back to.
    pub batchref: String,
}
