//! Why an order cannot be placed, in the domain's terms.

use eda_core::DomainError;

use crate::domain::model::MAX_LINES;

/// Why `PlaceOrder` failed. The framework's own failures (the database, a
/// conflict that outlived its retries) are not here: the caller sees them
/// as `CommandError::Bus`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// An order with this id was placed before.
    #[error("order {0} was placed already")]
    AlreadyPlaced(String),
    /// The order id is empty (or blank).
    #[error("orderid must not be empty")]
    EmptyOrderid,
    /// The order has no lines, or more than [`MAX_LINES`].
    #[error("an order has 1 to {MAX_LINES} lines, not {0}")]
    LineCount(usize),
    /// A line's SKU is empty (or blank).
    #[error("sku must not be empty")]
    EmptySku,
    /// A line asks for no units of this SKU.
    #[error("qty of {0} must be a positive integer, not 0")]
    ZeroQuantity(String),
    /// Two lines are of this SKU (one line per product).
    #[error("sku {0} is in the order twice")]
    DuplicateSku(String),
}

impl DomainError for OrderError {}
