//! The service layer through the message bus, on the in-memory database
//! (APwP's `test_handlers.py`, with its fake unit of work replaced by
//! `InMemoryDatabase`).

use allocation::adapters::notifications::{FakeNotifier, Notifications};
use allocation::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use allocation::domain::errors::AllocationError;
use allocation::domain::model::Product;
use allocation::service_layer::STOCK_ADDRESS;
use allocation::views::{self, Allocation};
use chrono::NaiveDate;
use contracts::{AllocationRefused, OrderCancelled, OrderLine, OrderPlaced};
use eda_core::{CommandError, Envelope, InMemoryDatabase, MessageBus, Metadata};
use serde_json::json;

/// A bus on the in-memory kit, and what the tests look at.
struct Service {
    bus: MessageBus,
    db: InMemoryDatabase,
    notifier: FakeNotifier,
}

fn bootstrap() -> Service {
    let db = InMemoryDatabase::new();
    let notifier = FakeNotifier::new();
    let bus = MessageBus::builder()
        .adapter(db.clone())
        .adapter(Notifications::new(notifier.clone()))
        .scope("allocation")
        .build()
        .expect("the allocation service is wired");
    Service { bus, db, notifier }
}

impl Service {
    fn product(&self, sku: &str) -> Product {
        self.db
            .get::<Product>(sku)
            .unwrap_or_else(|| panic!("no product {sku}"))
    }

    fn available(&self, sku: &str, batchref: &str) -> i64 {
        self.product(sku)
            .batches
            .iter()
            .find(|b| b.reference == batchref)
            .unwrap_or_else(|| panic!("no batch {batchref}"))
            .available_quantity()
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
}

impl Service {
    async fn add_batch(&self, reference: &str, sku: &str, qty: u32) {
        self.bus
            .handle(CreateBatch::new(reference, sku, qty, None))
            .await
            .unwrap();
    }

    /// Handles an event of the orders service, as if it came from outside,
    /// and checks that its handlers succeeded.
    async fn receive<E: eda_core::Event>(&self, event: E) {
        let report = self.bus.publish(Envelope::new(event)).await;
        assert!(report.is_ok(), "{:?}", report.failures);
    }
}

fn placed(orderid: &str, lines: &[(&str, u32)]) -> OrderPlaced {
    OrderPlaced {
        orderid: orderid.into(),
        lines: lines
            .iter()
            .map(|(sku, qty)| OrderLine::new(*sku, *qty))
            .collect(),
    }
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()
}

mod add_batch {
    use super::*;

    #[tokio::test]
    async fn for_new_product() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "CRUNCHY-ARMCHAIR", 100, None))
            .await
            .unwrap();

        let product = s.product("CRUNCHY-ARMCHAIR");
        assert_eq!(product.batches.len(), 1);
        assert_eq!(product.batches[0].reference, "b1");
        assert_eq!(product.batches[0].available_quantity(), 100);
        assert_eq!(s.db.commits(), 1);
    }

    #[tokio::test]
    async fn for_existing_product() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "GARISH-RUG", 100, None))
            .await
            .unwrap();
        s.bus
            .handle(CreateBatch::new("b2", "GARISH-RUG", 99, None))
            .await
            .unwrap();

        let refs: Vec<_> = s
            .product("GARISH-RUG")
            .batches
            .iter()
            .map(|b| b.reference.clone())
            .collect();
        assert_eq!(refs, ["b1", "b2"]);
        assert_eq!(s.db.commits(), 2);
    }

    #[tokio::test]
    async fn publishes_nothing() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "GARISH-RUG", 100, None))
            .await
            .unwrap();
        assert_eq!(s.outbox(), []);
    }
}

mod allocate {
    use super::*;

    #[tokio::test]
    async fn returns_allocation() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("batch1", "COMPLICATED-LAMP", 100, None))
            .await
            .unwrap();

        let result = s
            .bus
            .handle(Allocate::new("o1", "COMPLICATED-LAMP", 10))
            .await
            .unwrap();

        assert_eq!(result.as_deref(), Some("batch1"));
        assert_eq!(s.available("COMPLICATED-LAMP", "batch1"), 90);
    }

    #[tokio::test]
    async fn errors_for_invalid_sku() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "AREALSKU", 100, None))
            .await
            .unwrap();

        let error = s
            .bus
            .handle(Allocate::new("o1", "NONEXISTENTSKU", 10))
            .await
            .unwrap_err();

        match &error {
            CommandError::Handler(AllocationError::InvalidSku(sku)) => {
                assert_eq!(sku, "NONEXISTENTSKU")
            }
            other => panic!("expected InvalidSku, got {other:?}"),
        }
        assert_eq!(error.to_string(), "Invalid sku NONEXISTENTSKU");
        assert_eq!(s.db.commits(), 1, "a failed allocation commits nothing");
    }

    #[tokio::test]
    async fn commits() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "OMINOUS-MIRROR", 100, None))
            .await
            .unwrap();
        assert_eq!(s.db.commits(), 1);

        s.bus
            .handle(Allocate::new("o1", "OMINOUS-MIRROR", 10))
            .await
            .unwrap();

        // The allocation's, then the read model's (a handler of `Allocated`).
        assert_eq!(s.db.commits(), 3);
        assert_eq!(s.available("OMINOUS-MIRROR", "b1"), 90);
    }

    #[tokio::test]
    async fn sends_email_on_out_of_stock() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "POPULAR-CURTAINS", 9, None))
            .await
            .unwrap();

        let result = s
            .bus
            .handle(Allocate::new("o1", "POPULAR-CURTAINS", 10))
            .await
            .unwrap();

        assert_eq!(result, None, "out of stock is not an error");
        assert_eq!(STOCK_ADDRESS, "stock@made.com");
        assert_eq!(
            s.notifier.sent_to("stock@made.com"),
            ["Out of stock for POPULAR-CURTAINS"]
        );
        assert_eq!(s.notifier.sent().len(), 1, "nobody else is notified");
    }

    #[tokio::test]
    async fn sends_nothing_when_in_stock() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "POPULAR-CURTAINS", 10, None))
            .await
            .unwrap();
        s.bus
            .handle(Allocate::new("o1", "POPULAR-CURTAINS", 10))
            .await
            .unwrap();
        assert!(s.notifier.sent().is_empty());
    }

    #[tokio::test]
    async fn writes_allocated_to_the_outbox() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "FANCY-TABLE", 100, None))
            .await
            .unwrap();

        s.bus
            .handle(Allocate::new("o1", "FANCY-TABLE", 10))
            .await
            .unwrap();

        assert_eq!(
            s.outbox(),
            [(
                "allocation.allocated".to_owned(),
                json!({"orderid": "o1", "sku": "FANCY-TABLE", "qty": 10, "batchref": "b1"})
            )]
        );
    }

    #[tokio::test]
    async fn writes_one_outbox_message_per_allocation() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "FANCY-TABLE", 100, None))
            .await
            .unwrap();

        for order in ["o1", "o2"] {
            s.bus
                .handle(Allocate::new(order, "FANCY-TABLE", 10))
                .await
                .unwrap();
        }

        let orders: Vec<_> = s
            .outbox()
            .into_iter()
            .map(|(name, body)| (name, body["orderid"].clone()))
            .collect();
        assert_eq!(
            orders,
            [
                ("allocation.allocated".to_owned(), json!("o1")),
                ("allocation.allocated".to_owned(), json!("o2")),
            ]
        );
    }

    #[tokio::test]
    async fn writes_nothing_to_the_outbox_when_it_fails() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "FANCY-TABLE", 100, None))
            .await
            .unwrap();

        s.bus
            .handle(Allocate::new("o1", "NONEXISTENTSKU", 10))
            .await
            .unwrap_err();

        assert_eq!(s.outbox(), []);
    }

    #[tokio::test]
    async fn publishes_only_out_of_stock_when_out_of_stock() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("b1", "FANCY-TABLE", 5, None))
            .await
            .unwrap();

        s.bus
            .handle(Allocate::new("o1", "FANCY-TABLE", 10))
            .await
            .unwrap();

        assert_eq!(
            s.outbox(),
            [(
                "allocation.out_of_stock".to_owned(),
                serde_json::json!({"sku": "FANCY-TABLE"})
            )]
        );
    }
}

mod change_batch_quantity {
    use super::*;

    #[tokio::test]
    async fn changes_available_quantity() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("batch1", "ADORABLE-SETTEE", 100, None))
            .await
            .unwrap();
        assert_eq!(s.available("ADORABLE-SETTEE", "batch1"), 100);

        s.bus
            .handle(ChangeBatchQuantity::new("batch1", 50))
            .await
            .unwrap();

        assert_eq!(s.available("ADORABLE-SETTEE", "batch1"), 50);
    }

    #[tokio::test]
    async fn finds_the_batch_among_several_products() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("batch1", "ADORABLE-SETTEE", 100, None))
            .await
            .unwrap();
        s.bus
            .handle(CreateBatch::new("batch2", "BLUE-VASE", 100, None))
            .await
            .unwrap();

        s.bus
            .handle(ChangeBatchQuantity::new("batch2", 40))
            .await
            .unwrap();

        assert_eq!(s.available("BLUE-VASE", "batch2"), 40);
        assert_eq!(s.available("ADORABLE-SETTEE", "batch1"), 100);
    }

    #[tokio::test]
    async fn reallocates_if_necessary() {
        let s = bootstrap();
        let sku = "INDIFFERENT-TABLE";
        s.bus
            .handle(CreateBatch::new("batch1", sku, 50, None))
            .await
            .unwrap();
        s.bus
            .handle(CreateBatch::new("batch2", sku, 50, Some(today())))
            .await
            .unwrap();
        s.bus
            .handle(Allocate::new("order1", sku, 20))
            .await
            .unwrap();
        s.bus
            .handle(Allocate::new("order2", sku, 20))
            .await
            .unwrap();
        assert_eq!(s.available(sku, "batch1"), 10);
        assert_eq!(s.available(sku, "batch2"), 50);

        s.bus
            .handle(ChangeBatchQuantity::new("batch1", 25))
            .await
            .unwrap();

        // One of the orders was deallocated: 25 - 20 ...
        assert_eq!(s.available(sku, "batch1"), 5);
        // ... and allocated again to the next batch.
        assert_eq!(s.available(sku, "batch2"), 30);
    }

    #[tokio::test]
    async fn reallocation_is_published_in_the_same_conversation() {
        let s = bootstrap();
        let sku = "INDIFFERENT-TABLE";
        s.bus
            .handle(CreateBatch::new("batch1", sku, 50, None))
            .await
            .unwrap();
        s.bus
            .handle(CreateBatch::new("batch2", sku, 50, Some(today())))
            .await
            .unwrap();
        s.bus
            .handle(Allocate::new("order1", sku, 20))
            .await
            .unwrap();
        s.bus
            .handle(Allocate::new("order2", sku, 20))
            .await
            .unwrap();

        let change = Envelope::new(ChangeBatchQuantity::new("batch1", 25));
        let conversation = change.metadata.correlation_id;
        s.bus.handle_envelope(change).await.unwrap();

        let outbox = s.db.outbox();
        assert_eq!(outbox.len(), 3, "two allocations and one reallocation");
        let reallocated = &outbox[2];
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&reallocated.payload).unwrap(),
            json!({"orderid": "order2", "sku": sku, "qty": 20, "batchref": "batch2"})
        );
        assert_eq!(reallocated.metadata.correlation_id, conversation);
    }

    #[tokio::test]
    async fn errors_for_unknown_batch() {
        let s = bootstrap();
        s.bus
            .handle(CreateBatch::new("batch1", "ADORABLE-SETTEE", 100, None))
            .await
            .unwrap();

        let error = s
            .bus
            .handle(ChangeBatchQuantity::new("nope", 50))
            .await
            .unwrap_err();

        assert!(
            matches!(&error, CommandError::Handler(AllocationError::UnknownBatch(b)) if b == "nope"),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "Unknown batch nope");
        assert_eq!(s.db.commits(), 1);
    }
}

mod messages {
    use super::*;

    #[test]
    fn create_batch_takes_ref_and_an_optional_eta() {
        let with_eta: CreateBatch = serde_json::from_value(
            json!({"ref": "b1", "sku": "LAMP", "qty": 10, "eta": "2024-03-01"}),
        )
        .unwrap();
        assert_eq!(with_eta, CreateBatch::new("b1", "LAMP", 10, Some(today())));

        let without: CreateBatch =
            serde_json::from_value(json!({"ref": "b1", "sku": "LAMP", "qty": 10})).unwrap();
        assert_eq!(without.eta, None);
    }

    #[test]
    fn names_are_stable() {
        use eda_core::Message;
        assert_eq!(CreateBatch::NAME, "allocation.create_batch");
        assert_eq!(Allocate::NAME, "allocation.allocate");
        assert_eq!(
            ChangeBatchQuantity::NAME,
            "allocation.change_batch_quantity"
        );
    }
}

/// The orders service's events: allocate a placed order, release a
/// cancelled one.
mod orders {
    use super::*;

    #[tokio::test]
    async fn a_placed_order_in_stock_is_allocated_line_by_line() {
        let s = bootstrap();
        s.add_batch("b1", "LAMP", 10).await;
        s.add_batch("b2", "CHAIR", 10).await;

        s.receive(placed("o1", &[("LAMP", 2), ("CHAIR", 3)])).await;

        assert_eq!(
            s.outbox(),
            [
                (
                    "allocation.allocated".to_owned(),
                    json!({"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"})
                ),
                (
                    "allocation.allocated".to_owned(),
                    json!({"orderid": "o1", "sku": "CHAIR", "qty": 3, "batchref": "b2"})
                ),
            ]
        );
        assert_eq!(
            (s.available("LAMP", "b1"), s.available("CHAIR", "b2")),
            (8, 7)
        );
        assert_eq!(
            views::allocations("o1", &s.bus).await.unwrap(),
            [
                Allocation::new("CHAIR", "b2"),
                Allocation::new("LAMP", "b1")
            ]
        );
    }

    #[tokio::test]
    async fn lines_that_cannot_be_allocated_fail_with_their_reason() {
        let s = bootstrap();
        s.add_batch("b1", "LAMP", 10).await;
        s.add_batch("b2", "CHAIR", 1).await;

        s.receive(placed("o1", &[("LAMP", 2), ("CHAIR", 3), ("NOPE", 1)]))
            .await;

        // The unit of work's own events come before the products'.
        assert_eq!(
            s.outbox(),
            [
                (
                    "allocation.allocation_failed".to_owned(),
                    json!({"orderid": "o1", "sku": "CHAIR", "qty": 3, "reason": "out_of_stock"})
                ),
                (
                    "allocation.allocation_failed".to_owned(),
                    json!({"orderid": "o1", "sku": "NOPE", "qty": 1, "reason": "unknown_sku"})
                ),
                (
                    "allocation.allocated".to_owned(),
                    json!({"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"})
                ),
                (
                    "allocation.out_of_stock".to_owned(),
                    json!({"sku": "CHAIR"})
                ),
            ]
        );
        assert_eq!(s.available("CHAIR", "b2"), 1);
        assert_eq!(
            s.notifier.sent_to(STOCK_ADDRESS),
            ["Out of stock for CHAIR"]
        );
    }

    #[tokio::test]
    async fn a_redelivered_order_is_allocated_once() {
        let s = bootstrap();
        s.add_batch("b1", "LAMP", 10).await;
        let metadata = Metadata::new();
        let body = br#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 2}]}"#;

        for _ in 0..2 {
            s.bus
                .handle_incoming("orders.order_placed", metadata, body)
                .await
                .unwrap();
        }

        assert_eq!(s.available("LAMP", "b1"), 8);
        assert_eq!(s.outbox().len(), 1, "one Allocated");
    }

    #[tokio::test]
    async fn a_cancelled_order_releases_its_allocations_and_only_them() {
        let s = bootstrap();
        s.add_batch("b1", "LAMP", 10).await;
        s.add_batch("b2", "CHAIR", 10).await;
        s.receive(placed("o1", &[("LAMP", 2), ("CHAIR", 3)])).await;
        s.receive(placed("o2", &[("LAMP", 4)])).await;
        let outbox = s.outbox().len();
        let commits = s.db.commits();

        s.receive(OrderCancelled {
            orderid: "o1".into(),
            reason: "out of stock: SOFA".into(),
            lines: vec![
                OrderLine::new("LAMP", 2),
                OrderLine::new("CHAIR", 3),
                OrderLine::new("SOFA", 1),
            ],
        })
        .await;

        assert_eq!(
            (s.available("LAMP", "b1"), s.available("CHAIR", "b2")),
            (6, 10)
        );
        let lamp = s.product("LAMP");
        let orders: Vec<_> = lamp.batches[0]
            .allocations()
            .iter()
            .map(|l| l.orderid.as_str())
            .collect();
        assert_eq!(orders, ["o2"]);
        assert_eq!(s.outbox().len(), outbox, "releasing publishes nothing");
        assert_eq!(views::allocations("o1", &s.bus).await.unwrap(), []);
        assert_eq!(
            views::allocations("o2", &s.bus).await.unwrap(),
            [Allocation::new("LAMP", "b1")]
        );
        // The release (both products in one unit of work), then the read
        // model's two removals.
        assert_eq!(s.db.commits(), commits + 3);
    }

    #[tokio::test]
    async fn a_product_holding_nothing_of_a_cancelled_order_is_not_written() {
        let s = bootstrap();
        s.add_batch("b1", "LAMP", 10).await;
        s.receive(placed("o2", &[("LAMP", 4)])).await;
        let version = s.product("LAMP").version_number;

        s.receive(OrderCancelled {
            orderid: "o1".into(),
            reason: "unknown sku: NOPE".into(),
            lines: vec![OrderLine::new("LAMP", 2), OrderLine::new("NOPE", 1)],
        })
        .await;

        assert_eq!(s.available("LAMP", "b1"), 6);
        assert_eq!(s.product("LAMP").version_number, version, "not written");
    }

    #[tokio::test]
    async fn a_refused_allocation_is_released_and_only_it() {
        let s = bootstrap();
        s.add_batch("b1", "LAMP", 10).await;
        s.add_batch("b2", "CHAIR", 10).await;
        s.receive(placed("o1", &[("LAMP", 2), ("CHAIR", 3)])).await;
        s.receive(placed("o2", &[("LAMP", 4)])).await;
        let refused = AllocationRefused {
            orderid: "o1".into(),
            sku: "LAMP".into(),
            qty: 2,
            batchref: "b1".into(),
        };

        s.receive(refused.clone()).await;
        assert_eq!(
            (s.available("LAMP", "b1"), s.available("CHAIR", "b2")),
            (6, 7),
            "o1's LAMP released; its CHAIR and o2's LAMP kept"
        );
        // Delivered again, or after the order's cancellation released it:
        // nothing more.
        s.receive(refused).await;
        assert_eq!(s.available("LAMP", "b1"), 6);
        assert_eq!(
            views::allocations("o1", &s.bus).await.unwrap(),
            [Allocation::new("CHAIR", "b2")]
        );
    }

    #[test]
    fn the_queue_takes_the_orders_events() {
        let consumed = bootstrap().bus.consumed_message_names();
        for name in [
            "orders.order_placed",
            "orders.order_cancelled",
            "orders.allocation_refused",
        ] {
            assert!(consumed.contains(&name), "{name} missing from {consumed:?}");
        }
    }

    #[test]
    fn names_are_stable() {
        use allocation::domain::commands::{AllocateOrder, DeallocateOrder};
        use eda_core::Message;
        assert_eq!(AllocateOrder::NAME, "allocation.allocate_order");
        assert_eq!(DeallocateOrder::NAME, "allocation.deallocate_order");
    }
}
