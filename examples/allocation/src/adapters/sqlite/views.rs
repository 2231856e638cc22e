//! The read model on SQLite: APwP's `allocations_view (orderid, sku,
//! batchref)`, plus `allocations_view_orders (orderid, version)` for the
//! version check of each order's view (see `crate::views`).

use eda_core::sqlx::{self, SqliteConnection};
use eda_core::{Repository, RepositoryError, repository};

use crate::adapters::rows::{self, encode, load_order_allocations_where};
use crate::views::OrderAllocations;

/// The repository of [`OrderAllocations`] on SQLite.
#[derive(Debug)]
pub struct SqliteOrderAllocationsRepository;

#[repository]
impl Repository for SqliteOrderAllocationsRepository {
    type Aggregate = OrderAllocations;
    type Connection = SqliteConnection;

    async fn get(
        conn: &mut SqliteConnection,
        orderid: &String,
    ) -> Result<Option<OrderAllocations>, RepositoryError> {
        let rows = sqlx::query(load_order_allocations_where!("o.orderid = ?1"))
            .bind(orderid)
            .fetch_all(&mut *conn)
            .await?;
        rows::order_allocations(orderid, &rows)
    }

    async fn add(
        conn: &mut SqliteConnection,
        view: &OrderAllocations,
    ) -> Result<(), RepositoryError> {
        sqlx::query("INSERT INTO allocations_view_orders (orderid, version) VALUES (?1, ?2)")
            .bind(&view.orderid)
            .bind(encode::<u64, i64>(view.version, "version")?)
            .execute(&mut *conn)
            .await?;
        insert_lines(conn, view).await
    }

    /// The view's rows are a set: the ones it no longer holds are deleted,
    /// the new ones inserted, the others left alone.
    async fn update(
        conn: &mut SqliteConnection,
        view: &OrderAllocations,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        let saved = sqlx::query(
            "UPDATE allocations_view_orders SET version = ?3 WHERE orderid = ?1 AND version = ?2",
        )
        .bind(&view.orderid)
        .bind(encode::<u64, i64>(expected_version, "version")?)
        .bind(encode::<u64, i64>(view.version, "version")?)
        .execute(&mut *conn)
        .await?;
        if saved.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM allocations_view \
             WHERE orderid = ?1 \
               AND (sku, batchref) NOT IN \
                   (SELECT value ->> 0, value ->> 1 FROM json_each(?2))",
        )
        .bind(&view.orderid)
        .bind(lines_json(view)?)
        .execute(&mut *conn)
        .await?;
        insert_lines(conn, view).await?;
        Ok(true)
    }
}

/// The view's lines as one JSON array of `[sku, batchref]` pairs, for
/// `json_each` (SQLite's `UNNEST`): one statement whatever their number.
fn lines_json(view: &OrderAllocations) -> Result<String, RepositoryError> {
    let pairs: Vec<[&str; 2]> = view
        .lines()
        .iter()
        .map(|l| [l.sku.as_str(), l.batchref.as_str()])
        .collect();
    serde_json::to_string(&pairs).map_err(RepositoryError::database)
}

/// Inserts the lines not stored yet (the unit of work holds SQLite's write
/// lock, so nobody else writes them meanwhile).
async fn insert_lines(
    conn: &mut SqliteConnection,
    view: &OrderAllocations,
) -> Result<(), RepositoryError> {
    if view.lines().is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO allocations_view (orderid, sku, batchref) \
         SELECT ?1, value ->> 0, value ->> 1 FROM json_each(?2) WHERE true \
         ON CONFLICT DO NOTHING",
    )
    .bind(&view.orderid)
    .bind(lines_json(view)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
