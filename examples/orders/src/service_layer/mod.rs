//! The service layer: the unit of work the handlers work in, the process
//! that follows each order until it ends, and the handlers themselves.

use std::time::Duration;

use eda_core::Adapter;

pub mod fulfilment;
mod handlers;
pub mod unit_of_work;

/// How long an order may stay pending before it is cancelled with the
/// reason `timeout` (`ORDER_TIMEOUT_MS`; 30 s by default): an adapter the
/// bus lends to `PlaceOrder`'s handler, which schedules the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderTimeout(pub Duration);

/// [`OrderTimeout`] when `ORDER_TIMEOUT_MS` is not set.
pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for OrderTimeout {
    fn default() -> Self {
        OrderTimeout(DEFAULT_ORDER_TIMEOUT)
    }
}

impl Adapter for OrderTimeout {}
