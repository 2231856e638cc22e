//! The allocation service on Postgres: its tables ([`migrate`]), the
//! repository of products ([`PgProductRepository`]) and the one of the read
//! model ([`PgOrderAllocationsRepository`]).
//!
//! Nothing here is called by the handlers: `#[repository]` registers the
//! repositories, and units of work use them whenever the bus's database is a
//! `PostgresDatabase`. The tables are unqualified: they live in the schema of
//! the connections' `search_path` (`PostgresOptions::schema`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
//!
//! let db = PostgresDatabase::connect_with(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     PostgresOptions::default().schema("allocation"),
//! )
//! .await?;
//! allocation::adapters::postgres::migrate(db.pool()).await?;
//! let bus = eda_core::MessageBus::builder().adapter(db).scope("allocation").build()?;
//! # Ok(()) }
//! ```

mod products;
mod views;

use eda_core::adapters::sql::RowExt;
use eda_core::sqlx::postgres::{PgPool, PgRow, Postgres};
use eda_core::sqlx::{self, Decode, Type};
use eda_core::{BoxError, RepositoryError};

pub use products::PgProductRepository;
pub use views::PgOrderAllocationsRepository;

/// The tables of the service, one statement each, all idempotent.
///
/// - `products`: one row per product, with the version its unit of work
///   checks and raises on every save.
/// - `batches` and `allocations`: the product's batches and their order
///   lines. `position` keeps the order of each list, which the domain relies
///   on (ties in allocation go to the batch added first; a shrinking batch
///   gives back its most recent lines first).
/// - `allocations_view_orders` and `allocations_view`: the read model (see
///   `crate::views`), one row per order with the view's version, and APwP's
///   `allocations_view (orderid, sku, batchref)`.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS products (
        sku TEXT PRIMARY KEY,
        version BIGINT NOT NULL CHECK (version >= 0)
    )",
    "CREATE TABLE IF NOT EXISTS batches (
        reference TEXT PRIMARY KEY,
        sku TEXT NOT NULL REFERENCES products (sku),
        position INTEGER NOT NULL,
        purchased_quantity BIGINT NOT NULL CHECK (purchased_quantity >= 0),
        eta DATE
    )",
    "CREATE INDEX IF NOT EXISTS batches_sku ON batches (sku, position)",
    "CREATE TABLE IF NOT EXISTS allocations (
        batchref TEXT NOT NULL REFERENCES batches (reference) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        orderid TEXT NOT NULL,
        sku TEXT NOT NULL,
        qty BIGINT NOT NULL CHECK (qty >= 0),
        PRIMARY KEY (batchref, position)
    )",
    "CREATE TABLE IF NOT EXISTS allocations_view_orders (
        orderid TEXT PRIMARY KEY,
        version BIGINT NOT NULL CHECK (version >= 0)
    )",
    "CREATE TABLE IF NOT EXISTS allocations_view (
        orderid TEXT NOT NULL REFERENCES allocations_view_orders (orderid) ON DELETE CASCADE,
        sku TEXT NOT NULL,
        batchref TEXT NOT NULL,
        PRIMARY KEY (orderid, sku, batchref)
    )",
];

/// Creates the service's tables if they do not exist, in one transaction.
///
/// Safe when several instances start at once: they take turns on an
/// advisory lock (one per schema), without which two concurrent
/// `CREATE TABLE IF NOT EXISTS` can both try to create the table.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('allocation schema ' || current_schema()))")
        .execute(&mut *tx)
        .await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Decodes `column` as the database's type `S` (e.g. `BIGINT`) and converts
/// it into the model's `T` (e.g. `u32`); either failure names the table and
/// the column.
fn decode_as<'r, S, T>(row: &'r PgRow, table: &str, column: &str) -> Result<T, RepositoryError>
where
    S: Decode<'r, Postgres> + Type<Postgres>,
    T: TryFrom<S>,
    T::Error: Into<BoxError>,
{
    let stored: S = row.decode(table, column)?;
    T::try_from(stored).map_err(|e| RepositoryError::decode(table, column, e))
}

/// [`RowExt::decode`] for a column selected under another name
/// (`p.sku AS product`): the error names the table's column, not the alias.
fn decode_aliased<'r, T>(
    row: &'r PgRow,
    alias: &str,
    table: &str,
    column: &str,
) -> Result<T, RepositoryError>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    sqlx::Row::try_get(row, alias).map_err(|e| RepositoryError::decode(table, column, e))
}

/// [`decode_as`] for a column that can be `NULL` (from an outer join).
fn decode_opt_as<'r, S, T>(
    row: &'r PgRow,
    table: &str,
    column: &str,
) -> Result<Option<T>, RepositoryError>
where
    S: Decode<'r, Postgres> + Type<Postgres>,
    T: TryFrom<S>,
    T::Error: Into<BoxError>,
{
    let stored: Option<S> = row.decode(table, column)?;
    stored
        .map(T::try_from)
        .transpose()
        .map_err(|e| RepositoryError::decode(table, column, e))
}

/// A value the table cannot hold (a version past `i64::MAX`, a list longer
/// than `i32::MAX`): refused before any query.
fn encode<S, T>(value: S, what: &str) -> Result<T, RepositoryError>
where
    T: TryFrom<S>,
    S: Copy + std::fmt::Display,
{
    T::try_from(value)
        .map_err(|_| RepositoryError::database(format!("{what} {value} is out of range")))
}
