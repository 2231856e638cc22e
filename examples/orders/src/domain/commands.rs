//! Commands: what the outside world asks the orders service to do, and
//! what the service schedules for itself.

use contracts::OrderLine;
use eda_core::Command;
use serde::{Deserialize, Serialize};

use crate::domain::errors::OrderError;

/// Places an order: it is pending until allocation answers for every line
/// (see [`Order`](crate::domain::model::Order)). Handled in-process only
/// (the HTTP entrypoint sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "orders.place_order", output = (), error = OrderError)]
pub struct PlaceOrder {
    /// The order's id, chosen by the client.
    pub orderid: String,
    /// Its lines, one per product.
    pub lines: Vec<OrderLine>,
}

impl PlaceOrder {
    /// A `PlaceOrder` command.
    pub fn new(orderid: impl Into<String>, lines: Vec<OrderLine>) -> Self {
        PlaceOrder {
            orderid: orderid.into(),
            lines,
        }
    }
}

/// Cancels the order if it is still pending: allocation did not answer for
/// every line in time. Scheduled by `PlaceOrder`'s handler for
/// [`OrderTimeout`](crate::service_layer::OrderTimeout) after the order
/// was placed (and cancelled when the order is confirmed or cancelled
/// first); handled in-process only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(name = "orders.expire_order", output = ())]
pub struct ExpireOrder {
    /// The order.
    pub orderid: String,
}
