//! The model: an order is placed pending, then confirmed when allocation
//! has allocated every line, or cancelled when it could not allocate one,
//! or when allocation did not answer in time.
//!
//! ```text
//!            Allocated (every line)
//! Pending ────────────────────────▶ Confirmed
//!    │
//!    │ AllocationFailed (the first), or the timeout (`expire`)
//!    ▼
//! Cancelled ── raises OrderCancelled, so that allocation releases the rest;
//!              an Allocated that comes later raises AllocationRefused
//! ```

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use contracts::{AllocationRefused, FailureReason, OrderCancelled, OrderLine, OrderPlaced};
use eda_core::{Aggregate, Events};
use serde::{Deserialize, Serialize};

use crate::domain::errors::OrderError;

/// The most lines an order may have.
pub const MAX_LINES: usize = 100;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Placed; allocation has not answered for every line yet.
    Pending,
    /// Every line is allocated.
    Confirmed,
    /// A line could not be allocated; see [`Order::reason`].
    Cancelled,
}

impl Status {
    /// `pending`, `confirmed` or `cancelled`: how the API and the stored
    /// order spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        match s {
            "pending" => Ok(Status::Pending),
            "confirmed" => Ok(Status::Confirmed),
            "cancelled" => Ok(Status::Cancelled),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// A line of an order: a quantity of one product, and the batch that
/// allocation put it in, once it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many units.
    pub qty: u32,
    /// The batch it is allocated to; `None` until allocation says.
    pub batchref: Option<String>,
}

impl Line {
    /// A line not allocated yet.
    pub fn new(sku: impl Into<String>, qty: u32) -> Self {
        Line {
            sku: sku.into(),
            qty,
            batchref: None,
        }
    }
}

/// An order: the aggregate of the orders service.
///
/// Its status, reason and lines change only through the methods, which
/// follow the life cycle above; the unit of work raises the version on
/// every save.
///
/// It has no repository: it serializes, so eda stores it as a document
/// (its JSON and version, in eda's `eda_aggregates` table) on Postgres and
/// SQLite, with the same version check. Allocation's `Product` shows the
/// other way, a repository over tables of its own.
#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
pub struct Order {
    /// The order's id, chosen by the client.
    #[aggregate(id)]
    pub orderid: String,
    status: Status,
    reason: Option<String>,
    lines: Vec<Line>,
    /// Checked and raised by the unit of work on every save.
    pub version: u64,
    /// The events raised since it was loaded.
    pub events: Events,
}

impl Order {
    /// A new, pending order, raising [`OrderPlaced`]; refused unless the
    /// id is not blank and it has 1 to [`MAX_LINES`] lines, each of a
    /// distinct, non-blank SKU and at least one unit.
    pub fn place(orderid: impl Into<String>, lines: Vec<OrderLine>) -> Result<Order, OrderError> {
        let orderid = orderid.into();
        if orderid.trim().is_empty() {
            return Err(OrderError::EmptyOrderid);
        }
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(OrderError::LineCount(lines.len()));
        }
        let mut skus = HashSet::with_capacity(lines.len());
        for line in &lines {
            if line.sku.trim().is_empty() {
                return Err(OrderError::EmptySku);
            }
            if line.qty == 0 {
                return Err(OrderError::ZeroQuantity(line.sku.clone()));
            }
            if !skus.insert(line.sku.as_str()) {
                return Err(OrderError::DuplicateSku(line.sku.clone()));
            }
        }
        let mut order = Order::restore(
            orderid.clone(),
            Status::Pending,
            None,
            lines
                .iter()
                .map(|l| Line::new(l.sku.clone(), l.qty))
                .collect(),
            0,
        );
        order.events.raise(OrderPlaced { orderid, lines });
        Ok(order)
    }

    /// An order in the state given: what `place` starts from, and what a
    /// test compares with. It trusts its input.
    pub fn restore(
        orderid: impl Into<String>,
        status: Status,
        reason: Option<String>,
        lines: Vec<Line>,
        version: u64,
    ) -> Self {
        Order {
            orderid: orderid.into(),
            status,
            reason,
            lines,
            version,
            events: Events::new(),
        }
    }

    /// Where it stands.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Why it was cancelled (e.g. `out of stock: LAMP`); `None` unless it
    /// was.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Its lines, in the order they were placed.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Allocation allocated the line of `sku` to `batchref` (again, after
    /// a reallocation: the latest batch is kept). A pending order whose
    /// lines all have a batch is confirmed. A cancelled order refuses it:
    /// it raises [`AllocationRefused`], for allocation to deallocate the
    /// line (the order was cancelled before the allocation arrived: it
    /// timed out, or another line failed), and records nothing. Returns
    /// `false`, changing nothing, when the order has no line of `sku`.
    pub fn record_allocation(&mut self, sku: &str, batchref: &str) -> bool {
        let Some(line) = self.lines.iter_mut().find(|l| l.sku == sku) else {
            return false;
        };
        if self.status == Status::Cancelled {
            self.events.raise(AllocationRefused {
                orderid: self.orderid.clone(),
                sku: sku.to_owned(),
                qty: line.qty,
                batchref: batchref.to_owned(),
            });
            return true;
        }
        line.batchref = Some(batchref.to_owned());
        if self.status == Status::Pending && self.lines.iter().all(|l| l.batchref.is_some()) {
            self.status = Status::Confirmed;
        }
        true
    }

    /// Allocation could not allocate the line of `sku`. A pending order is
    /// cancelled, with the reason (`out of stock: LAMP`), raising
    /// [`OrderCancelled`] with all its lines, once: a later failure, or a
    /// failure for a confirmed or cancelled order, or for a SKU the order
    /// does not hold, changes nothing. Returns whether it cancelled.
    pub fn record_failure(&mut self, sku: &str, reason: FailureReason) -> bool {
        if !self.lines.iter().any(|l| l.sku == sku) {
            return false;
        }
        self.cancel(format!("{reason}: {sku}"))
    }

    /// Allocation did not answer for every line in time: a pending order is
    /// cancelled with the reason `timeout`, raising [`OrderCancelled`]
    /// (allocation releases what it allocated, when it handles it). A
    /// confirmed or cancelled order is left as it is. Returns whether it
    /// cancelled.
    pub fn expire(&mut self) -> bool {
        self.cancel(TIMEOUT.to_owned())
    }

    fn cancel(&mut self, reason: String) -> bool {
        if self.status != Status::Pending {
            return false;
        }
        self.status = Status::Cancelled;
        self.reason = Some(reason.clone());
        self.events.raise(OrderCancelled {
            orderid: self.orderid.clone(),
            reason,
            lines: self
                .lines
                .iter()
                .map(|l| OrderLine::new(l.sku.clone(), l.qty))
                .collect(),
        });
        true
    }
}

/// The reason of an order cancelled because allocation did not answer in
/// time.
pub const TIMEOUT: &str = "timeout";

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(lines: &[(&str, u32)]) -> Vec<OrderLine> {
        lines
            .iter()
            .map(|(sku, qty)| OrderLine::new(*sku, *qty))
            .collect()
    }

    /// A pending order of 2 LAMP and 1 CHAIR, its `OrderPlaced` cleared.
    fn pending() -> Order {
        let mut order = Order::place("o1", lines(&[("LAMP", 2), ("CHAIR", 1)])).unwrap();
        order.events.clear();
        order
    }

    #[test]
    fn placing_an_order_raises_order_placed() {
        let order = Order::place("o1", lines(&[("LAMP", 2), ("CHAIR", 1)])).unwrap();
        assert_eq!(order.status(), Status::Pending);
        assert_eq!(order.reason(), None);
        assert_eq!(order.lines(), [Line::new("LAMP", 2), Line::new("CHAIR", 1)]);
        assert_eq!(order.version, 0);
        assert_eq!(
            order.events.last::<OrderPlaced>(),
            Some(&OrderPlaced {
                orderid: "o1".into(),
                lines: lines(&[("LAMP", 2), ("CHAIR", 1)]),
            })
        );
        assert_eq!(order.events.len(), 1);
    }

    #[test]
    fn an_order_that_breaks_a_rule_is_refused() {
        let too_many: Vec<_> = (0..=MAX_LINES)
            .map(|i| OrderLine::new(format!("SKU-{i}"), 1))
            .collect();
        let cases = [
            (" ", lines(&[("LAMP", 1)]), OrderError::EmptyOrderid),
            ("o1", lines(&[]), OrderError::LineCount(0)),
            ("o1", too_many, OrderError::LineCount(MAX_LINES + 1)),
            ("o1", lines(&[("LAMP", 1), ("", 1)]), OrderError::EmptySku),
            (
                "o1",
                lines(&[("LAMP", 0)]),
                OrderError::ZeroQuantity("LAMP".into()),
            ),
            (
                "o1",
                lines(&[("LAMP", 1), ("CHAIR", 1), ("LAMP", 2)]),
                OrderError::DuplicateSku("LAMP".into()),
            ),
        ];
        for (orderid, lines, expected) in cases {
            assert_eq!(Order::place(orderid, lines).unwrap_err(), expected);
        }
        let most: Vec<_> = (0..MAX_LINES)
            .map(|i| OrderLine::new(format!("SKU-{i}"), 1))
            .collect();
        assert!(Order::place("o1", most).is_ok());
    }

    #[test]
    fn an_order_is_confirmed_when_every_line_is_allocated() {
        let mut order = pending();
        assert!(order.record_allocation("LAMP", "b1"));
        assert_eq!(order.status(), Status::Pending);
        assert!(order.record_allocation("CHAIR", "b2"));
        assert_eq!(order.status(), Status::Confirmed);
        assert_eq!(order.lines()[0].batchref.as_deref(), Some("b1"));
        assert_eq!(order.lines()[1].batchref.as_deref(), Some("b2"));
        assert!(order.events.is_empty());
    }

    #[test]
    fn a_reallocation_records_the_new_batch() {
        let mut order = pending();
        order.record_allocation("LAMP", "b1");
        order.record_allocation("CHAIR", "b2");
        order.record_allocation("LAMP", "b3");
        assert_eq!(order.status(), Status::Confirmed);
        assert_eq!(order.lines()[0].batchref.as_deref(), Some("b3"));
    }

    #[test]
    fn an_allocation_of_a_sku_the_order_does_not_hold_changes_nothing() {
        let mut order = pending();
        assert!(!order.record_allocation("SOFA", "b1"));
        assert!(order.lines().iter().all(|l| l.batchref.is_none()));
    }

    #[test]
    fn a_failure_cancels_a_pending_order_once() {
        let mut order = pending();
        order.record_allocation("LAMP", "b1");

        assert!(order.record_failure("CHAIR", FailureReason::OutOfStock));

        assert_eq!(order.status(), Status::Cancelled);
        assert_eq!(order.reason(), Some("out of stock: CHAIR"));
        assert_eq!(
            order.events.last::<OrderCancelled>(),
            Some(&OrderCancelled {
                orderid: "o1".into(),
                reason: "out of stock: CHAIR".into(),
                lines: lines(&[("LAMP", 2), ("CHAIR", 1)]),
            })
        );

        assert!(!order.record_failure("LAMP", FailureReason::UnknownSku));
        assert_eq!(order.reason(), Some("out of stock: CHAIR"));
        assert_eq!(order.events.len(), 1);
    }

    #[test]
    fn the_reason_names_the_failure_and_the_sku() {
        let mut order = pending();
        order.record_failure("LAMP", FailureReason::UnknownSku);
        assert_eq!(order.reason(), Some("unknown sku: LAMP"));
    }

    #[test]
    fn a_confirmed_order_is_not_cancelled() {
        let mut order = pending();
        order.record_allocation("LAMP", "b1");
        order.record_allocation("CHAIR", "b2");
        assert!(!order.record_failure("LAMP", FailureReason::OutOfStock));
        assert_eq!(order.status(), Status::Confirmed);
        assert_eq!(order.reason(), None);
        assert!(order.events.is_empty());
    }

    #[test]
    fn a_failure_of_a_sku_the_order_does_not_hold_changes_nothing() {
        let mut order = pending();
        assert!(!order.record_failure("SOFA", FailureReason::OutOfStock));
        assert_eq!(order.status(), Status::Pending);
        assert!(order.events.is_empty());
    }

    #[test]
    fn a_cancelled_order_refuses_a_late_allocation() {
        let mut order = pending();
        order.record_failure("CHAIR", FailureReason::OutOfStock);
        order.events.clear();
        assert!(order.record_allocation("LAMP", "b1"));
        assert_eq!(order.status(), Status::Cancelled);
        assert_eq!(order.lines()[0].batchref, None);
        assert_eq!(
            order.events.last::<AllocationRefused>(),
            Some(&AllocationRefused {
                orderid: "o1".into(),
                sku: "LAMP".into(),
                qty: 2,
                batchref: "b1".into(),
            })
        );
        assert_eq!(order.events.len(), 1);
    }

    #[test]
    fn a_pending_order_expires_once() {
        let mut order = pending();
        order.record_allocation("LAMP", "b1");
        assert!(order.expire());
        assert_eq!(order.status(), Status::Cancelled);
        assert_eq!(order.reason(), Some(TIMEOUT));
        assert_eq!(
            order.events.last::<OrderCancelled>(),
            Some(&OrderCancelled {
                orderid: "o1".into(),
                reason: "timeout".into(),
                lines: lines(&[("LAMP", 2), ("CHAIR", 1)]),
            })
        );
        assert!(!order.expire());
        assert!(!order.record_failure("CHAIR", FailureReason::OutOfStock));
        assert_eq!(order.events.len(), 1);
    }

    #[test]
    fn a_confirmed_order_does_not_expire() {
        let mut order = pending();
        order.record_allocation("LAMP", "b1");
        order.record_allocation("CHAIR", "b2");
        assert!(!order.expire());
        assert_eq!(order.status(), Status::Confirmed);
        assert!(order.events.is_empty());
    }

    #[test]
    fn statuses_are_spelled_in_lower_case() {
        for status in [Status::Pending, Status::Confirmed, Status::Cancelled] {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(
            "Pending".parse::<Status>(),
            Err(UnknownStatus("Pending".into()))
        );
    }
}
