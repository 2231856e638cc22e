//! The allocation service on SQLite, the embedded default: its tables
//! ([`migrate`]), the repository of products ([`SqliteProductRepository`])
//! and the one of the read model ([`SqliteOrderAllocationsRepository`]).
//!
//! Nothing here is called by the handlers: `#[repository]` registers the
//! repositories, and units of work use them whenever the bus's database is a
//! `SqliteDatabase`. They hold the same data as the Postgres ones, in
//! SQLite's types.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use eda_core::adapters::sqlite::SqliteDatabase;
//!
//! // A file (`sqlite://allocation.db`), or in memory:
//! let db = SqliteDatabase::connect("sqlite::memory:").await?;
//! allocation::adapters::sqlite::migrate(db.pool()).await?;
//! let bus = eda_core::MessageBus::builder()
//!     .adapter(db)
//!     .adapter(allocation::adapters::notifications::Notifications::new(
//!         allocation::adapters::notifications::FakeNotifier::new(),
//!     ))
//!     .scope("allocation")
//!     .build()?;
//! # let _ = bus;
//! # Ok(()) }
//! ```
//!
//! # Concurrency
//!
//! SQLite has one writer at a time, and eda's units of work take the write
//! lock when they begin (`BEGIN IMMEDIATE`): two units of work never hold
//! the same product at once, the second waits for the first to end and
//! then loads what it committed. The version check of every save
//! (`UPDATE products … WHERE version = ?`) stays, as the backstop the
//! framework asks of every repository.

mod products;
mod views;

use eda_core::sqlx::{self, SqlitePool};

pub use products::SqliteProductRepository;
pub use views::SqliteOrderAllocationsRepository;

/// The tables of the service, one statement each, all idempotent: those of
/// `adapters::postgres::SCHEMA`, in SQLite's types.
///
/// - `STRICT` tables: a value of the wrong type is refused on write, as
///   Postgres would, rather than stored as whatever it is.
/// - Integers are `INTEGER` (64 bits); `eta` is `TEXT` holding an ISO date
///   (`2024-03-01`, what sqlx writes for a `NaiveDate`), checked as such
///   (`IS`, not `=`: `date('1 March')` is `NULL`, which a `CHECK` lets by).
/// - `position` keeps the order of each list, which the domain relies on
///   (ties in allocation go to the batch added first; a shrinking batch
///   gives back its most recent lines first).
/// - Every foreign key has an index that starts with its columns (SQLite
///   does not make one), so that deleting a batch or a view's order does
///   not scan the child table. eda's connections turn foreign keys on.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS products (
        sku TEXT NOT NULL PRIMARY KEY,
        version INTEGER NOT NULL CHECK (version >= 0)
    ) STRICT",
    "CREATE TABLE IF NOT EXISTS batches (
        reference TEXT NOT NULL PRIMARY KEY,
        sku TEXT NOT NULL REFERENCES products (sku),
        position INTEGER NOT NULL,
        purchased_quantity INTEGER NOT NULL CHECK (purchased_quantity >= 0),
        eta TEXT CHECK (eta IS NULL OR eta IS date(eta))
    ) STRICT",
    "CREATE INDEX IF NOT EXISTS batches_sku ON batches (sku, position)",
    "CREATE TABLE IF NOT EXISTS allocations (
        batchref TEXT NOT NULL REFERENCES batches (reference) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        orderid TEXT NOT NULL,
        sku TEXT NOT NULL,
        qty INTEGER NOT NULL CHECK (qty >= 0),
        PRIMARY KEY (batchref, position)
    ) STRICT",
    "CREATE TABLE IF NOT EXISTS allocations_view_orders (
        orderid TEXT NOT NULL PRIMARY KEY,
        version INTEGER NOT NULL CHECK (version >= 0)
    ) STRICT",
    "CREATE TABLE IF NOT EXISTS allocations_view (
        orderid TEXT NOT NULL REFERENCES allocations_view_orders (orderid) ON DELETE CASCADE,
        sku TEXT NOT NULL,
        batchref TEXT NOT NULL,
        PRIMARY KEY (orderid, sku, batchref)
    ) STRICT",
];

/// Creates the service's tables if they do not exist, in one transaction.
///
/// Safe when several processes start at once on one file: the transaction
/// is `BEGIN IMMEDIATE`, so each takes the write lock before it looks at
/// the schema, and they take turns (each waits up to the connections' busy
/// timeout).
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}
