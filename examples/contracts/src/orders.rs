//! What the orders service tells the others: an order was placed, an order
//! was cancelled, an allocation came for an order that no longer wants it.
//!
//! Each is ordered by its order (`key = orderid`): a service that consumes
//! them handles an order's `OrderPlaced` before its `OrderCancelled`, in
//! every instance, while different orders proceed in parallel.

use eda_core::Event;
use serde::{Deserialize, Serialize};

/// A line of an order as the services exchange it: a quantity of one
/// product (the order it belongs to is the message's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
}

impl OrderLine {
    /// A line of `qty` units of `sku`.
    pub fn new(sku: impl Into<String>, qty: u32) -> Self {
        OrderLine {
            sku: sku.into(),
            qty,
        }
    }
}

/// A customer placed an order. Published by orders when it accepts the
/// order (pending); allocation consumes it and allocates every line,
/// answering [`Allocated`](crate::Allocated) or
/// [`AllocationFailed`](crate::AllocationFailed) per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "orders.order_placed", external, key = orderid)]
pub struct OrderPlaced {
    /// The order.
    pub orderid: String,
    /// Its lines, one per product.
    pub lines: Vec<OrderLine>,
}

/// An order was cancelled (a line could not be allocated). Published by
/// orders, once per order; allocation consumes it and releases whatever it
/// had allocated to the order. It carries the lines so that allocation
/// knows which products to look at without keeping orders of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "orders.order_cancelled", external, key = orderid)]
pub struct OrderCancelled {
    /// The order.
    pub orderid: String,
    /// Why, for people (e.g. `out of stock: LAMP`).
    pub reason: String,
    /// Its lines, as placed.
    pub lines: Vec<OrderLine>,
}

/// An allocation came for an order that orders had cancelled already (it
/// timed out while allocation was away, say): orders refuses it, and
/// allocation deallocates the line. Published by orders for each such
/// [`Allocated`](crate::Allocated); deallocating a line that is not
/// allocated (any more) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(name = "orders.allocation_refused", external, key = orderid)]
pub struct AllocationRefused {
    /// The order.
    pub orderid: String,
    /// The product of the line.
    pub sku: String,
    /// How many units.
    pub qty: u32,
    /// The batch allocation had allocated it to.
    pub batchref: String,
}
