//! The model: order lines are allocated to batches of stock; a product (the
//! aggregate) holds the batches of one SKU and chooses among them.

use std::hash::{Hash, Hasher};

use chrono::NaiveDate;
use eda_core::{Aggregate, Events};

use crate::domain::events::{Allocated, Deallocated, OutOfStock, Released};

/// A line of a customer's order: a quantity of one product. A value object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderLine {
    /// The order it belongs to.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
}

impl OrderLine {
    /// An order line.
    pub fn new(orderid: impl Into<String>, sku: impl Into<String>, qty: u32) -> Self {
        OrderLine {
            orderid: orderid.into(),
            sku: sku.into(),
            qty,
        }
    }
}

/// A batch of stock of one product, in the warehouse (`eta: None`) or on its
/// way. An entity: two batches are the same batch when their references are.
///
/// The purchased quantity and the allocations change only through the
/// methods, which keep a batch from being allocated beyond its stock.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The batch's reference, unique among all batches.
    pub reference: String,
    /// The product.
    pub sku: String,
    /// When it arrives; `None`: it is in the warehouse.
    pub eta: Option<NaiveDate>,
    purchased_quantity: u32,
    /// A set, kept in allocation order so that `deallocate_one` is
    /// predictable.
    allocations: Vec<OrderLine>,
}

impl Batch {
    /// A batch with nothing allocated.
    pub fn new(
        reference: impl Into<String>,
        sku: impl Into<String>,
        qty: u32,
        eta: Option<NaiveDate>,
    ) -> Self {
        Batch {
            reference: reference.into(),
            sku: sku.into(),
            eta,
            purchased_quantity: qty,
            allocations: Vec::new(),
        }
    }

    /// A batch as it was saved, with its allocations in the order they were
    /// made: for repositories, which rebuild what the methods built. It
    /// trusts its input (a stored batch always held what it allocated).
    pub fn restore(
        reference: impl Into<String>,
        sku: impl Into<String>,
        purchased_quantity: u32,
        eta: Option<NaiveDate>,
        allocations: Vec<OrderLine>,
    ) -> Self {
        Batch {
            reference: reference.into(),
            sku: sku.into(),
            eta,
            purchased_quantity,
            allocations,
        }
    }

    /// How many units were purchased.
    pub fn purchased_quantity(&self) -> u32 {
        self.purchased_quantity
    }

    /// The lines allocated to it, oldest first.
    pub fn allocations(&self) -> &[OrderLine] {
        &self.allocations
    }

    /// How many units are allocated.
    pub fn allocated_quantity(&self) -> u64 {
        self.allocations.iter().map(|l| u64::from(l.qty)).sum()
    }

    /// How many units are left; negative when the purchased quantity was
    /// lowered below what is allocated.
    pub fn available_quantity(&self) -> i64 {
        i64::from(self.purchased_quantity) - self.allocated_quantity() as i64
    }

    /// Whether the line is of this product and fits in what is left.
    pub fn can_allocate(&self, line: &OrderLine) -> bool {
        self.sku == line.sku && self.available_quantity() >= i64::from(line.qty)
    }

    /// Allocates the line if it can (see [`can_allocate`](Self::can_allocate));
    /// allocating a line twice allocates it once.
    pub fn allocate(&mut self, line: OrderLine) {
        if self.can_allocate(&line) && !self.allocations.contains(&line) {
            self.allocations.push(line);
        }
    }

    /// Removes the line's allocation; a line that is not allocated here is
    /// ignored.
    pub fn deallocate(&mut self, line: &OrderLine) {
        self.allocations.retain(|l| l != line);
    }

    /// Removes the most recent allocation and returns it: the earlier orders
    /// keep their stock.
    pub fn deallocate_one(&mut self) -> Option<OrderLine> {
        self.allocations.pop()
    }

    /// Whether a line of this order is allocated here.
    pub fn holds_order(&self, orderid: &str) -> bool {
        self.allocations.iter().any(|l| l.orderid == orderid)
    }

    /// Removes every allocation of this order and returns them, oldest
    /// first; the other lines keep their order.
    pub fn deallocate_order(&mut self, orderid: &str) -> Vec<OrderLine> {
        let (released, kept) = std::mem::take(&mut self.allocations)
            .into_iter()
            .partition(|l| l.orderid == orderid);
        self.allocations = kept;
        released
    }
}

impl PartialEq for Batch {
    fn eq(&self, other: &Self) -> bool {
        self.reference == other.reference
    }
}

impl Eq for Batch {}

impl Hash for Batch {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.reference.hash(state);
    }
}

/// The batches of one product: the aggregate that allocation works on, and
/// its consistency boundary.
#[derive(Debug, Clone, Aggregate)]
pub struct Product {
    /// The product's SKU, its identity.
    #[aggregate(id)]
    pub sku: String,
    /// Its batches, in the order they were added.
    pub batches: Vec<Batch>,
    /// Raised by every allocation; the unit of work checks it on save.
    #[aggregate(version)]
    pub version_number: u64,
    /// The events raised since it was loaded.
    pub events: Events,
}

/// A batch reference that the product does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown batch {0}")]
pub struct UnknownBatch(pub String);

impl Product {
    /// A product at version 0, with these batches.
    pub fn new(sku: impl Into<String>, batches: Vec<Batch>) -> Self {
        Product {
            sku: sku.into(),
            batches,
            version_number: 0,
            events: Events::new(),
        }
    }

    /// Allocates the line to the first batch that can take it, warehouse
    /// stock first, then by earliest arrival, and returns that batch's
    /// reference (raising [`Allocated`]). When none can, raises
    /// [`OutOfStock`] and returns `None`.
    pub fn allocate(&mut self, line: OrderLine) -> Option<String> {
        // `None < Some(_)`: warehouse batches first; `min_by_key` keeps the
        // first of equals, so ties go to the batch added first.
        let Some(batch) = self
            .batches
            .iter_mut()
            .filter(|b| b.can_allocate(&line))
            .min_by_key(|b| b.eta)
        else {
            self.events.raise(OutOfStock { sku: line.sku });
            return None;
        };
        let allocated = Allocated {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
            batchref: batch.reference.clone(),
        };
        batch.allocate(line);
        self.version_number += 1;
        let batchref = allocated.batchref.clone();
        self.events.raise(allocated);
        Some(batchref)
    }

    /// Whether any of its batches holds a line of this order.
    pub fn holds_order(&self, orderid: &str) -> bool {
        self.batches.iter().any(|b| b.holds_order(orderid))
    }

    /// Removes every allocation of a cancelled order from the batches (the
    /// stock comes back), raising [`Released`] for each line; the version
    /// goes up when something was removed. Not [`Deallocated`]: the lines
    /// are not to be allocated again. Returns how many lines were released.
    pub fn deallocate_order(&mut self, orderid: &str) -> usize {
        let mut released = 0;
        for batch in &mut self.batches {
            for line in batch.deallocate_order(orderid) {
                self.events.raise(Released {
                    orderid: line.orderid,
                    sku: line.sku,
                    qty: line.qty,
                    batchref: batch.reference.clone(),
                });
                released += 1;
            }
        }
        if released > 0 {
            self.version_number += 1;
        }
        released
    }

    /// Sets the purchased quantity of a batch, then deallocates its most
    /// recent lines until what is allocated fits, raising [`Deallocated`]
    /// for each (so that they are allocated again elsewhere).
    pub fn change_batch_quantity(&mut self, reference: &str, qty: u32) -> Result<(), UnknownBatch> {
        let batch = self
            .batches
            .iter_mut()
            .find(|b| b.reference == reference)
            .ok_or_else(|| UnknownBatch(reference.to_owned()))?;
        batch.purchased_quantity = qty;
        while batch.available_quantity() < 0 {
            let Some(line) = batch.deallocate_one() else {
                break;
            };
            self.events.raise(Deallocated {
                orderid: line.orderid,
                sku: line.sku,
                qty: line.qty,
                batchref: batch.reference.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Days, NaiveDate};

    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()
    }

    fn tomorrow() -> NaiveDate {
        today() + Days::new(1)
    }

    fn later() -> NaiveDate {
        today() + Days::new(10)
    }

    /// The APwP chapter 1 tests (`test_batches.py`).
    mod batch {
        use super::*;

        fn batch_and_line(sku: &str, batch_qty: u32, line_qty: u32) -> (Batch, OrderLine) {
            (
                Batch::new("batch-001", sku, batch_qty, Some(today())),
                OrderLine::new("order-123", sku, line_qty),
            )
        }

        #[test]
        fn allocating_to_a_batch_reduces_the_available_quantity() {
            let mut batch = Batch::new("batch-001", "SMALL-TABLE", 20, Some(today()));
            batch.allocate(OrderLine::new("order-ref", "SMALL-TABLE", 2));
            assert_eq!(batch.available_quantity(), 18);
            assert_eq!(batch.allocated_quantity(), 2);
        }

        #[test]
        fn can_allocate_if_available_greater_than_required() {
            let (large, small) = batch_and_line("ELEGANT-LAMP", 20, 2);
            assert!(large.can_allocate(&small));
        }

        #[test]
        fn cannot_allocate_if_available_smaller_than_required() {
            let (small, large) = batch_and_line("ELEGANT-LAMP", 2, 20);
            assert!(!small.can_allocate(&large));
        }

        #[test]
        fn can_allocate_if_available_equal_to_required() {
            let (batch, line) = batch_and_line("ELEGANT-LAMP", 2, 2);
            assert!(batch.can_allocate(&line));
        }

        #[test]
        fn cannot_allocate_if_skus_do_not_match() {
            let batch = Batch::new("batch-001", "UNCOMFORTABLE-CHAIR", 100, None);
            let line = OrderLine::new("order-123", "EXPENSIVE-TOASTER", 10);
            assert!(!batch.can_allocate(&line));
        }

        #[test]
        fn allocating_a_line_it_cannot_take_changes_nothing() {
            let (mut batch, line) = batch_and_line("ELEGANT-LAMP", 2, 20);
            batch.allocate(line);
            assert_eq!(batch.available_quantity(), 2);
            assert!(batch.allocations().is_empty());
        }

        #[test]
        fn allocation_is_idempotent() {
            let (mut batch, line) = batch_and_line("ANGULAR-DESK", 20, 2);
            batch.allocate(line.clone());
            batch.allocate(line);
            assert_eq!(batch.available_quantity(), 18);
        }

        #[test]
        fn deallocate() {
            let (mut batch, line) = batch_and_line("EXPENSIVE-FOOTSTOOL", 20, 2);
            batch.allocate(line.clone());
            batch.deallocate(&line);
            assert_eq!(batch.available_quantity(), 20);
        }

        #[test]
        fn can_only_deallocate_allocated_lines() {
            let (mut batch, unallocated_line) = batch_and_line("DECORATIVE-TRINKET", 20, 2);
            let allocated = OrderLine::new("order-456", "DECORATIVE-TRINKET", 5);
            batch.allocate(allocated);
            batch.deallocate(&unallocated_line);
            assert_eq!(batch.available_quantity(), 15);
        }

        #[test]
        fn deallocate_one_gives_back_the_most_recent_line() {
            let mut batch = Batch::new("b1", "RUG", 20, None);
            batch.allocate(OrderLine::new("o1", "RUG", 5));
            batch.allocate(OrderLine::new("o2", "RUG", 7));
            assert_eq!(batch.deallocate_one(), Some(OrderLine::new("o2", "RUG", 7)));
            assert_eq!(batch.available_quantity(), 15);
        }

        #[test]
        fn deallocate_order_removes_that_orders_lines_only() {
            let mut batch = Batch::new("b1", "RUG", 20, None);
            batch.allocate(OrderLine::new("o1", "RUG", 5));
            batch.allocate(OrderLine::new("o2", "RUG", 7));
            assert!(batch.holds_order("o1"));
            assert_eq!(
                batch.deallocate_order("o1"),
                [OrderLine::new("o1", "RUG", 5)]
            );
            assert!(!batch.holds_order("o1"));
            assert_eq!(batch.allocations(), [OrderLine::new("o2", "RUG", 7)]);
            assert_eq!(batch.available_quantity(), 13);
            assert_eq!(batch.deallocate_order("o1"), []);
        }

        #[test]
        fn batches_are_equal_by_reference() {
            let a = Batch::new("b1", "RUG", 20, None);
            let b = Batch::new("b1", "OTHER", 5, Some(today()));
            assert_eq!(a, b);
            assert_ne!(a, Batch::new("b2", "RUG", 20, None));
        }
    }

    /// The APwP product tests (`test_product.py`).
    mod product {
        use super::*;

        fn product(sku: &str, batches: Vec<Batch>) -> Product {
            Product::new(sku, batches)
        }

        fn batch<'a>(product: &'a Product, reference: &str) -> &'a Batch {
            product
                .batches
                .iter()
                .find(|b| b.reference == reference)
                .unwrap()
        }

        #[test]
        fn prefers_warehouse_batches_to_shipments() {
            let in_stock = Batch::new("in-stock-batch", "RETRO-CLOCK", 100, None);
            let shipment = Batch::new("shipment-batch", "RETRO-CLOCK", 100, Some(tomorrow()));
            // The shipment first, so that order of insertion cannot pass
            // the test.
            let mut p = product("RETRO-CLOCK", vec![shipment, in_stock]);
            p.allocate(OrderLine::new("oref", "RETRO-CLOCK", 10));
            assert_eq!(batch(&p, "in-stock-batch").available_quantity(), 90);
            assert_eq!(batch(&p, "shipment-batch").available_quantity(), 100);
        }

        #[test]
        fn prefers_earlier_batches() {
            let earliest = Batch::new("speedy-batch", "MINIMALIST-SPOON", 100, Some(today()));
            let medium = Batch::new("normal-batch", "MINIMALIST-SPOON", 100, Some(tomorrow()));
            let latest = Batch::new("slow-batch", "MINIMALIST-SPOON", 100, Some(later()));
            let mut p = product("MINIMALIST-SPOON", vec![latest, medium, earliest]);
            p.allocate(OrderLine::new("order1", "MINIMALIST-SPOON", 10));
            assert_eq!(batch(&p, "speedy-batch").available_quantity(), 90);
            assert_eq!(batch(&p, "normal-batch").available_quantity(), 100);
            assert_eq!(batch(&p, "slow-batch").available_quantity(), 100);
        }

        #[test]
        fn skips_batches_that_cannot_take_the_line() {
            let small = Batch::new("small-warehouse-batch", "LAMP", 5, None);
            let shipment = Batch::new("shipment-batch", "LAMP", 100, Some(today()));
            let mut p = product("LAMP", vec![small, shipment]);
            assert_eq!(
                p.allocate(OrderLine::new("o1", "LAMP", 10)).as_deref(),
                Some("shipment-batch")
            );
        }

        #[test]
        fn returns_allocated_batch_ref() {
            let in_stock = Batch::new("in-stock-batch-ref", "HIGHBROW-POSTER", 100, None);
            let shipment = Batch::new(
                "shipment-batch-ref",
                "HIGHBROW-POSTER",
                100,
                Some(tomorrow()),
            );
            let mut p = product("HIGHBROW-POSTER", vec![shipment, in_stock]);
            let allocation = p.allocate(OrderLine::new("oref", "HIGHBROW-POSTER", 10));
            assert_eq!(allocation.as_deref(), Some("in-stock-batch-ref"));
        }

        #[test]
        fn records_allocated_event() {
            let mut p = product(
                "ELEGANT-LAMP",
                vec![Batch::new("b1", "ELEGANT-LAMP", 10, None)],
            );
            p.allocate(OrderLine::new("o1", "ELEGANT-LAMP", 10));
            assert_eq!(
                p.events.last::<Allocated>(),
                Some(&Allocated {
                    orderid: "o1".into(),
                    sku: "ELEGANT-LAMP".into(),
                    qty: 10,
                    batchref: "b1".into(),
                })
            );
            assert_eq!(p.events.len(), 1);
        }

        #[test]
        fn records_out_of_stock_event_if_cannot_allocate() {
            let mut p = product(
                "SMALL-FORK",
                vec![Batch::new("batch1", "SMALL-FORK", 10, Some(today()))],
            );
            p.allocate(OrderLine::new("order1", "SMALL-FORK", 10));
            let allocation = p.allocate(OrderLine::new("order2", "SMALL-FORK", 1));
            assert_eq!(
                p.events.last::<OutOfStock>(),
                Some(&OutOfStock {
                    sku: "SMALL-FORK".into()
                })
            );
            assert_eq!(allocation, None);
        }

        #[test]
        fn increments_version_number() {
            let mut p = product(
                "SCANDI-PEN",
                vec![Batch::new("b1", "SCANDI-PEN", 100, None)],
            );
            p.version_number = 7;
            p.allocate(OrderLine::new("oref", "SCANDI-PEN", 10));
            assert_eq!(p.version_number, 8);
        }

        #[test]
        fn out_of_stock_does_not_increment_version_number() {
            let mut p = product("SCANDI-PEN", vec![Batch::new("b1", "SCANDI-PEN", 1, None)]);
            p.version_number = 7;
            p.allocate(OrderLine::new("oref", "SCANDI-PEN", 10));
            assert_eq!(p.version_number, 7);
        }

        #[test]
        fn change_batch_quantity_deallocates_until_the_batch_fits() {
            let mut p = product("RUG", vec![Batch::new("b1", "RUG", 50, None)]);
            p.allocate(OrderLine::new("o1", "RUG", 20));
            p.allocate(OrderLine::new("o2", "RUG", 20));
            p.events.clear();

            p.change_batch_quantity("b1", 25).unwrap();

            assert_eq!(batch(&p, "b1").available_quantity(), 5);
            let deallocated: Vec<_> = p.events.of::<Deallocated>().collect();
            assert_eq!(
                deallocated,
                [&Deallocated {
                    orderid: "o2".into(),
                    sku: "RUG".into(),
                    qty: 20,
                    batchref: "b1".into(),
                }]
            );
        }

        #[test]
        fn change_batch_quantity_deallocates_nothing_if_the_batch_still_fits() {
            let mut p = product("RUG", vec![Batch::new("b1", "RUG", 50, None)]);
            p.allocate(OrderLine::new("o1", "RUG", 20));
            p.events.clear();
            p.change_batch_quantity("b1", 20).unwrap();
            assert_eq!(batch(&p, "b1").available_quantity(), 0);
            assert!(p.events.is_empty());
        }

        /// o1 has lines in two batches (the first could not take all of
        /// it), o2 one line in the first batch.
        fn product_with_two_orders() -> Product {
            let mut p = product(
                "RUG",
                vec![
                    Batch::new("warehouse", "RUG", 10, None),
                    Batch::new("shipment", "RUG", 50, Some(today())),
                ],
            );
            p.allocate(OrderLine::new("o1", "RUG", 6));
            p.allocate(OrderLine::new("o2", "RUG", 3));
            p.allocate(OrderLine::new("o1", "RUG", 20));
            p.events.clear();
            p.version_number = 7;
            p
        }

        #[test]
        fn deallocate_order_releases_every_line_of_the_order() {
            let mut p = product_with_two_orders();
            assert!(p.holds_order("o1"));

            assert_eq!(p.deallocate_order("o1"), 2);

            assert!(!p.holds_order("o1"));
            assert_eq!(batch(&p, "warehouse").available_quantity(), 7);
            assert_eq!(batch(&p, "shipment").available_quantity(), 50);
            let released: Vec<_> = p.events.of::<Released>().cloned().collect();
            assert_eq!(
                released,
                [
                    Released {
                        orderid: "o1".into(),
                        sku: "RUG".into(),
                        qty: 6,
                        batchref: "warehouse".into(),
                    },
                    Released {
                        orderid: "o1".into(),
                        sku: "RUG".into(),
                        qty: 20,
                        batchref: "shipment".into(),
                    },
                ]
            );
            assert_eq!(p.events.len(), 2, "no Deallocated: nothing is reallocated");
            assert_eq!(p.version_number, 8);
        }

        #[test]
        fn deallocate_order_leaves_the_other_orders_alone() {
            let mut p = product_with_two_orders();
            p.deallocate_order("o1");
            assert!(p.holds_order("o2"));
            assert_eq!(
                batch(&p, "warehouse").allocations(),
                [OrderLine::new("o2", "RUG", 3)]
            );
        }

        #[test]
        fn deallocate_order_of_an_order_it_does_not_hold_changes_nothing() {
            let mut p = product_with_two_orders();
            assert_eq!(p.deallocate_order("o3"), 0);
            assert!(p.events.is_empty());
            assert_eq!(p.version_number, 7);
            assert_eq!(batch(&p, "warehouse").available_quantity(), 1);
            assert_eq!(batch(&p, "shipment").available_quantity(), 30);
        }

        #[test]
        fn change_batch_quantity_of_an_unknown_batch_is_an_error() {
            let mut p = product("RUG", vec![Batch::new("b1", "RUG", 50, None)]);
            assert_eq!(
                p.change_batch_quantity("nope", 20),
                Err(UnknownBatch("nope".into()))
            );
            assert_eq!(
                UnknownBatch("nope".into()).to_string(),
                "Unknown batch nope"
            );
        }
    }
}
