//! Adapters: what the handlers talk to outside the domain. Notifications are
//! given to the bus by the entrypoint (`MessageBus::builder().adapter(..)`);
//! the repositories of each database register themselves, and units of work
//! use those of the database the bus was given.
//!
//! Postgres and SQLite hold the same tables, each in its own types and
//! SQL. What their repositories do alike is written once: reading a
//! product or an order's view from rows (`rows`), and the difference a save
//! of a product writes (`diff`). Each database module keeps its schema, its
//! statements and the code that runs them.

mod diff;
pub mod notifications;
pub mod postgres;
mod rows;
pub mod sqlite;
