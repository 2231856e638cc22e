//! The rows of the service's tables, on Postgres and on SQLite alike: both
//! hold the same tables and columns (each in its own types), so the queries
//! that load a product or an order's view are the same SQL but for their
//! placeholders, and building the aggregate from their rows is the same
//! code. Each database's repositories give the condition in their own
//! placeholders, run the query on their own connections, and write in
//! their own SQL ([`encode`] checks the values they write).
//!
//! Every integer column read here is 64 bits on both databases (`BIGINT`
//! on Postgres, `INTEGER` on SQLite): an `i64`, converted into the model's
//! type.

use chrono::NaiveDate;
use eda_core::adapters::sql::RowExt;
use eda_core::sqlx::{ColumnIndex, Decode, Row, Type};
use eda_core::{BoxError, RepositoryError};

use crate::domain::model::{Batch, OrderLine, Product};
use crate::views::{Allocation, OrderAllocations};

/// The query of a product with its batches and their lines, for
/// [`product`]: one row per allocation (or per batch without any, or one
/// for a product without batches), in order, read in one statement so that
/// it is one consistent snapshot. `$condition` picks the product.
macro_rules! load_product_where {
    ($condition:literal) => {
        concat!(
            "SELECT p.sku AS product, p.version, b.reference, b.purchased_quantity, b.eta, \
                    a.orderid, a.sku, a.qty \
             FROM products p \
             LEFT JOIN batches b ON b.sku = p.sku \
             LEFT JOIN allocations a ON a.batchref = b.reference \
             WHERE ",
            $condition,
            " ORDER BY b.position, a.position"
        )
    };
}
pub(crate) use load_product_where;

/// The query of an order's view, for [`order_allocations`]: one row per
/// line (or one for an order whose view is empty). `$condition` picks the
/// order.
macro_rules! load_order_allocations_where {
    ($condition:literal) => {
        concat!(
            "SELECT o.version, v.sku, v.batchref \
             FROM allocations_view_orders o \
             LEFT JOIN allocations_view v ON v.orderid = o.orderid \
             WHERE ",
            $condition
        )
    };
}
pub(crate) use load_order_allocations_where;

/// The product in the rows of a `load_product_where!` query; `None` when
/// there are none.
pub(crate) fn product<'r, R>(rows: &'r [R]) -> Result<Option<Product>, RepositoryError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    NaiveDate: Decode<'r, R::Database> + Type<R::Database>,
{
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let sku: String = decode_aliased(first, "product", "products", "sku")?;
    let version: u64 = decode_integer(first, "products", "version")?;
    let mut batches: Vec<Batch> = Vec::new();
    let mut lines: Vec<OrderLine> = Vec::new();
    let mut current: Option<(String, u32, Option<NaiveDate>)> = None;
    for row in rows {
        // `None`: a product without batches (its one row).
        let Some(reference) = row.decode::<Option<String>>("batches", "reference")? else {
            continue;
        };
        if current.as_ref().is_none_or(|(r, _, _)| *r != reference) {
            if let Some((r, qty, eta)) = current.take() {
                let lines = std::mem::take(&mut lines);
                batches.push(Batch::restore(r, sku.clone(), qty, eta, lines));
            }
            let (table, column) = ("batches", "purchased_quantity");
            let qty = required(decode_optional_integer(row, table, column)?, table, column)?;
            let eta: Option<NaiveDate> = row.decode("batches", "eta")?;
            current = Some((reference, qty, eta));
        }
        // `None`: a batch without allocations.
        if let Some(orderid) = row.decode::<Option<String>>("allocations", "orderid")? {
            let line_sku = row.decode::<Option<String>>("allocations", "sku")?;
            let line_sku = required(line_sku, "allocations", "sku")?;
            let qty = decode_optional_integer(row, "allocations", "qty")?;
            let qty = required(qty, "allocations", "qty")?;
            lines.push(OrderLine::new(orderid, line_sku, qty));
        }
    }
    if let Some((r, qty, eta)) = current {
        batches.push(Batch::restore(r, sku.clone(), qty, eta, lines));
    }
    let mut product = Product::new(sku, batches);
    product.version_number = version;
    Ok(Some(product))
}

/// The view of `orderid` in the rows of a `load_order_allocations_where!`
/// query; `None` when there are none.
pub(crate) fn order_allocations<'r, R>(
    orderid: &str,
    rows: &'r [R],
) -> Result<Option<OrderAllocations>, RepositoryError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let version: u64 = decode_integer(first, "allocations_view_orders", "version")?;
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        let sku: Option<String> = row.decode("allocations_view", "sku")?;
        let batchref: Option<String> = row.decode("allocations_view", "batchref")?;
        // Both `NULL`: an order whose view is empty (its one row).
        if let (Some(sku), Some(batchref)) = (sku, batchref) {
            lines.push(Allocation { sku, batchref });
        }
    }
    Ok(Some(OrderAllocations::restore(orderid, lines, version)))
}

/// Decodes the integer `column` and converts it into the model's `T` (e.g.
/// `u32`); either failure names the table and the column.
fn decode_integer<'r, R, T>(row: &'r R, table: &str, column: &str) -> Result<T, RepositoryError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    T: TryFrom<i64>,
    T::Error: Into<BoxError>,
{
    let stored: i64 = row.decode(table, column)?;
    T::try_from(stored).map_err(|e| RepositoryError::decode(table, column, e))
}

/// [`decode_integer`] for a column that can be `NULL` (from an outer join).
fn decode_optional_integer<'r, R, T>(
    row: &'r R,
    table: &str,
    column: &str,
) -> Result<Option<T>, RepositoryError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    T: TryFrom<i64>,
    T::Error: Into<BoxError>,
{
    let stored: Option<i64> = row.decode(table, column)?;
    stored
        .map(T::try_from)
        .transpose()
        .map_err(|e| RepositoryError::decode(table, column, e))
}

/// [`RowExt::decode`] for a column selected under another name
/// (`p.sku AS product`): the error names the table's column, not the alias.
fn decode_aliased<'r, R, T>(
    row: &'r R,
    alias: &str,
    table: &str,
    column: &str,
) -> Result<T, RepositoryError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(alias)
        .map_err(|e| RepositoryError::decode(table, column, e))
}

/// A `NOT NULL` column read through an outer join, on a row that exists
/// (its key is not `NULL`): the schema says it has a value; if it has none,
/// that is a decoding error, not a panic.
fn required<T>(value: Option<T>, table: &str, column: &str) -> Result<T, RepositoryError> {
    value.ok_or_else(|| RepositoryError::decode(table, column, "NULL in a NOT NULL column"))
}

/// A value the table cannot hold (a version past `i64::MAX`, a position
/// past what the `position` column holds): refused before any query.
pub(crate) fn encode<S, T>(value: S, what: &str) -> Result<T, RepositoryError>
where
    T: TryFrom<S>,
    S: Copy + std::fmt::Display,
{
    T::try_from(value)
        .map_err(|_| RepositoryError::database(format!("{what} {value} is out of range")))
}
