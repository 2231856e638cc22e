//! The domain: the order (the aggregate), the command that places one, and
//! its error. No database, broker or HTTP here.
//!
//! The events an order raises ([`contracts::OrderPlaced`],
//! [`contracts::OrderCancelled`]) and those it reacts to
//! ([`contracts::Allocated`], [`contracts::AllocationFailed`]) are the
//! contract with the allocation service, defined in the `contracts` crate.

pub mod commands;
pub mod errors;
pub mod model;
