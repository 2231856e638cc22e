//! The scenarios, one module each.

pub(crate) mod database;
