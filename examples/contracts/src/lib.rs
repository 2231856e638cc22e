//! The messages the example services exchange: the contract between
//! `orders` and `allocation`, in one crate that both depend on, so that a
//! message has one definition (name, fields, JSON shape) on both sides of
//! the broker.
//!
//! Every message here is an external event: its publisher writes it to its
//! outbox in the transaction of the change it reports, the relay publishes
//! it on the exchange with its name as the routing key, and each consumer's
//! queue is bound to it because the consumer has a handler for it.
//!
//! | message | published by | consumed by | for |
//! |---|---|---|---|
//! | [`OrderPlaced`] (`orders.order_placed`) | orders | allocation | allocate every line of a new order |
//! | [`OrderCancelled`] (`orders.order_cancelled`) | orders | allocation | release the stock an order no longer needs |
//! | [`AllocationRefused`] (`orders.allocation_refused`) | orders | allocation | release a line allocated after its order was cancelled |
//! | [`Allocated`] (`allocation.allocated`) | allocation | orders | record the batch of a line; the order is confirmed once every line has one |
//! | [`AllocationFailed`] (`allocation.allocation_failed`) | allocation | orders | cancel the order, with the reason |
//!
//! The crate holds messages only: no handlers, no state. A service that
//! handles one of them declares the handler in its own crate.
//!
//! ```
//! use contracts::{OrderLine, OrderPlaced};
//! use eda_core::Message;
//!
//! let placed = OrderPlaced {
//!     orderid: "o1".into(),
//!     lines: vec![OrderLine::new("LAMP", 2)],
//! };
//! assert_eq!(OrderPlaced::NAME, "orders.order_placed");
//! assert_eq!(placed.lines[0].sku, "LAMP");
//! ```

pub mod allocation;
pub mod orders;

pub use allocation::{Allocated, AllocationFailed, FailureReason};
pub use orders::{AllocationRefused, OrderCancelled, OrderLine, OrderPlaced};

#[cfg(test)]
mod tests {
    use eda_core::Message;
    use serde_json::json;

    use super::*;

    /// The names and JSON shapes are the contract: a change here breaks
    /// the other service.
    #[test]
    fn names_and_shapes_are_stable() {
        assert_eq!(OrderPlaced::NAME, "orders.order_placed");
        assert_eq!(OrderCancelled::NAME, "orders.order_cancelled");
        assert_eq!(AllocationRefused::NAME, "orders.allocation_refused");
        assert_eq!(Allocated::NAME, "allocation.allocated");
        assert_eq!(AllocationFailed::NAME, "allocation.allocation_failed");
        let shapes = [
            (
                serde_json::to_value(OrderPlaced {
                    orderid: "o1".into(),
                    lines: vec![OrderLine::new("LAMP", 2)],
                }),
                json!({"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 2}]}),
            ),
            (
                serde_json::to_value(OrderCancelled {
                    orderid: "o1".into(),
                    reason: "out of stock: LAMP".into(),
                    lines: vec![OrderLine::new("LAMP", 2)],
                }),
                json!({
                    "orderid": "o1",
                    "reason": "out of stock: LAMP",
                    "lines": [{"sku": "LAMP", "qty": 2}],
                }),
            ),
            (
                serde_json::to_value(AllocationRefused {
                    orderid: "o1".into(),
                    sku: "LAMP".into(),
                    qty: 2,
                    batchref: "b1".into(),
                }),
                json!({"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"}),
            ),
            (
                serde_json::to_value(Allocated {
                    orderid: "o1".into(),
                    sku: "LAMP".into(),
                    qty: 2,
                    batchref: "b1".into(),
                }),
                json!({"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"}),
            ),
            (
                serde_json::to_value(AllocationFailed {
                    orderid: "o1".into(),
                    sku: "LAMP".into(),
                    qty: 2,
                    reason: FailureReason::UnknownSku,
                }),
                json!({"orderid": "o1", "sku": "LAMP", "qty": 2, "reason": "unknown_sku"}),
            ),
        ];
        for (value, expected) in shapes {
            assert_eq!(value.unwrap(), expected);
        }
    }

    #[test]
    fn failure_reasons_read_as_words() {
        assert_eq!(FailureReason::OutOfStock.to_string(), "out of stock");
        assert_eq!(FailureReason::UnknownSku.to_string(), "unknown sku");
        let reason: FailureReason = serde_json::from_str("\"out_of_stock\"").unwrap();
        assert_eq!(reason, FailureReason::OutOfStock);
    }
}
