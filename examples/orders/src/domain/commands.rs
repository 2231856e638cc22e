//! Commands: what the outside world asks the orders service to do.

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
