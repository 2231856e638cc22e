//! Adapters: the orders' table and its repository, on Postgres and on
//! SQLite. The repositories register themselves (`#[repository]`), and
//! units of work use those of the database the bus was given; the
//! in-memory database needs none.
//!
//! Both databases hold the same table, each in its own types, and run the
//! same statements: reading and writing its rows is written once
//! (`rows`); each database module keeps its schema and the code that runs
//! the statements on its connections.

pub mod postgres;
mod rows;
pub mod sqlite;
