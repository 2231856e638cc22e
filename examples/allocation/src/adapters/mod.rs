//! Adapters: what the handlers talk to outside the domain. Notifications are
//! given to the bus by the entrypoint (`MessageBus::builder().adapter(..)`);
//! the repositories of each database register themselves, and units of work
//! use those of the database the bus was given.

pub mod notifications;
pub mod postgres;
// SQLite: `pub mod sqlite;` beside it, the same shape (`migrate`, a product
// repository with `Find<ByBatchref>`, a read-model repository) with
// `type Connection = sqlx::SqliteConnection`, once eda-core's adapter lands.
