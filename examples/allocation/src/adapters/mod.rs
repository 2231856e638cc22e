//! Adapters the handlers are given by the entrypoint (through
//! `MessageBus::builder().adapter(..)`).

pub mod notifications;
