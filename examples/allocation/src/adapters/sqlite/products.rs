//! Products on SQLite: a product, its batches and their allocations in
//! three tables, loaded in one query and saved as a difference.
//!
//! # Saving: a difference, as on Postgres
//!
//! A product's allocation lines are never archived, so rewriting them all
//! on each save would make each allocation cost as much as the product's
//! history. `update` writes what changed instead: after its version check,
//! it reads the stored rows (one query, as `get` does) and compares; an
//! allocation then inserts one row, a shrinking batch deletes the lines it
//! gave back and updates its quantity. What is stored is the product at the
//! version this unit of work loaded: the version check says so, and the
//! unit of work has held SQLite's write lock since it began.
//!
//! The writes are one statement per row changed. Postgres binds arrays to
//! save a round trip per statement; SQLite has no arrays and no round
//! trips (it runs in the process), and a save changes one or two rows.
//!
//! Both lists keep their order (`position`): allocation lines are compared
//! as a prefix, which covers what the domain does (append a line, give back
//! the most recent ones); anything else rewrites that batch's lines from the
//! first difference on.

use std::collections::{HashMap, HashSet};

use eda_core::sqlx::{self, SqliteConnection};
use eda_core::{Find, Repository, RepositoryError, repository};

use crate::adapters::rows::{self, encode, load_product_where};
use crate::domain::model::{Batch, OrderLine, Product};
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

/// What a save writes, row by row: the stored batches to delete (with
/// their lines), the lines to delete, the batches to update or insert and
/// the lines to insert.
#[derive(Debug, Default, PartialEq)]
struct Changes<'a> {
    removed_batches: Vec<&'a str>,
    /// Per batch, how many of its stored lines stay (a prefix); the others
    /// are deleted.
    truncated: Vec<(&'a str, i64)>,
    /// With their positions.
    updated_batches: Vec<(i64, &'a Batch)>,
    inserted_batches: Vec<(i64, &'a Batch)>,
    /// Batch reference, position, line.
    inserted_allocations: Vec<(&'a str, i64, &'a OrderLine)>,
}

/// The difference between the stored batches and the product's.
fn changes<'a>(stored: &'a [Batch], product: &'a Product) -> Result<Changes<'a>, RepositoryError> {
    let stored_at: HashMap<&str, (usize, &Batch)> = stored
        .iter()
        .enumerate()
        .map(|(i, b)| (b.reference.as_str(), (i, b)))
        .collect();
    let mut c = Changes::default();
    for (i, batch) in product.batches.iter().enumerate() {
        if batch.sku != product.sku {
            return Err(RepositoryError::database(format!(
                "batch {} is of {}, not of the product {} that holds it",
                batch.reference, batch.sku, product.sku
            )));
        }
        let position = encode(i, "batch position")?;
        let kept = match stored_at.get(batch.reference.as_str()) {
            None => {
                c.inserted_batches.push((position, batch));
                0
            }
            Some(&(j, old)) => {
                if j != i
                    || old.purchased_quantity() != batch.purchased_quantity()
                    || old.eta != batch.eta
                {
                    c.updated_batches.push((position, batch));
                }
                let kept = old
                    .allocations()
                    .iter()
                    .zip(batch.allocations())
                    .take_while(|(a, b)| a == b)
                    .count();
                if kept < old.allocations().len() {
                    c.truncated
                        .push((&batch.reference, encode(kept, "allocation position")?));
                }
                kept
            }
        };
        for (k, line) in batch.allocations().iter().enumerate().skip(kept) {
            let position = encode(k, "allocation position")?;
            c.inserted_allocations
                .push((&batch.reference, position, line));
        }
    }
    let current: HashSet<&str> = product
        .batches
        .iter()
        .map(|b| b.reference.as_str())
        .collect();
    c.removed_batches = stored
        .iter()
        .map(|b| b.reference.as_str())
        .filter(|r| !current.contains(r))
        .collect();
    Ok(c)
}

/// Applies the changes, deletions first (a line's position can be reused
/// by a new line).
async fn write(
    conn: &mut SqliteConnection,
    sku: &str,
    changes: &Changes<'_>,
) -> Result<(), RepositoryError> {
    for reference in &changes.removed_batches {
        // Its lines go with it (`ON DELETE CASCADE`).
        sqlx::query("DELETE FROM batches WHERE sku = ?1 AND reference = ?2")
            .bind(sku)
            .bind(reference)
            .execute(&mut *conn)
            .await?;
    }
    for (batchref, keep) in &changes.truncated {
        sqlx::query("DELETE FROM allocations WHERE batchref = ?1 AND position >= ?2")
            .bind(batchref)
            .bind(keep)
            .execute(&mut *conn)
            .await?;
    }
    for (position, batch) in &changes.updated_batches {
        sqlx::query(
            "UPDATE batches SET position = ?3, purchased_quantity = ?4, eta = ?5 \
             WHERE sku = ?1 AND reference = ?2",
        )
        .bind(sku)
        .bind(&batch.reference)
        .bind(position)
        .bind(i64::from(batch.purchased_quantity()))
        .bind(batch.eta)
        .execute(&mut *conn)
        .await?;
    }
    for (position, batch) in &changes.inserted_batches {
        sqlx::query(
            "INSERT INTO batches (sku, reference, position, purchased_quantity, eta) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(sku)
        .bind(&batch.reference)
        .bind(position)
        .bind(i64::from(batch.purchased_quantity()))
        .bind(batch.eta)
        .execute(&mut *conn)
        .await
        .map_err(|e| batch_insert_error(e, &batch.reference))?;
    }
    for (batchref, position, line) in &changes.inserted_allocations {
        sqlx::query(
            "INSERT INTO allocations (batchref, position, orderid, sku, qty) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(batchref)
        .bind(position)
        .bind(&line.orderid)
        .bind(&line.sku)
        .bind(i64::from(line.qty))
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

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn product(batches: Vec<Batch>) -> Product {
        Product::new("RUG", batches)
    }

    fn line(orderid: &str, qty: u32) -> OrderLine {
        OrderLine::new(orderid, "RUG", qty)
    }

    /// (reference, position) of batch rows.
    fn batch_rows(rows: &[(i64, &Batch)]) -> Vec<(String, i64)> {
        rows.iter()
            .map(|(p, b)| (b.reference.clone(), *p))
            .collect()
    }

    /// (batch, position, order) of line rows.
    fn line_rows(c: &Changes<'_>) -> Vec<(String, i64, String)> {
        c.inserted_allocations
            .iter()
            .map(|(b, p, l)| (b.to_string(), *p, l.orderid.clone()))
            .collect()
    }

    fn rows(v: &[(&str, i64, &str)]) -> Vec<(String, i64, String)> {
        v.iter()
            .map(|(b, p, o)| (b.to_string(), *p, o.to_string()))
            .collect()
    }

    #[test]
    fn a_new_product_inserts_everything() {
        let p = product(vec![
            Batch::restore("b1", "RUG", 10, None, vec![line("o1", 2), line("o2", 3)]),
            Batch::new("b2", "RUG", 5, NaiveDate::from_ymd_opt(2024, 3, 1)),
        ]);
        let c = changes(&[], &p).unwrap();
        assert_eq!(
            batch_rows(&c.inserted_batches),
            [("b1".to_owned(), 0), ("b2".to_owned(), 1)]
        );
        assert_eq!(line_rows(&c), rows(&[("b1", 0, "o1"), ("b1", 1, "o2")]));
        assert!(c.updated_batches.is_empty());
        assert!(c.truncated.is_empty());
        assert!(c.removed_batches.is_empty());
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let p = product(vec![Batch::restore(
            "b1",
            "RUG",
            10,
            None,
            vec![line("o1", 2)],
        )]);
        assert_eq!(changes(&p.batches, &p).unwrap(), Changes::default());
    }

    #[test]
    fn an_allocation_inserts_one_line() {
        let stored = vec![Batch::restore("b1", "RUG", 10, None, vec![line("o1", 2)])];
        let mut p = product(stored.clone());
        assert_eq!(p.allocate(line("o2", 3)).as_deref(), Some("b1"));
        let c = changes(&stored, &p).unwrap();
        assert_eq!(line_rows(&c), rows(&[("b1", 1, "o2")]));
        assert_eq!(
            c,
            Changes {
                inserted_allocations: c.inserted_allocations.clone(),
                ..Changes::default()
            },
            "and nothing else"
        );
    }

    #[test]
    fn a_shrinking_batch_updates_its_quantity_and_deletes_the_lines_it_gave_back() {
        let stored = vec![Batch::restore(
            "b1",
            "RUG",
            10,
            None,
            vec![line("o1", 4), line("o2", 3), line("o3", 3)],
        )];
        let mut p = product(stored.clone());
        p.change_batch_quantity("b1", 5).unwrap();
        let c = changes(&stored, &p).unwrap();
        assert_eq!(batch_rows(&c.updated_batches), [("b1".to_owned(), 0)]);
        assert_eq!(c.updated_batches[0].1.purchased_quantity(), 5);
        assert_eq!(c.truncated, [("b1", 1)]);
        assert!(c.inserted_allocations.is_empty());
    }

    #[test]
    fn a_line_removed_in_the_middle_rewrites_the_lines_after_it() {
        let stored = vec![Batch::restore(
            "b1",
            "RUG",
            10,
            None,
            vec![line("o1", 1), line("o2", 1), line("o3", 1)],
        )];
        let mut p = product(stored.clone());
        p.batches[0].deallocate(&line("o2", 1));
        let c = changes(&stored, &p).unwrap();
        assert_eq!(c.truncated, [("b1", 1)]);
        assert_eq!(line_rows(&c), rows(&[("b1", 1, "o3")]));
        assert!(c.updated_batches.is_empty());
    }

    #[test]
    fn a_batch_gone_from_the_product_is_deleted() {
        let stored = vec![
            Batch::new("b1", "RUG", 10, None),
            Batch::new("b2", "RUG", 10, None),
        ];
        let p = product(vec![Batch::new("b2", "RUG", 10, None)]);
        let c = changes(&stored, &p).unwrap();
        assert_eq!(c.removed_batches, ["b1"]);
        assert_eq!(
            batch_rows(&c.updated_batches),
            [("b2".to_owned(), 0)],
            "moved to position 0"
        );
    }

    #[test]
    fn a_batch_of_another_sku_is_refused() {
        let p = product(vec![Batch::new("b1", "LAMP", 10, None)]);
        let e = changes(&[], &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "database error: batch b1 is of LAMP, not of the product RUG that holds it"
        );
    }
}
