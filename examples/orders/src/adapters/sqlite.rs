//! The orders service on SQLite, the embedded default: its table
//! ([`migrate`]) and the repository of orders ([`SqliteOrderRepository`]).
//!
//! Nothing here is called by the handlers: `#[repository]` registers the
//! repository, and units of work use it whenever the bus's database is a
//! `SqliteDatabase`. It holds the same data as the Postgres one, in
//! SQLite's types, and runs the same statements.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use eda_core::adapters::sqlite::SqliteDatabase;
//!
//! // A file (`sqlite://orders.db`), or in memory:
//! let db = SqliteDatabase::connect("sqlite::memory:").await?;
//! orders::adapters::sqlite::migrate(db.pool()).await?;
//! let bus = eda_core::MessageBus::builder().adapter(db).scope("orders").build()?;
//! # let _ = bus;
//! # Ok(()) }
//! ```
//!
//! eda's units of work take SQLite's write lock when they begin (`BEGIN
//! IMMEDIATE`), so two never hold the same order at once; the version check
//! of every save stays, as the backstop the framework asks of every
//! repository.

use eda_core::sqlx::{self, Sqlite, SqliteConnection, SqlitePool};
use eda_core::{Repository, RepositoryError, repository};

use crate::adapters::rows::Orders;
use crate::domain::model::Order;

/// The tables of the service, one statement each, all idempotent: those of
/// `adapters::postgres::SCHEMA`, in SQLite's types. `STRICT`: a value of
/// the wrong type is refused on write, as Postgres would, rather than
/// stored as whatever it is.
pub const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS orders (
        orderid TEXT NOT NULL PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
        reason TEXT,
        lines TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 0)
    ) STRICT"];

/// Creates the service's tables if they do not exist, in one transaction.
///
/// Safe when several processes start at once on one file: the transaction
/// is `BEGIN IMMEDIATE`, so each takes the write lock before it looks at
/// the schema, and they take turns.
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The repository of [`Order`]s on SQLite, registered for units of work on
/// a `SqliteDatabase`.
#[derive(Debug)]
pub struct SqliteOrderRepository;

#[repository]
impl Repository for SqliteOrderRepository {
    type Aggregate = Order;
    type Connection = SqliteConnection;

    async fn get(
        conn: &mut SqliteConnection,
        orderid: &String,
    ) -> Result<Option<Order>, RepositoryError> {
        Orders::<Sqlite>::get(conn, orderid).await
    }

    async fn add(conn: &mut SqliteConnection, order: &Order) -> Result<(), RepositoryError> {
        Orders::<Sqlite>::add(conn, order).await
    }

    async fn update(
        conn: &mut SqliteConnection,
        order: &Order,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        Orders::<Sqlite>::update(conn, order, expected_version).await
    }
}
