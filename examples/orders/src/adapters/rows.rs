//! The `orders` table, on Postgres and on SQLite alike: one row per order,
//! its lines as JSON text (an order is read and written whole, and nothing
//! queries a line on its own).
//!
//! The statements are the same SQL on both databases (`$N` placeholders,
//! which sqlx binds by number on SQLite as on Postgres), so the whole
//! repository is written once, generic over the database ([`Orders`]);
//! each database module registers it for its connection type (eda
//! registers repositories as concrete types).

use std::marker::PhantomData;

use eda_core::adapters::sql::RowExt;
use eda_core::sqlx::query::Query;
use eda_core::sqlx::{
    self, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type,
};
use eda_core::{BoxError, RepositoryError};
use serde::{Deserialize, Serialize};

use crate::domain::model::{Line, Order, Status};

/// The order with this id (`$1`).
const SELECT: &str = "SELECT status, reason, lines, version FROM orders WHERE orderid = $1";

/// A new order: the parameters of [`OrderRow::bind`]. An order that
/// exists already fails on the primary key (`AlreadyExists`), and the
/// command is run again (and finds it).
const INSERT: &str =
    "INSERT INTO orders (orderid, status, reason, lines, version) VALUES ($1, $2, $3, $4, $5)";

/// Saves an order: the parameters of [`OrderRow::bind`], then the version
/// it was loaded at (`$6`); no row changes, and none is returned, when
/// someone saved it since. (`RETURNING` rather than the count of rows
/// changed, which sqlx gives per database, not through `Database`.)
const UPDATE: &str = "UPDATE orders SET status = $2, reason = $3, lines = $4, version = $5 \
     WHERE orderid = $1 AND version = $6 RETURNING version";

/// A line as stored in the `lines` column. Its own type, so that renaming
/// a field of the domain's [`Line`] cannot change what is stored.
#[derive(Serialize, Deserialize)]
struct StoredLine {
    sku: String,
    qty: u32,
    batchref: Option<String>,
}

/// The values of a row of `orders`, as written.
struct OrderRow<'a> {
    orderid: &'a str,
    status: &'static str,
    reason: Option<&'a str>,
    lines: String,
    version: i64,
}

impl<'a> OrderRow<'a> {
    /// The row of an order; refused when the table cannot hold its version.
    fn new(order: &'a Order) -> Result<Self, RepositoryError> {
        let lines: Vec<StoredLine> = order
            .lines()
            .iter()
            .map(|l| StoredLine {
                sku: l.sku.clone(),
                qty: l.qty,
                batchref: l.batchref.clone(),
            })
            .collect();
        Ok(OrderRow {
            orderid: &order.orderid,
            status: order.status().as_str(),
            reason: order.reason(),
            lines: serde_json::to_string(&lines).map_err(RepositoryError::database)?,
            version: version(order.version)?,
        })
    }

    /// Binds `$1` to `$5` of [`INSERT`] and [`UPDATE`]: orderid, status,
    /// reason, lines, version.
    fn bind<'q, DB>(
        &'q self,
        query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    ) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
    where
        DB: Database,
        &'q str: Encode<'q, DB> + Type<DB>,
        Option<&'q str>: Encode<'q, DB> + Type<DB>,
        i64: Encode<'q, DB> + Type<DB>,
    {
        query
            .bind(self.orderid)
            .bind(self.status)
            .bind(self.reason)
            .bind(self.lines.as_str())
            .bind(self.version)
    }
}

/// The statements on the `orders` table, for the repository of a database
/// `DB` (Postgres or SQLite: sqlx's `Database` with the column types the
/// table uses).
pub(crate) struct Orders<DB>(PhantomData<DB>);

impl<DB> Orders<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
{
    /// `Repository::get`: the order with this id, if there is one.
    pub(crate) async fn get(
        conn: &mut DB::Connection,
        orderid: &str,
    ) -> Result<Option<Order>, RepositoryError> {
        let row = sqlx::query::<DB>(SELECT)
            .bind(orderid)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|row| order(orderid, &row)).transpose()
    }

    /// `Repository::add`: inserts a new order.
    pub(crate) async fn add(
        conn: &mut DB::Connection,
        order: &Order,
    ) -> Result<(), RepositoryError> {
        let row = OrderRow::new(order)?;
        row.bind(sqlx::query::<DB>(INSERT))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// `Repository::update`: saves the order if it is still at
    /// `expected_version`; `false` (nothing written) if not.
    pub(crate) async fn update(
        conn: &mut DB::Connection,
        order: &Order,
        expected_version: u64,
    ) -> Result<bool, RepositoryError> {
        let row = OrderRow::new(order)?;
        let saved = row
            .bind(sqlx::query::<DB>(UPDATE))
            .bind(version(expected_version)?)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(saved.is_some())
    }
}

/// A version as the `version` column holds it (64-bit signed on both).
fn version(version: u64) -> Result<i64, RepositoryError> {
    i64::try_from(version)
        .map_err(|_| RepositoryError::database(format!("version {version} is out of range")))
}

/// The order `orderid` in a row of [`SELECT`].
fn order<'r, R>(orderid: &str, row: &'r R) -> Result<Order, RepositoryError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = row.decode("orders", "status")?;
    let status: Status = parsed(status.parse(), "status")?;
    let reason: Option<String> = row.decode("orders", "reason")?;
    let lines: String = row.decode("orders", "lines")?;
    let lines: Vec<StoredLine> = parsed(serde_json::from_str(&lines), "lines")?;
    let version: i64 = row.decode("orders", "version")?;
    let version = parsed(u64::try_from(version), "version")?;
    let lines = lines
        .into_iter()
        .map(|l| Line {
            sku: l.sku,
            qty: l.qty,
            batchref: l.batchref,
        })
        .collect();
    Ok(Order::restore(orderid, status, reason, lines, version))
}

/// A column's value that does not convert into the model's is a decoding
/// error naming it.
fn parsed<T, E: Into<BoxError>>(value: Result<T, E>, column: &str) -> Result<T, RepositoryError> {
    value.map_err(|e| RepositoryError::decode("orders", column, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_past_what_the_column_holds_is_refused() {
        assert_eq!(version(7).unwrap(), 7);
        let e = version(u64::MAX).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn the_lines_are_stored_as_json() {
        let mut order = Order::place("o1", vec![contracts::OrderLine::new("LAMP", 2)]).unwrap();
        order.record_allocation("LAMP", "b1");
        let row = OrderRow::new(&order).unwrap();
        assert_eq!(row.lines, r#"[{"sku":"LAMP","qty":2,"batchref":"b1"}]"#);
        assert_eq!(row.status, "confirmed");
    }
}
