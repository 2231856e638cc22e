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

use eda_core::sqlx::{self, PgPool};

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
