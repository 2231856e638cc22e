//! The read model on Postgres: APwP's `allocations_view (orderid, sku,
//! batchref)`, plus `allocations_view_orders (orderid, version)` for the
//! version check of each order's view (see `crate::views`).

use eda_core::sqlx::{self, PgConnection};
use eda_core::{Repository, RepositoryError, repository};

use crate::adapters::rows::{self, encode, load_order_allocations_where};
use crate::views::OrderAllocations;

/// The repository of [`OrderAllocations`] on Postgres.
#[derive(Debug)]
pub struct PgOrderAllocationsRepository;

#[repository]
impl Repository for PgOrderAllocationsRepository {
    type Aggregate = OrderAllocations;
    type Connection = PgConnection;

    async fn get(
        conn: &mut PgConnection,
        orderid: &String,
    ) -> Result<Option<OrderAllocations>, RepositoryError> {
        let rows = sqlx::query(load_order_allocations_where!("o.orderid = $1"))
            .bind(orderid)
            .fetch_all(&mut *conn)
            .await?;
        rows::order_allocations(orderid, &rows)
    }

    async fn add(conn: &mut PgConnection, view: &OrderAllocations) -> Result<(), RepositoryError> {
        sqlx::query("INSERT INTO allocations_view_orders (orderid, version) VALUES ($1, $2)")
            .bind(&view.orderid)
            .bind(encode::<u64, i64>(view.version, "version")?)
            .execute(&mut *conn)
            .await?;
        insert_lines(conn, view).await
    }

    /// The view's rows are a set: the ones it no longer holds are deleted,
    /// the new ones inserted, the others left alone.
    async fn update(
        conn: &mut PgConnection,
        view: &OrderAllocations,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        let saved = sqlx::query(
            "UPDATE allocations_view_orders SET version = $3 WHERE orderid = $1 AND version = $2",
        )
        .bind(&view.orderid)
        .bind(encode::<u64, i64>(expected_version, "version")?)
        .bind(encode::<u64, i64>(view.version, "version")?)
        .execute(&mut *conn)
        .await?;
        if saved.rows_affected() == 0 {
            return Ok(false);
        }
        let (skus, batchrefs) = columns(view);
        sqlx::query(
            "DELETE FROM allocations_view \
             WHERE orderid = $1 \
               AND (sku, batchref) NOT IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
        )
        .bind(&view.orderid)
        .bind(&skus)
        .bind(&batchrefs)
        .execute(&mut *conn)
        .await?;
        insert_lines(conn, view).await?;
        Ok(true)
    }
}

fn columns(view: &OrderAllocations) -> (Vec<&str>, Vec<&str>) {
    view.lines()
        .iter()
        .map(|l| (l.sku.as_str(), l.batchref.as_str()))
        .unzip()
}

/// Inserts the lines not stored yet (the version check holds the order's
/// row, so nobody else writes them meanwhile).
async fn insert_lines(
    conn: &mut PgConnection,
    view: &OrderAllocations,
) -> Result<(), RepositoryError> {
    if view.lines().is_empty() {
        return Ok(());
    }
    let (skus, batchrefs) = columns(view);
    sqlx::query(
        "INSERT INTO allocations_view (orderid, sku, batchref) \
         SELECT $1, * FROM UNNEST($2::text[], $3::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&view.orderid)
    .bind(&skus)
    .bind(&batchrefs)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
