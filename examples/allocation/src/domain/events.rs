//! Events: what happened to a product. `Allocated` and `OutOfStock` are
//! external: they go through the outbox to other services.

use eda_core::Event;
use serde::{Deserialize, Serialize};

/// An order line was allocated to a batch. Published to other services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.allocated", external)]
pub struct Allocated {
    /// The order the line belongs to.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
    /// The batch it was allocated to.
    pub batchref: String,
}

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
