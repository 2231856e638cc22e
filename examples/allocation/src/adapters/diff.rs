//! Saving a product as a difference, on Postgres and on SQLite alike:
//! [`changes`] compares the product with the batches stored for it and
//! says which rows of `batches` and `allocations` to delete, update and
//! insert; each database writes them in its own SQL.
//!
//! # A difference, not delete + insert
//!
//! APwP's allocations are never archived: a product's rows grow with every
//! order. Rewriting them all on each save would make each allocation cost
//! as much as the product's whole history, in writes (index updates, dead
//! rows to vacuum). So a save writes what changed: an allocation inserts
//! one row, a shrinking batch deletes the lines it gave back and updates
//! its quantity.
//!
//! Both lists keep their order (`position`): allocation lines are compared
//! as a prefix, which covers what the domain does (append a line, give back
//! the most recent ones); anything else rewrites that batch's lines from the
//! first difference on.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use eda_core::RepositoryError;

use crate::adapters::rows::encode;
use crate::domain::model::{Batch, Product};

/// What a save writes, as the rows of the tables, in the order the product
/// holds them. `P` is the type of the `position` columns: `INTEGER` is 32
/// bits on Postgres, 64 on SQLite.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Changes<'a, P> {
    /// The stored batches the product no longer holds (their lines go with
    /// them, `ON DELETE CASCADE`).
    pub(crate) removed_batches: Vec<&'a str>,
    /// Per batch, how many of its stored lines stay (a prefix); the others
    /// are deleted.
    pub(crate) truncated: Vec<Truncation<'a, P>>,
    pub(crate) updated_batches: Vec<BatchRow<'a, P>>,
    pub(crate) inserted_batches: Vec<BatchRow<'a, P>>,
    pub(crate) inserted_allocations: Vec<AllocationRow<'a, P>>,
}

/// The lines of `batchref` from position `keep` on, to delete.
#[derive(Debug, PartialEq)]
pub(crate) struct Truncation<'a, P> {
    pub(crate) batchref: &'a str,
    pub(crate) keep: P,
}

/// A row of `batches` (whose `sku` is the product's).
#[derive(Debug, PartialEq)]
pub(crate) struct BatchRow<'a, P> {
    pub(crate) reference: &'a str,
    pub(crate) position: P,
    pub(crate) purchased_quantity: i64,
    pub(crate) eta: Option<NaiveDate>,
}

impl<'a, P> BatchRow<'a, P> {
    fn new(batch: &'a Batch, position: P) -> Self {
        BatchRow {
            reference: &batch.reference,
            position,
            purchased_quantity: i64::from(batch.purchased_quantity()),
            eta: batch.eta,
        }
    }
}

/// A row of `allocations`.
#[derive(Debug, PartialEq)]
pub(crate) struct AllocationRow<'a, P> {
    pub(crate) batchref: &'a str,
    pub(crate) position: P,
    pub(crate) orderid: &'a str,
    pub(crate) sku: &'a str,
    pub(crate) qty: i64,
}

/// The difference between the stored batches and the product's: empty for
/// a product that has not changed, everything for a new one
/// (`stored` empty).
pub(crate) fn changes<'a, P>(
    stored: &'a [Batch],
    product: &'a Product,
) -> Result<Changes<'a, P>, RepositoryError>
where
    P: TryFrom<usize>,
{
    let stored_at: HashMap<&str, (usize, &Batch)> = stored
        .iter()
        .enumerate()
        .map(|(i, b)| (b.reference.as_str(), (i, b)))
        .collect();
    let mut c = Changes {
        removed_batches: Vec::new(),
        truncated: Vec::new(),
        updated_batches: Vec::new(),
        inserted_batches: Vec::new(),
        inserted_allocations: Vec::new(),
    };
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
                c.inserted_batches.push(BatchRow::new(batch, position));
                0
            }
            Some(&(j, old)) => {
                if j != i
                    || old.purchased_quantity() != batch.purchased_quantity()
                    || old.eta != batch.eta
                {
                    c.updated_batches.push(BatchRow::new(batch, position));
                }
                let kept = old
                    .allocations()
                    .iter()
                    .zip(batch.allocations())
                    .take_while(|(a, b)| a == b)
                    .count();
                if kept < old.allocations().len() {
                    c.truncated.push(Truncation {
                        batchref: &batch.reference,
                        keep: encode(kept, "allocation position")?,
                    });
                }
                kept
            }
        };
        for (k, line) in batch.allocations().iter().enumerate().skip(kept) {
            c.inserted_allocations.push(AllocationRow {
                batchref: &batch.reference,
                position: encode(k, "allocation position")?,
                orderid: &line.orderid,
                sku: &line.sku,
                qty: i64::from(line.qty),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::OrderLine;

    /// The changes with Postgres's positions (SQLite's differ only in their
    /// type).
    fn diff<'a>(stored: &'a [Batch], product: &'a Product) -> Changes<'a, i32> {
        changes(stored, product).unwrap()
    }

    fn product(batches: Vec<Batch>) -> Product {
        Product::new("RUG", batches)
    }

    fn line(orderid: &str, qty: u32) -> OrderLine {
        OrderLine::new(orderid, "RUG", qty)
    }

    fn batch_row(
        reference: &str,
        position: i32,
        purchased_quantity: i64,
        eta: Option<NaiveDate>,
    ) -> BatchRow<'_, i32> {
        BatchRow {
            reference,
            position,
            purchased_quantity,
            eta,
        }
    }

    fn line_row<'a>(
        batchref: &'a str,
        position: i32,
        orderid: &'a str,
        qty: i64,
    ) -> AllocationRow<'a, i32> {
        AllocationRow {
            batchref,
            position,
            orderid,
            sku: "RUG",
            qty,
        }
    }

    #[test]
    fn a_new_product_inserts_everything() {
        let eta = NaiveDate::from_ymd_opt(2024, 3, 1);
        let p = product(vec![
            Batch::restore("b1", "RUG", 10, None, vec![line("o1", 2), line("o2", 3)]),
            Batch::new("b2", "RUG", 5, eta),
        ]);
        assert_eq!(
            diff(&[], &p),
            Changes {
                inserted_batches: vec![batch_row("b1", 0, 10, None), batch_row("b2", 1, 5, eta)],
                inserted_allocations: vec![line_row("b1", 0, "o1", 2), line_row("b1", 1, "o2", 3)],
                ..Changes::default()
            }
        );
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
        assert_eq!(diff(&p.batches, &p), Changes::default());
    }

    #[test]
    fn an_allocation_inserts_one_line() {
        let stored = vec![Batch::restore("b1", "RUG", 10, None, vec![line("o1", 2)])];
        let mut p = product(stored.clone());
        assert_eq!(p.allocate(line("o2", 3)).as_deref(), Some("b1"));
        assert_eq!(
            diff(&stored, &p),
            Changes {
                inserted_allocations: vec![line_row("b1", 1, "o2", 3)],
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
        assert_eq!(
            diff(&stored, &p),
            Changes {
                truncated: vec![Truncation {
                    batchref: "b1",
                    keep: 1,
                }],
                updated_batches: vec![batch_row("b1", 0, 5, None)],
                ..Changes::default()
            }
        );
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
        assert_eq!(
            diff(&stored, &p),
            Changes {
                truncated: vec![Truncation {
                    batchref: "b1",
                    keep: 1,
                }],
                inserted_allocations: vec![line_row("b1", 1, "o3", 1)],
                ..Changes::default()
            }
        );
    }

    #[test]
    fn a_batch_gone_from_the_product_is_deleted() {
        let stored = vec![
            Batch::new("b1", "RUG", 10, None),
            Batch::new("b2", "RUG", 10, None),
        ];
        let p = product(vec![Batch::new("b2", "RUG", 10, None)]);
        assert_eq!(
            diff(&stored, &p),
            Changes {
                removed_batches: vec!["b1"],
                updated_batches: vec![batch_row("b2", 0, 10, None)],
                ..Changes::default()
            },
            "b2 moved to position 0"
        );
    }

    /// Each database's `position` holds what it holds (`P`); a larger one
    /// is refused before anything is written.
    #[test]
    fn a_position_the_column_cannot_hold_is_refused() {
        let lines = (0..=256).map(|i| line(&format!("o{i}"), 1)).collect();
        let p = product(vec![Batch::restore("b1", "RUG", 1000, None, lines)]);
        assert!(changes::<i32>(&[], &p).is_ok());
        assert!(changes::<i64>(&[], &p).is_ok());
        let e = changes::<u8>(&[], &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "database error: allocation position 256 is out of range"
        );
    }

    #[test]
    fn a_batch_of_another_sku_is_refused() {
        let p = product(vec![Batch::new("b1", "LAMP", 10, None)]);
        let e = changes::<i32>(&[], &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "database error: batch b1 is of LAMP, not of the product RUG that holds it"
        );
    }
}
