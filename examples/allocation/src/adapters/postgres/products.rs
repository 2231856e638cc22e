//! Products on Postgres: a product, its batches and their allocations in
//! three tables, loaded in one query and saved as a difference (see
//! `adapters::diff`).
//!
//! `update` reads the stored rows after its version check (one query, as
//! `get` does), and writes what changed. The read is cheap next to the
//! writes it saves, and it is exact: the version check locked the product's
//! row, every save takes that lock first, so what is stored is the product
//! at the version this unit of work loaded.
//!
//! Each kind of change is one statement whatever its number of rows, their
//! columns bound as arrays (`UNNEST`), none when there is nothing of that
//! kind.

use eda_core::sqlx::postgres::PgDatabaseError;
use eda_core::sqlx::{self, PgConnection};
use eda_core::{Find, Repository, RepositoryError, repository};

use crate::adapters::diff::{Changes, changes};
use crate::adapters::rows::{self, encode, load_product_where};
use crate::domain::model::Product;
use crate::service_layer::unit_of_work::ByBatchref;

/// The repository of [`Product`]s on Postgres (APwP's
/// `SqlAlchemyRepository`), registered for units of work on a
/// `PostgresDatabase`.
#[derive(Debug)]
pub struct PgProductRepository;

const LOAD_BY_SKU: &str = load_product_where!("p.sku = $1");
const LOAD_BY_BATCHREF: &str =
    load_product_where!("p.sku = (SELECT sku FROM batches WHERE reference = $1)");

#[repository]
impl Repository for PgProductRepository {
    type Aggregate = Product;
    type Connection = PgConnection;

    async fn get(
        conn: &mut PgConnection,
        sku: &String,
    ) -> Result<Option<Product>, RepositoryError> {
        load(conn, LOAD_BY_SKU, sku).await
    }

    async fn add(conn: &mut PgConnection, product: &Product) -> Result<(), RepositoryError> {
        // A product added at once by two units of work: the second fails on
        // the primary key, `AlreadyExists`, and its command is retried.
        sqlx::query("INSERT INTO products (sku, version) VALUES ($1, $2)")
            .bind(&product.sku)
            .bind(encode::<u64, i64>(product.version_number, "version")?)
            .execute(&mut *conn)
            .await?;
        write(conn, &product.sku, &changes(&[], product)?).await
    }

    async fn update(
        conn: &mut PgConnection,
        product: &Product,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        let saved = sqlx::query("UPDATE products SET version = $3 WHERE sku = $1 AND version = $2")
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
impl Find<ByBatchref> for PgProductRepository {
    async fn find(
        conn: &mut PgConnection,
        finder: &ByBatchref,
    ) -> Result<Option<Product>, RepositoryError> {
        load(conn, LOAD_BY_BATCHREF, &finder.0).await
    }
}

/// Runs one of the `LOAD_…` queries and builds the product from its rows.
async fn load(
    conn: &mut PgConnection,
    query: &str,
    key: &str,
) -> Result<Option<Product>, RepositoryError> {
    let rows = sqlx::query(query).bind(key).fetch_all(&mut *conn).await?;
    rows::product(&rows)
}

/// Applies the changes, deletions first (a line's position can be reused
/// by a new line).
async fn write(
    conn: &mut PgConnection,
    sku: &str,
    changes: &Changes<'_, i32>,
) -> Result<(), RepositoryError> {
    if !changes.removed_batches.is_empty() {
        sqlx::query("DELETE FROM batches WHERE sku = $1 AND reference = ANY($2)")
            .bind(sku)
            .bind(&changes.removed_batches)
            .execute(&mut *conn)
            .await?;
    }
    let t = &changes.truncated;
    if !t.is_empty() {
        sqlx::query(
            "DELETE FROM allocations a \
             USING UNNEST($1::text[], $2::int4[]) AS t(batchref, keep) \
             WHERE a.batchref = t.batchref AND a.position >= t.keep",
        )
        .bind(column(t, |t| t.batchref))
        .bind(column(t, |t| t.keep))
        .execute(&mut *conn)
        .await?;
    }
    let u = &changes.updated_batches;
    if !u.is_empty() {
        sqlx::query(
            "UPDATE batches b \
             SET position = t.position, purchased_quantity = t.qty, eta = t.eta \
             FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::date[]) AS t(reference, position, qty, eta) \
             WHERE b.sku = $1 AND b.reference = t.reference",
        )
        .bind(sku)
        .bind(column(u, |b| b.reference))
        .bind(column(u, |b| b.position))
        .bind(column(u, |b| b.purchased_quantity))
        .bind(column(u, |b| b.eta))
        .execute(&mut *conn)
        .await?;
    }
    let b = &changes.inserted_batches;
    if !b.is_empty() {
        sqlx::query(
            "INSERT INTO batches (sku, reference, position, purchased_quantity, eta) \
             SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::date[])",
        )
        .bind(sku)
        .bind(column(b, |b| b.reference))
        .bind(column(b, |b| b.position))
        .bind(column(b, |b| b.purchased_quantity))
        .bind(column(b, |b| b.eta))
        .execute(&mut *conn)
        .await
        .map_err(batch_insert_error)?;
    }
    let a = &changes.inserted_allocations;
    if !a.is_empty() {
        sqlx::query(
            "INSERT INTO allocations (batchref, position, orderid, sku, qty) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[])",
        )
        .bind(column(a, |l| l.batchref))
        .bind(column(a, |l| l.position))
        .bind(column(a, |l| l.orderid))
        .bind(column(a, |l| l.sku))
        .bind(column(a, |l| l.qty))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// One column of `rows`, as an array to bind for `UNNEST`.
fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

/// A batch reference that another product holds already (or that this
/// product holds twice) is not a concurrency conflict: no retry would change
/// it, so it is not `AlreadyExists` (which the bus retries) but an error.
/// (Two units of work adding the same new batch to one product do not get
/// here: the product's version check stops the second one first.)
fn batch_insert_error(e: sqlx::Error) -> RepositoryError {
    if let sqlx::Error::Database(db) = &e
        && db.constraint() == Some("batches_pkey")
    {
        let detail = db
            .try_downcast_ref::<PgDatabaseError>()
            .and_then(|pg| pg.detail())
            .unwrap_or_else(|| db.message());
        return RepositoryError::database(format!("duplicate batch reference: {detail}"));
    }
    e.into()
}
