//! The service layer: the unit of work the handlers work in, and the
//! handlers themselves.

mod handlers;
pub mod unit_of_work;
