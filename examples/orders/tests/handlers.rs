//! The service layer through the message bus, on the in-memory database:
//! placing orders, and what allocation's answers do to them.

use contracts::{Allocated, AllocationFailed, FailureReason, OrderLine};
use eda_core::{CommandError, Envelope, Event, InMemoryDatabase, MessageBus, Metadata};
use orders::domain::commands::{ExpireOrder, PlaceOrder};
use orders::domain::errors::OrderError;
use orders::domain::model::{Order, Status};
use orders::service_layer::OrderTimeout;
use serde_json::json;

/// A bus on the in-memory database, and the database to look at.
struct Service {
    bus: MessageBus,
    db: InMemoryDatabase,
}

fn bootstrap() -> Service {
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .adapter(db.clone())
        .scope("orders")
        .adapter(orders::service_layer::OrderTimeout::default())
        .build()
        .expect("the orders service is wired");
    Service { bus, db }
}

impl Service {
    /// Places `orderid` with these (sku, qty) lines.
    async fn place(
        &self,
        orderid: &str,
        lines: &[(&str, u32)],
    ) -> Result<(), CommandError<OrderError>> {
        let lines = lines
            .iter()
            .map(|(sku, qty)| OrderLine::new(*sku, *qty))
            .collect();
        self.bus.handle(PlaceOrder::new(orderid, lines)).await
    }

    /// Handles an event of allocation, and checks that its handlers
    /// succeeded.
    async fn receive<E: Event>(&self, event: E) {
        let report = self.bus.publish(Envelope::new(event)).await;
        assert!(report.is_ok(), "{:?}", report.failures);
    }

    async fn allocated(&self, orderid: &str, sku: &str, batchref: &str) {
        self.receive(Allocated {
            orderid: orderid.into(),
            sku: sku.into(),
            qty: 1,
            batchref: batchref.into(),
        })
        .await;
    }

    async fn failed(&self, orderid: &str, sku: &str, reason: FailureReason) {
        self.receive(AllocationFailed {
            orderid: orderid.into(),
            sku: sku.into(),
            qty: 1,
            reason,
        })
        .await;
    }

    fn order(&self, orderid: &str) -> Order {
        self.db
            .get::<Order>(orderid)
            .unwrap_or_else(|| panic!("no order {orderid}"))
    }

    /// The outbox, as (name, JSON body).
    fn outbox(&self) -> Vec<(String, serde_json::Value)> {
        self.db
            .outbox()
            .into_iter()
            .map(|m| {
                let body = serde_json::from_slice(&m.payload).expect("outbox bodies are JSON");
                (m.name, body)
            })
            .collect()
    }

    /// The names of the outbox's messages, in order.
    fn published(&self) -> Vec<String> {
        self.db.outbox().into_iter().map(|m| m.name).collect()
    }
}

mod place_order {
    use super::*;

    #[tokio::test]
    async fn saves_a_pending_order_and_publishes_order_placed() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2), ("CHAIR", 1)]).await.unwrap();

        let order = s.order("o1");
        assert_eq!(order.status(), Status::Pending);
        assert_eq!(order.lines().len(), 2);
        assert_eq!(
            s.outbox(),
            [(
                "orders.order_placed".to_owned(),
                json!({"orderid": "o1", "lines": [
                    {"sku": "LAMP", "qty": 2},
                    {"sku": "CHAIR", "qty": 1},
                ]})
            )]
        );
    }

    #[tokio::test]
    async fn an_orderid_placed_before_is_refused() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2)]).await.unwrap();

        let error = s.place("o1", &[("CHAIR", 1)]).await.unwrap_err();

        assert!(
            matches!(&error, CommandError::Handler(OrderError::AlreadyPlaced(id)) if id == "o1"),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "order o1 was placed already");
        assert_eq!(s.order("o1").lines()[0].sku, "LAMP", "the first one stays");
        assert_eq!(s.published(), ["orders.order_placed"]);
        assert_eq!(s.db.commits(), 1);
    }

    #[tokio::test]
    async fn an_order_that_breaks_a_rule_is_refused_and_nothing_is_saved() {
        let s = bootstrap();
        let error = s
            .place("o1", &[("LAMP", 2), ("LAMP", 1)])
            .await
            .unwrap_err();
        assert!(
            matches!(&error, CommandError::Handler(OrderError::DuplicateSku(sku)) if sku == "LAMP"),
            "{error:?}"
        );
        assert_eq!(s.db.get::<Order>("o1").map(|o| o.status()), None);
        assert_eq!(s.outbox(), []);
    }
}

mod allocation_answers {
    use super::*;

    #[tokio::test]
    async fn an_order_is_confirmed_when_every_line_is_allocated() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2), ("CHAIR", 1)]).await.unwrap();

        s.allocated("o1", "LAMP", "b1").await;
        assert_eq!(s.order("o1").status(), Status::Pending);
        s.allocated("o1", "CHAIR", "b2").await;

        let order = s.order("o1");
        assert_eq!(order.status(), Status::Confirmed);
        let batchrefs: Vec<_> = order
            .lines()
            .iter()
            .map(|l| l.batchref.as_deref())
            .collect();
        assert_eq!(batchrefs, [Some("b1"), Some("b2")]);
        assert_eq!(s.published(), ["orders.order_placed"]);
    }

    #[tokio::test]
    async fn a_failure_cancels_the_order_and_publishes_order_cancelled_once() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2), ("CHAIR", 1)]).await.unwrap();
        s.allocated("o1", "LAMP", "b1").await;

        s.failed("o1", "CHAIR", FailureReason::OutOfStock).await;

        let order = s.order("o1");
        assert_eq!(order.status(), Status::Cancelled);
        assert_eq!(order.reason(), Some("out of stock: CHAIR"));
        let cancelled: Vec<_> = s
            .outbox()
            .into_iter()
            .filter(|(name, _)| name == "orders.order_cancelled")
            .collect();
        assert_eq!(
            cancelled,
            [(
                "orders.order_cancelled".to_owned(),
                json!({
                    "orderid": "o1",
                    "reason": "out of stock: CHAIR",
                    "lines": [{"sku": "LAMP", "qty": 2}, {"sku": "CHAIR", "qty": 1}],
                })
            )]
        );
    }

    #[tokio::test]
    async fn a_second_failure_changes_nothing_and_a_late_allocation_is_refused() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2), ("CHAIR", 1), ("SOFA", 1)])
            .await
            .unwrap();
        s.failed("o1", "LAMP", FailureReason::UnknownSku).await;

        s.failed("o1", "CHAIR", FailureReason::OutOfStock).await;
        s.allocated("o1", "SOFA", "b9").await;

        let order = s.order("o1");
        assert_eq!(order.status(), Status::Cancelled);
        assert_eq!(order.reason(), Some("unknown sku: LAMP"));
        assert_eq!(order.lines()[2].batchref, None, "refused, not recorded");
        assert_eq!(
            s.published(),
            [
                "orders.order_placed",
                "orders.order_cancelled",
                "orders.allocation_refused"
            ]
        );
        assert_eq!(
            s.outbox()[2].1,
            json!({"orderid": "o1", "sku": "SOFA", "qty": 1, "batchref": "b9"})
        );
    }

    #[tokio::test]
    async fn a_failure_after_confirmation_changes_nothing() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2)]).await.unwrap();
        s.allocated("o1", "LAMP", "b1").await;

        s.failed("o1", "LAMP", FailureReason::OutOfStock).await;

        assert_eq!(s.order("o1").status(), Status::Confirmed);
        assert_eq!(s.order("o1").reason(), None);
        assert_eq!(s.published(), ["orders.order_placed"]);
    }

    #[tokio::test]
    async fn events_of_orders_placed_elsewhere_are_ignored() {
        let s = bootstrap();

        s.allocated("not-ours", "LAMP", "b1").await;
        s.failed("not-ours", "LAMP", FailureReason::OutOfStock)
            .await;

        assert!(s.db.all::<Order>().is_empty());
        assert_eq!(s.outbox(), []);
    }

    #[tokio::test]
    async fn a_redelivered_allocation_is_harmless() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2), ("CHAIR", 1)]).await.unwrap();
        let metadata = Metadata::new();
        let body = br#"{"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"}"#;

        for _ in 0..2 {
            s.bus
                .handle_incoming("allocation.allocated", metadata, body)
                .await
                .unwrap();
        }

        let order = s.order("o1");
        assert_eq!(order.status(), Status::Pending);
        assert_eq!(order.lines()[0].batchref.as_deref(), Some("b1"));
        // The placing, then the allocation once: the inbox skipped the
        // second delivery (which would have saved the order again).
        assert_eq!(order.version, 1);
        assert_eq!(s.db.commits(), 2);
    }

    #[tokio::test]
    async fn a_redelivered_failure_cancels_once() {
        let s = bootstrap();
        s.place("o1", &[("LAMP", 2)]).await.unwrap();
        let metadata = Metadata::new();
        let body = br#"{"orderid": "o1", "sku": "LAMP", "qty": 2, "reason": "out_of_stock"}"#;

        for _ in 0..2 {
            s.bus
                .handle_incoming("allocation.allocation_failed", metadata, body)
                .await
                .unwrap();
        }

        assert_eq!(s.order("o1").status(), Status::Cancelled);
        assert_eq!(
            s.published(),
            ["orders.order_placed", "orders.order_cancelled"]
        );
    }
}

/// The order's fulfilment: its timeout is scheduled when it is placed,
/// cancelled when allocation answers first, and cancels a pending order
/// when it is due.
mod timeout {
    use std::time::Duration;

    use eda_core::SchedulerOptions;
    use eda_core::backend::Database;

    use super::*;

    fn with_timeout(timeout: Duration) -> Service {
        let db = InMemoryDatabase::new();
        let bus = MessageBus::builder()
            .adapter(db.clone())
            .adapter(OrderTimeout(timeout))
            .scope("orders")
            .build()
            .expect("the orders service is wired");
        Service { bus, db }
    }

    async fn pending_timeouts(s: &Service) -> u64 {
        s.db.scheduled_rows(100).await.unwrap().pending
    }

    #[tokio::test]
    async fn a_pending_order_is_cancelled_for_timeout_when_it_is_due() {
        let s = with_timeout(Duration::ZERO);
        s.place("o1", &[("LAMP", 2), ("CHAIR", 1)]).await.unwrap();
        s.allocated("o1", "LAMP", "b1").await;
        assert_eq!(pending_timeouts(&s).await, 1);

        let delivered = s.bus.deliver_due(&SchedulerOptions::default()).await;
        assert_eq!(delivered.unwrap(), 1);

        let order = s.order("o1");
        assert_eq!(order.status(), Status::Cancelled);
        assert_eq!(order.reason(), Some("timeout"));
        assert_eq!(
            s.outbox()[1],
            (
                "orders.order_cancelled".to_owned(),
                json!({
                    "orderid": "o1",
                    "reason": "timeout",
                    "lines": [{"sku": "LAMP", "qty": 2}, {"sku": "CHAIR", "qty": 1}],
                })
            )
        );
        // Allocation answers late: refused, for allocation to release it.
        s.allocated("o1", "CHAIR", "b2").await;
        assert_eq!(s.order("o1").status(), Status::Cancelled);
        assert_eq!(
            s.published(),
            [
                "orders.order_placed",
                "orders.order_cancelled",
                "orders.allocation_refused"
            ]
        );
        assert_eq!(pending_timeouts(&s).await, 0);
    }

    #[tokio::test]
    async fn a_confirmed_order_s_timeout_is_cancelled() {
        let s = with_timeout(Duration::ZERO);
        s.place("o1", &[("LAMP", 2)]).await.unwrap();
        s.allocated("o1", "LAMP", "b1").await;
        assert_eq!(s.order("o1").status(), Status::Confirmed);
        assert_eq!(
            pending_timeouts(&s).await,
            0,
            "cancelled with the confirmation"
        );
        assert_eq!(
            s.bus
                .deliver_due(&SchedulerOptions::default())
                .await
                .unwrap(),
            0
        );
        assert_eq!(s.order("o1").status(), Status::Confirmed);
    }

    #[tokio::test]
    async fn a_cancelled_order_s_timeout_is_cancelled() {
        let s = with_timeout(Duration::ZERO);
        s.place("o1", &[("LAMP", 2)]).await.unwrap();
        s.failed("o1", "LAMP", FailureReason::OutOfStock).await;
        assert_eq!(pending_timeouts(&s).await, 0);
        assert_eq!(s.order("o1").reason(), Some("out of stock: LAMP"));
    }

    #[tokio::test]
    async fn an_order_is_not_cancelled_before_its_timeout() {
        let s = with_timeout(Duration::from_secs(3600));
        s.place("o1", &[("LAMP", 2)]).await.unwrap();
        assert_eq!(
            s.bus
                .deliver_due(&SchedulerOptions::default())
                .await
                .unwrap(),
            0
        );
        assert_eq!(s.order("o1").status(), Status::Pending);
        assert_eq!(pending_timeouts(&s).await, 1);
    }

    /// A timeout that comes after the order ended (delivered while the
    /// order was being confirmed) changes nothing.
    #[tokio::test]
    async fn a_late_timeout_changes_nothing() {
        let s = with_timeout(Duration::from_secs(3600));
        s.place("o1", &[("LAMP", 2)]).await.unwrap();
        s.allocated("o1", "LAMP", "b1").await;
        s.bus
            .handle(ExpireOrder {
                orderid: "o1".into(),
            })
            .await
            .unwrap();
        assert_eq!(s.order("o1").status(), Status::Confirmed);
        assert_eq!(s.published(), ["orders.order_placed"]);
    }
}

mod messages {
    use super::*;

    #[test]
    fn names_are_stable() {
        use eda_core::Message;
        assert_eq!(PlaceOrder::NAME, "orders.place_order");
    }

    #[test]
    fn the_bus_consumes_allocations_answers_and_nothing_else() {
        let s = bootstrap();
        assert_eq!(
            s.bus.consumed_message_names(),
            ["allocation.allocated", "allocation.allocation_failed"],
            "PlaceOrder is in-process only"
        );
    }
}
