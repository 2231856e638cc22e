//! Adapters: what the handlers talk to outside the domain. Notifications are
//! given to the bus by the entrypoint (`MessageBus::builder().adapter(..)`);
//! the repositories of each database register themselves, and units of work
//! use those of the database the bus was given.

mod diff;
pub mod notifications;
pub mod postgres;
mod rows;
pub mod sqlite;
