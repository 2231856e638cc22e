//! The fulfilment of an order: a process manager that follows one order,
//! keyed by its id, from `PlaceOrder` until it is confirmed or cancelled,
//! and holds the timeout scheduled for it, so that whoever ends it
//! cancels the timeout.
//!
//! ```text
//! PlaceOrder ──▶ started, ExpireOrder scheduled ──┬── every line Allocated ──▶ ended (timeout cancelled)
//!                                                 ├── AllocationFailed ──────▶ ended (timeout cancelled)
//!                                                 └── ExpireOrder (due) ─────▶ order cancelled "timeout", ended
//! ```
//!
//! A message for an order whose fulfilment has ended (a late
//! `ExpireOrder`, an `Allocated` after the timeout) finds no running
//! process, which is logged and ignored; the order itself refuses a late
//! allocation (see [`Order::record_allocation`](crate::domain::model::Order::record_allocation)).

use eda_core::{MessageId, ProcessState};
use serde::{Deserialize, Serialize};

/// What the process keeps: the id of the scheduled `ExpireOrder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ProcessState)]
#[process(name = "orders.fulfilment", key = String)]
pub struct Fulfilment {
    /// The `ExpireOrder` scheduled when the order was placed.
    pub timeout: MessageId,
}
