//! Products on Postgres: a product, its batches and their allocations in
//! three tables, loaded in one query and saved as a difference.
//!
//! # Saving: a difference, not delete + insert
//!
//! APwP's allocations are never archived: a product's rows grow with every
//! order. Rewriting them all on each save would make each allocation cost
//! as much as the product's whole history, in writes (index updates, dead
//! rows to vacuum). So `update` writes what changed: after its version
//! check, it reads the stored rows (one query, as `get` does) and compares;
//! an allocation then inserts one row, a shrinking batch deletes the lines
//! it gave back and updates its quantity. The read is cheap next to the
//! writes it saves, and it is exact: the version check locked the product's
//! row, every save takes that lock first, so what is stored is the product
//! at the version this unit of work loaded.
//!
//! Both lists keep their order (`position`): allocation lines are compared
//! as a prefix, which covers what the domain does (append a line, give back
//! the most recent ones); anything else rewrites that batch's lines from the
//! first difference on.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use eda_core::sqlx::postgres::PgDatabaseError;
use eda_core::sqlx::{self, PgConnection};
use eda_core::{Find, Repository, RepositoryError, repository};

use crate::adapters::rows::{self, encode, load_product_where};
use crate::domain::model::{Batch, Product};
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

/// What a save writes, as columns for `UNNEST`: one statement per kind of
/// change, none when there is nothing of that kind.
#[derive(Debug, Default, PartialEq)]
struct Changes {
    removed_batches: Vec<String>,
    /// Per batch, how many of its stored lines stay (a prefix); the others
    /// are deleted.
    truncated: Truncations,
    updated_batches: BatchRows,
    inserted_batches: BatchRows,
    inserted_allocations: AllocationRows,
}

#[derive(Debug, Default, PartialEq)]
struct Truncations {
    batchref: Vec<String>,
    keep: Vec<i32>,
}

#[derive(Debug, Default, PartialEq)]
struct BatchRows {
    reference: Vec<String>,
    position: Vec<i32>,
    purchased_quantity: Vec<i64>,
    eta: Vec<Option<NaiveDate>>,
}

impl BatchRows {
    fn push(&mut self, batch: &Batch, position: i32) {
        self.reference.push(batch.reference.clone());
        self.position.push(position);
        self.purchased_quantity
            .push(i64::from(batch.purchased_quantity()));
        self.eta.push(batch.eta);
    }
}

#[derive(Debug, Default, PartialEq)]
struct AllocationRows {
    batchref: Vec<String>,
    position: Vec<i32>,
    orderid: Vec<String>,
    sku: Vec<String>,
    qty: Vec<i64>,
}

/// The difference between the stored batches and the product's.
fn changes(stored: &[Batch], product: &Product) -> Result<Changes, RepositoryError> {
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
                c.inserted_batches.push(batch, position);
                0
            }
            Some(&(j, old)) => {
                if j != i
                    || old.purchased_quantity() != batch.purchased_quantity()
                    || old.eta != batch.eta
                {
                    c.updated_batches.push(batch, position);
                }
                let kept = old
                    .allocations()
                    .iter()
                    .zip(batch.allocations())
                    .take_while(|(a, b)| a == b)
                    .count();
                if kept < old.allocations().len() {
                    c.truncated.batchref.push(batch.reference.clone());
                    c.truncated.keep.push(encode(kept, "allocation position")?);
                }
                kept
            }
        };
        for (k, line) in batch.allocations().iter().enumerate().skip(kept) {
            let rows = &mut c.inserted_allocations;
            rows.batchref.push(batch.reference.clone());
            rows.position.push(encode(k, "allocation position")?);
            rows.orderid.push(line.orderid.clone());
            rows.sku.push(line.sku.clone());
            rows.qty.push(i64::from(line.qty));
        }
    }
    let current: HashSet<&str> = product
        .batches
        .iter()
        .map(|b| b.reference.as_str())
        .collect();
    c.removed_batches = stored
        .iter()
        .filter(|b| !current.contains(b.reference.as_str()))
        .map(|b| b.reference.clone())
        .collect();
    Ok(c)
}

/// Applies the changes, deletions first (a line's position can be reused
/// by a new line).
async fn write(
    conn: &mut PgConnection,
    sku: &str,
    changes: &Changes,
) -> Result<(), RepositoryError> {
    if !changes.removed_batches.is_empty() {
        sqlx::query("DELETE FROM batches WHERE sku = $1 AND reference = ANY($2)")
            .bind(sku)
            .bind(&changes.removed_batches)
            .execute(&mut *conn)
            .await?;
    }
    let t = &changes.truncated;
    if !t.batchref.is_empty() {
        sqlx::query(
            "DELETE FROM allocations a \
             USING UNNEST($1::text[], $2::int4[]) AS t(batchref, keep) \
             WHERE a.batchref = t.batchref AND a.position >= t.keep",
        )
        .bind(&t.batchref)
        .bind(&t.keep)
        .execute(&mut *conn)
        .await?;
    }
    let u = &changes.updated_batches;
    if !u.reference.is_empty() {
        sqlx::query(
            "UPDATE batches b \
             SET position = t.position, purchased_quantity = t.qty, eta = t.eta \
             FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::date[]) AS t(reference, position, qty, eta) \
             WHERE b.sku = $1 AND b.reference = t.reference",
        )
        .bind(sku)
        .bind(&u.reference)
        .bind(&u.position)
        .bind(&u.purchased_quantity)
        .bind(&u.eta)
        .execute(&mut *conn)
        .await?;
    }
    let b = &changes.inserted_batches;
    if !b.reference.is_empty() {
        sqlx::query(
            "INSERT INTO batches (sku, reference, position, purchased_quantity, eta) \
             SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::date[])",
        )
        .bind(sku)
        .bind(&b.reference)
        .bind(&b.position)
        .bind(&b.purchased_quantity)
        .bind(&b.eta)
        .execute(&mut *conn)
        .await
        .map_err(batch_insert_error)?;
    }
    let a = &changes.inserted_allocations;
    if !a.batchref.is_empty() {
        sqlx::query(
            "INSERT INTO allocations (batchref, position, orderid, sku, qty) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[])",
        )
        .bind(&a.batchref)
        .bind(&a.position)
        .bind(&a.orderid)
        .bind(&a.sku)
        .bind(&a.qty)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::OrderLine;

    fn product(batches: Vec<Batch>) -> Product {
        Product::new("RUG", batches)
    }

    fn line(orderid: &str, qty: u32) -> OrderLine {
        OrderLine::new(orderid, "RUG", qty)
    }

    #[test]
    fn a_new_product_inserts_everything() {
        let p = product(vec![
            Batch::restore("b1", "RUG", 10, None, vec![line("o1", 2), line("o2", 3)]),
            Batch::new("b2", "RUG", 5, NaiveDate::from_ymd_opt(2024, 3, 1)),
        ]);
        let c = changes(&[], &p).unwrap();
        assert_eq!(c.inserted_batches.reference, ["b1", "b2"]);
        assert_eq!(c.inserted_batches.position, [0, 1]);
        assert_eq!(c.inserted_allocations.batchref, ["b1", "b1"]);
        assert_eq!(c.inserted_allocations.position, [0, 1]);
        assert_eq!(c.inserted_allocations.orderid, ["o1", "o2"]);
        assert!(c.updated_batches.reference.is_empty());
        assert!(c.truncated.batchref.is_empty());
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
        assert_eq!(
            c,
            Changes {
                inserted_allocations: AllocationRows {
                    batchref: vec!["b1".into()],
                    position: vec![1],
                    orderid: vec!["o2".into()],
                    sku: vec!["RUG".into()],
                    qty: vec![3],
                },
                ..Changes::default()
            }
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
        assert_eq!(c.updated_batches.reference, ["b1"]);
        assert_eq!(c.updated_batches.purchased_quantity, [5]);
        assert_eq!(
            c.truncated,
            Truncations {
                batchref: vec!["b1".into()],
                keep: vec![1],
            }
        );
        assert!(c.inserted_allocations.batchref.is_empty());
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
        assert_eq!(c.truncated.keep, [1]);
        assert_eq!(c.inserted_allocations.orderid, ["o3"]);
        assert_eq!(c.inserted_allocations.position, [1]);
        assert!(c.updated_batches.reference.is_empty());
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
        assert_eq!(c.updated_batches.reference, ["b2"], "moved to position 0");
        assert_eq!(c.updated_batches.position, [0]);
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
