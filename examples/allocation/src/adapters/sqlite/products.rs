//! Products on SQLite: a product, its batches and their allocations in
//! three tables, loaded in one query and saved as a difference, as on
//! Postgres (see `adapters::diff`).
//!
//! `update` reads the stored rows after its version check (one query, as
//! `get` does), and writes what changed. What is stored is the product at
//! the version this unit of work loaded: the version check says so, and the
//! unit of work has held SQLite's write lock since it began.
//!
//! The writes are one statement per row changed. Postgres binds arrays to
//! save a round trip per statement; SQLite has no arrays and no round
//! trips (it runs in the process), and a save changes one or two rows.

use eda_core::sqlx::{self, SqliteConnection};
use eda_core::{Find, Repository, RepositoryError, repository};

use crate::adapters::diff::{Changes, changes};
use crate::adapters::rows::{self, encode, load_product_where};
use crate::domain::model::Product;
use crate::service_layer::unit_of_work::ByBatchref;

/// The repository of [`Product`]s on SQLite, registered for units of work
/// on a `SqliteDatabase`.
#[derive(Debug)]
pub struct SqliteProductRepository;

const LOAD_BY_SKU: &str = load_product_where!("p.sku = ?1");
const LOAD_BY_BATCHREF: &str =
    load_product_where!("p.sku = (SELECT sku FROM batches WHERE reference = ?1)");

#[repository]
impl Repository for SqliteProductRepository {
    type Aggregate = Product;
    type Connection = SqliteConnection;

    async fn get(
        conn: &mut SqliteConnection,
        sku: &String,
    ) -> Result<Option<Product>, RepositoryError> {
        load(conn, LOAD_BY_SKU, sku).await
    }

    async fn add(conn: &mut SqliteConnection, product: &Product) -> Result<(), RepositoryError> {
        // A product that exists already fails on the primary key:
        // `AlreadyExists`, and the command is retried (and finds it).
        sqlx::query("INSERT INTO products (sku, version) VALUES (?1, ?2)")
            .bind(&product.sku)
            .bind(encode::<u64, i64>(product.version_number, "version")?)
            .execute(&mut *conn)
            .await?;
        write(conn, &product.sku, &changes(&[], product)?).await
    }

    async fn update(
        conn: &mut SqliteConnection,
        product: &Product,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        let saved = sqlx::query("UPDATE products SET version = ?3 WHERE sku = ?1 AND version = ?2")
            .bind(&product.sku)
            .bind(encode::<u64, i64>(expected_version, "version")?)
            .bind(encode::<u64, i64>(product.version_number, "version")?)
            .execute(&mut *conn)
            .await?;
        if saved.rows_affected() == 0 {
            return Ok(false);
        }
        let stored = load(conn, LOAD_BY_SKU, &product.sku)
            .await?
            .map(|p| p.batches)
            .unwrap_or_default();
        write(conn, &product.sku, &changes(&stored, product)?).await?;
        Ok(true)
    }
}

/// APwP's `get_by_batchref`.
#[repository]
impl Find<ByBatchref> for SqliteProductRepository {
    async fn find(
        conn: &mut SqliteConnection,
        finder: &ByBatchref,
    ) -> Result<Option<Product>, RepositoryError> {
        load(conn, LOAD_BY_BATCHREF, &finder.0).await
    }
}

/// Runs one of the `LOAD_…` queries and builds the product from its rows.
async fn load(
    conn: &mut SqliteConnection,
    query: &str,
    key: &str,
) -> Result<Option<Product>, RepositoryError> {
    let rows = sqlx::query(query).bind(key).fetch_all(&mut *conn).await?;
    rows::product(&rows)
}

/// Applies the changes, deletions first (a line's position can be reused
/// by a new line).
async fn write(
    conn: &mut SqliteConnection,
    sku: &str,
    changes: &Changes<'_, i64>,
) -> Result<(), RepositoryError> {
    for reference in &changes.removed_batches {
        // Its lines go with it (`ON DELETE CASCADE`).
        sqlx::query("DELETE FROM batches WHERE sku = ?1 AND reference = ?2")
            .bind(sku)
            .bind(reference)
            .execute(&mut *conn)
            .await?;
    }
    for t in &changes.truncated {
        sqlx::query("DELETE FROM allocations WHERE batchref = ?1 AND position >= ?2")
            .bind(t.batchref)
            .bind(t.keep)
            .execute(&mut *conn)
            .await?;
    }
    for b in &changes.updated_batches {
        sqlx::query(
            "UPDATE batches SET position = ?3, purchased_quantity = ?4, eta = ?5 \
             WHERE sku = ?1 AND reference = ?2",
        )
        .bind(sku)
        .bind(b.reference)
        .bind(b.position)
        .bind(b.purchased_quantity)
        .bind(b.eta)
        .execute(&mut *conn)
        .await?;
    }
    for b in &changes.inserted_batches {
        sqlx::query(
            "INSERT INTO batches (sku, reference, position, purchased_quantity, eta) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(sku)
        .bind(b.reference)
        .bind(b.position)
        .bind(b.purchased_quantity)
        .bind(b.eta)
        .execute(&mut *conn)
        .await
        .map_err(|e| batch_insert_error(e, b.reference))?;
    }
    for l in &changes.inserted_allocations {
        sqlx::query(
            "INSERT INTO allocations (batchref, position, orderid, sku, qty) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(l.batchref)
        .bind(l.position)
        .bind(l.orderid)
        .bind(l.sku)
        .bind(l.qty)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A batch reference that another product holds already (or that this
/// product holds twice) is not a concurrency conflict: no retry would change
/// it, so it is not `AlreadyExists` (which the bus retries) but an error.
/// The statement inserts one row into a table whose only uniqueness is the
/// reference, so a unique violation names this batch.
fn batch_insert_error(e: sqlx::Error, reference: &str) -> RepositoryError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return RepositoryError::database(format!(
            "duplicate batch reference: {reference} already exists"
        ));
    }
    e.into()
}
