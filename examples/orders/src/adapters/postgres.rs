//! The orders service on Postgres: its table ([`migrate`]) and the
//! repository of orders ([`PgOrderRepository`]).
//!
//! Nothing here is called by the handlers: `#[repository]` registers the
//! repository, and units of work use it whenever the bus's database is a
//! `PostgresDatabase`. The table is unqualified: it lives in the schema of
//! the connections' `search_path` (`PostgresOptions::schema`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
//!
//! let db = PostgresDatabase::connect_with(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     PostgresOptions::default().schema("orders"),
//! )
//! .await?;
//! orders::adapters::postgres::migrate(db.pool()).await?;
//! let bus = eda_core::MessageBus::builder().adapter(db).scope("orders").build()?;
//! # Ok(()) }
//! ```

use eda_core::sqlx::{self, PgConnection, PgPool, Postgres};
use eda_core::{Repository, RepositoryError, repository};

use crate::adapters::rows::Orders;
use crate::domain::model::Order;

/// The tables of the service, one statement each, all idempotent: `orders`,
/// one row per order, with the version its unit of work checks and raises
/// on every save, and its lines as JSON text.
pub const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS orders (
        orderid TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
        reason TEXT,
        lines TEXT NOT NULL,
        version BIGINT NOT NULL CHECK (version >= 0)
    )"];

/// Creates the service's tables if they do not exist, in one transaction.
///
/// Safe when several instances start at once: they take turns on an
/// advisory lock (one per schema), without which two concurrent
/// `CREATE TABLE IF NOT EXISTS` can both try to create the table.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('orders schema ' || current_schema()))")
        .execute(&mut *tx)
        .await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The repository of [`Order`]s on Postgres, registered for units of work
/// on a `PostgresDatabase`.
#[derive(Debug)]
pub struct PgOrderRepository;

#[repository]
impl Repository for PgOrderRepository {
    type Aggregate = Order;
    type Connection = PgConnection;

    async fn get(
        conn: &mut PgConnection,
        orderid: &String,
    ) -> Result<Option<Order>, RepositoryError> {
        Orders::<Postgres>::get(conn, orderid).await
    }

    async fn add(conn: &mut PgConnection, order: &Order) -> Result<(), RepositoryError> {
        Orders::<Postgres>::add(conn, order).await
    }

    async fn update(
        conn: &mut PgConnection,
        order: &Order,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        Orders::<Postgres>::update(conn, order, expected_version).await
    }
}
