//! The domain: the model and the messages that change it or tell what
//! happened to it. No database, broker or HTTP here.

pub mod commands;
pub mod errors;
pub mod events;
pub mod model;
