//! The scenarios, one module each; `stock` is the service two of them share.

pub(crate) mod consume;
pub(crate) mod database;
pub(crate) mod dispatch;
pub(crate) mod durable;
pub(crate) mod ordered;
pub(crate) mod relay;
pub(crate) mod schedule;
pub(crate) mod sqlite;
pub(crate) mod stock;
