//! Commands: what the outside world asks the allocation service to do.
//!
//! Each names [`AllocationError`], the domain's error, so that callers of
//! `MessageBus::handle` can match on it.

use chrono::NaiveDate;
use eda_core::Command;
use serde::{Deserialize, Serialize};

use crate::domain::errors::AllocationError;

/// Adds a batch of stock (creating the product if it is new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "allocation.create_batch", output = (), error = AllocationError)]
pub struct CreateBatch {
    /// The batch's reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The product.
    pub sku: String,
    /// How many units were purchased.
    pub qty: u32,
    /// When it arrives; `None`: it is in the warehouse.
    pub eta: Option<NaiveDate>,
}

impl CreateBatch {
    /// A `CreateBatch` command.
    pub fn new(
        reference: impl Into<String>,
        sku: impl Into<String>,
        qty: u32,
        eta: Option<NaiveDate>,
    ) -> Self {
        CreateBatch {
            reference: reference.into(),
            sku: sku.into(),
            qty,
            eta,
        }
    }
}

/// Allocates an order line to a batch. Returns the batch's reference, or
/// `None` when the product is out of stock (which raises `OutOfStock`: it is
/// not an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "allocation.allocate", output = Option<String>, error = AllocationError)]
pub struct Allocate {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
}

impl Allocate {
    /// An `Allocate` command.
    pub fn new(orderid: impl Into<String>, sku: impl Into<String>, qty: u32) -> Self {
        Allocate {
            orderid: orderid.into(),
            sku: sku.into(),
            qty,
        }
    }
}

/// Changes how many units a batch holds (e.g. some were broken in transit);
/// lines that no longer fit are deallocated, then allocated again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "allocation.change_batch_quantity", output = (), error = AllocationError)]
pub struct ChangeBatchQuantity {
    /// The batch's reference.
    pub batchref: String,
    /// Its new quantity.
    pub qty: u32,
}

impl ChangeBatchQuantity {
    /// A `ChangeBatchQuantity` command.
    pub fn new(batchref: impl Into<String>, qty: u32) -> Self {
        ChangeBatchQuantity {
            batchref: batchref.into(),
            qty,
        }
    }
}

/// Allocates every line of an order placed in the orders service, in one
/// unit of work. Sent by the handler of `contracts::OrderPlaced`; handled
/// in-process only. A line that cannot be allocated is not an error: it
/// raises `contracts::AllocationFailed` (with the reason), which tells the
/// orders service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "allocation.allocate_order", output = (), error = AllocationError)]
pub struct AllocateOrder {
    /// The order.
    pub orderid: String,
    /// Its lines.
    pub lines: Vec<contracts::OrderLine>,
}

/// Releases every allocation of a cancelled order from the batches of
/// these products (the stock comes back). Sent by the handler of
/// `contracts::OrderCancelled`; handled in-process only. Products that are
/// unknown, or hold nothing of the order, are left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "allocation.deallocate_order", output = (), error = AllocationError)]
pub struct DeallocateOrder {
    /// The order.
    pub orderid: String,
    /// The products its lines were of.
    pub skus: Vec<String>,
}
