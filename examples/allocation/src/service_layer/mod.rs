//! The service layer: the unit of work the handlers work in, the handlers
//! themselves, and the error commands fail with.

mod handlers;
pub mod unit_of_work;

pub use handlers::{AllocationError, STOCK_ADDRESS};
