//! What the allocation service tells the others: a line was allocated, or
//! could not be.

use std::fmt;

use eda_core::Event;
use serde::{Deserialize, Serialize};

/// An order line was allocated to a batch. Published by allocation for
/// every allocation (through its HTTP API, an order placed, or a
/// reallocation after a batch shrank: then the line has a new batch);
/// orders consumes it to record the batch of the line, and confirms the
/// order once all its lines have one.
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

/// A line of an order placed through orders could not be allocated.
/// Published by allocation while it allocates an
/// [`OrderPlaced`](crate::OrderPlaced) (not for its own HTTP API, which
/// answers the caller instead); orders consumes it and cancels the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "allocation.allocation_failed", external)]
pub struct AllocationFailed {
    /// The order the line belongs to.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units were asked for.
    pub qty: u32,
    /// Why it failed.
    pub reason: FailureReason,
}

/// Why a line could not be allocated; `snake_case` in JSON
/// (`"out_of_stock"`), words when displayed (`out of stock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// No batch of the product has enough stock left.
    OutOfStock,
    /// Allocation knows no product with this SKU.
    UnknownSku,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureReason::OutOfStock => "out of stock",
            FailureReason::UnknownSku => "unknown sku",
        })
    }
}
