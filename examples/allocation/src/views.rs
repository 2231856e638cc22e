//! The read model: which batch each line of an order went to (APwP's
//! `views.py` and the `allocations_view` table), kept by event handlers and
//! read without touching the products.
//!
//! The view is stored as a small aggregate per order, [`OrderAllocations`],
//! in its own unit of work, [`ViewsUow`], so that:
//!
//! - the same handlers keep it on every database: on the in-memory one of
//!   the unit tests (which stores any aggregate), on Postgres (through
//!   [`PgOrderAllocationsRepository`](crate::adapters::postgres::PgOrderAllocationsRepository))
//!   and on SQLite (through
//!   [`SqliteOrderAllocationsRepository`](crate::adapters::sqlite::SqliteOrderAllocationsRepository)),
//!   over `allocations_view`; a SQL query in the handlers would work on one
//!   database only;
//! - two handlers updating the view of one order at once (its lines of two
//!   products allocated concurrently) are caught by the aggregate's version
//!   and retried by the bus, not lost;
//! - readers ([`allocations`]) open a unit of work with `bus.begin` and
//!   `read` it: no version check, no conflict with the writers.
//!
//! The view follows the products after they commit (each handler runs in a
//! transaction of its own once the product's is committed): it is
//! eventually consistent, as in APwP.

use eda_core::{
    Aggregate, Error, Events, IdentityMap, MessageBus, UnitOfWork, UowTransaction, event_handler,
};

use crate::domain::events::{Allocated, Deallocated, Released};

/// One line of an order, as the view shows it: APwP's
/// `{"sku": …, "batchref": …}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allocation {
    /// The product.
    pub sku: String,
    /// The batch the line is allocated to.
    pub batchref: String,
}

impl Allocation {
    /// An allocation of `sku` to `batchref`.
    pub fn new(sku: impl Into<String>, batchref: impl Into<String>) -> Self {
        Allocation {
            sku: sku.into(),
            batchref: batchref.into(),
        }
    }
}

/// The allocations of one order: the rows of `allocations_view` with this
/// `orderid`, and a version (the view's own, unrelated to the products').
#[derive(Debug, Clone, PartialEq, Eq, Aggregate)]
#[aggregate(name = "OrderAllocations")]
pub struct OrderAllocations {
    /// The order.
    #[aggregate(id)]
    pub orderid: String,
    /// Its allocations, sorted (so that every database returns them in the
    /// same order), each once.
    lines: Vec<Allocation>,
    /// How many times the view of this order was saved.
    pub version: u64,
    /// Never raised: a view tells nobody anything.
    pub events: Events,
}

impl OrderAllocations {
    /// The view of an order with nothing allocated.
    pub fn new(orderid: impl Into<String>) -> Self {
        Self::restore(orderid, Vec::new(), 0)
    }

    /// A view as it was saved: for repositories.
    pub fn restore(orderid: impl Into<String>, mut lines: Vec<Allocation>, version: u64) -> Self {
        lines.sort_unstable();
        lines.dedup();
        OrderAllocations {
            orderid: orderid.into(),
            lines,
            version,
            events: Events::new(),
        }
    }

    /// Its allocations, sorted by SKU then batch.
    pub fn lines(&self) -> &[Allocation] {
        &self.lines
    }

    /// Records an allocation (once, however often it is told).
    pub fn add(&mut self, allocation: Allocation) {
        if let Err(i) = self.lines.binary_search(&allocation) {
            self.lines.insert(i, allocation);
        }
    }

    /// Forgets an allocation; one it does not hold is ignored.
    pub fn remove(&mut self, allocation: &Allocation) {
        self.lines.retain(|l| l != allocation);
    }
}

/// The unit of work of the read model: one transaction over the views of
/// orders.
#[derive(Debug, UnitOfWork)]
pub struct ViewsUow {
    #[uow(transaction)]
    tx: UowTransaction,
    orders: IdentityMap<OrderAllocations>,
}

/// The allocations of an order, sorted by SKU then batch; empty for an
/// order the service never allocated (APwP's `views.allocations`).
pub async fn allocations(orderid: &str, bus: &MessageBus) -> Result<Vec<Allocation>, Error> {
    // Read only, then dropped: rolled back, nothing saved.
    let mut uow = bus.begin::<ViewsUow>().await?;
    let view = uow.orders().read(&orderid.to_owned()).await?;
    Ok(view.map(|v| v.lines.clone()).unwrap_or_default())
}

/// Adds the allocation to the order's view.
#[event_handler]
async fn add_allocation_to_read_model(event: &Allocated, uow: &mut ViewsUow) -> Result<(), Error> {
    let view = match uow.orders().get(&event.orderid).await? {
        Some(view) => view,
        None => uow
            .orders()
            .add(OrderAllocations::new(event.orderid.clone()))?,
    };
    view.add(Allocation::new(event.sku.clone(), event.batchref.clone()));
    uow.commit().await
}

/// Removes the allocation from the order's view. The event names the batch,
/// so this is right whether it runs before or after the line's
/// reallocation (another handler of the same event) added its new batch.
#[event_handler]
async fn remove_allocation_from_read_model(
    event: &Deallocated,
    uow: &mut ViewsUow,
) -> Result<(), Error> {
    remove(uow, &event.orderid, &event.sku, &event.batchref).await
}

/// Removes the released allocation (its order was cancelled) from the
/// order's view.
#[event_handler]
async fn remove_released_from_read_model(
    event: &Released,
    uow: &mut ViewsUow,
) -> Result<(), Error> {
    remove(uow, &event.orderid, &event.sku, &event.batchref).await
}

/// Removes one allocation from an order's view; an order without a view
/// changes nothing.
async fn remove(uow: &mut ViewsUow, orderid: &str, sku: &str, batchref: &str) -> Result<(), Error> {
    if let Some(view) = uow.orders().get(&orderid.to_owned()).await? {
        view.remove(&Allocation::new(sku, batchref));
        uow.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_sorted_and_kept_once() {
        let mut view = OrderAllocations::new("o1");
        view.add(Allocation::new("sku2", "b1"));
        view.add(Allocation::new("sku1", "b9"));
        view.add(Allocation::new("sku2", "b1"));
        assert_eq!(
            view.lines(),
            [Allocation::new("sku1", "b9"), Allocation::new("sku2", "b1")]
        );
        view.remove(&Allocation::new("sku2", "b1"));
        view.remove(&Allocation::new("sku3", "b1"));
        assert_eq!(view.lines(), [Allocation::new("sku1", "b9")]);
    }

    #[test]
    fn a_restored_view_is_sorted_too() {
        let view = OrderAllocations::restore(
            "o1",
            vec![Allocation::new("b", "2"), Allocation::new("a", "1")],
            3,
        );
        assert_eq!(
            view.lines(),
            [Allocation::new("a", "1"), Allocation::new("b", "2")]
        );
        assert_eq!(view.version, 3);
    }
}
