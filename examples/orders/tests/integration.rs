//! The orders service on each SQL database it runs on, the same scenarios
//! on each (a test per scenario and database: `round_trip::postgres`,
//! `round_trip::sqlite`): an order stored as a document by eda (no
//! repository), its round trip and version check, and the handlers with
//! the outbox and the inbox on a real database.
//!
//! Postgres is the one at 127.0.0.1:5432 or `DATABASE_URL`, a fresh schema
//! per test; its tests are skipped when it is unreachable, and fail under
//! `CI=true`. SQLite is a fresh file per test, in a temporary directory
//! removed afterwards.

use contracts::{Allocated, AllocationFailed, FailureReason, OrderLine};
use eda_core::sqlx;
use eda_core::testing::{TestPostgres, TestSqlite};
use eda_core::{CommandError, Envelope, Event, MessageBus, Metadata};
use orders::domain::commands::PlaceOrder;
use orders::domain::errors::OrderError;
use orders::domain::model::{Line, Order, Status};
use orders::service_layer::OrderTimeout;
use orders::service_layer::unit_of_work::OrdersUow;
use orders::views;

/// A SQL database with eda's tables (the service has none of its own), and
/// a bus on it.
enum Store {
    Postgres(TestPostgres),
    Sqlite(TestSqlite),
}

impl Store {
    /// `None`: Postgres is not reachable and the test is skipped.
    async fn postgres() -> Option<Store> {
        Some(Store::Postgres(TestPostgres::start().await?))
    }

    async fn sqlite() -> Store {
        Store::Sqlite(TestSqlite::start().await)
    }

    fn bus(&self) -> MessageBus {
        let builder = MessageBus::builder()
            .scope("orders")
            .adapter(OrderTimeout::default());
        match self {
            Store::Postgres(pg) => builder.adapter(pg.db.clone()),
            Store::Sqlite(file) => builder.adapter(file.db.clone()),
        }
        .build()
        .expect("the orders service is wired")
    }

    async fn stop(self) {
        match self {
            Store::Postgres(pg) => pg.drop_schema().await,
            Store::Sqlite(file) => file.cleanup().await,
        }
    }

    /// Runs a statement.
    async fn execute(&self, statement: &str) {
        match self {
            Store::Postgres(pg) => sqlx::query(statement).execute(pg.pool()).await.map(drop),
            Store::Sqlite(file) => sqlx::query(statement).execute(file.pool()).await.map(drop),
        }
        .unwrap();
    }

    /// The stored version and JSON of an order.
    async fn document(&self, orderid: &str) -> (u64, String) {
        const DOCUMENT: &str =
            "SELECT version, body FROM eda_aggregates WHERE aggregate = 'Order' AND id = ";
        let (version, body): (i64, String) = match self {
            Store::Postgres(pg) => {
                sqlx::query_as(&format!("{DOCUMENT}$1"))
                    .bind(orderid)
                    .fetch_one(pg.pool())
                    .await
            }
            Store::Sqlite(file) => {
                sqlx::query_as(&format!("{DOCUMENT}?1"))
                    .bind(orderid)
                    .fetch_one(file.pool())
                    .await
            }
        }
        .unwrap();
        (version as u64, body)
    }

    /// The names of the committed outbox rows to publish, in order (no
    /// relay runs here: they are unsent).
    async fn published(&self) -> Vec<String> {
        const OUTBOX: &str = "SELECT name FROM eda_outbox WHERE sent_at IS NULL ORDER BY position";
        match self {
            Store::Postgres(pg) => sqlx::query_scalar(OUTBOX).fetch_all(pg.pool()).await,
            Store::Sqlite(file) => sqlx::query_scalar(OUTBOX).fetch_all(file.pool()).await,
        }
        .unwrap()
    }
}

/// For each scenario (an `async fn(&Store)` below), a module of the same
/// name with a test on Postgres and one on SQLite.
macro_rules! on_sql_backends {
    ($($scenario:ident,)*) => {$(
        mod $scenario {
            use super::Store;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(s) = Store::postgres().await {
                    super::$scenario(&s).await;
                    s.stop().await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let s = Store::sqlite().await;
                super::$scenario(&s).await;
                s.stop().await;
            }
        }
    )*};
}

on_sql_backends!(
    round_trip,
    stored_as_a_document,
    two_orders_placed_at_once_with_one_id,
    an_order_is_confirmed_or_cancelled_through_the_bus,
    a_redelivered_event_is_handled_once,
    a_document_that_cannot_be_decoded_is_an_error_naming_its_field,
);

/// What an order holds, all of it (`Order` has no `==`: its events are not
/// comparable).
fn snapshot(order: &Order) -> (String, Status, Option<String>, Vec<Line>, u64) {
    (
        order.orderid.clone(),
        order.status(),
        order.reason().map(str::to_owned),
        order.lines().to_vec(),
        order.version,
    )
}

/// The committed order, read through a unit of work (and so through the
/// repository of the database).
async fn committed(bus: &MessageBus, orderid: &str) -> Order {
    views::order(orderid, bus)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no order {orderid}"))
}

/// An order is stored and read back as it was, at every stage of its life.
async fn round_trip(s: &Store) {
    let bus = s.bus();
    let lines = vec![OrderLine::new("LAMP", 2), OrderLine::new("CHAIR", 1)];
    let placed = Order::place("o1", lines).unwrap();
    let mut uow = bus.begin::<OrdersUow>().await.unwrap();
    uow.orders().add(placed.clone()).unwrap();
    uow.commit().await.unwrap();
    assert_eq!(snapshot(&committed(&bus, "o1").await), snapshot(&placed));

    let mut uow = bus.begin::<OrdersUow>().await.unwrap();
    let order = uow.orders().get(&"o1".to_owned()).await.unwrap().unwrap();
    order.record_allocation("LAMP", "b1");
    order.record_failure("CHAIR", FailureReason::OutOfStock);
    let expected = Order::restore(
        "o1",
        Status::Cancelled,
        Some("out of stock: CHAIR".into()),
        vec![
            Line {
                batchref: Some("b1".into()),
                ..Line::new("LAMP", 2)
            },
            Line::new("CHAIR", 1),
        ],
        1,
    );
    uow.commit().await.unwrap();
    assert_eq!(snapshot(&committed(&bus, "o1").await), snapshot(&expected));
    assert_eq!(
        views::order("nobody", &bus)
            .await
            .unwrap()
            .map(|o| o.version),
        None
    );
}

/// What eda stores for an order: its JSON, at the version its unit of
/// work raised; an order that did not change is not written again.
async fn stored_as_a_document(s: &Store) {
    let bus = s.bus();
    bus.handle(PlaceOrder::new("o1", vec![OrderLine::new("LAMP", 2)]))
        .await
        .unwrap();
    let (version, body) = s.document("o1").await;
    assert_eq!(version, 0);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "pending");
    assert_eq!(json["lines"][0]["sku"], "LAMP");

    // Allocation answers twice for the line: the second changes nothing.
    let allocated = Allocated {
        orderid: "o1".into(),
        sku: "LAMP".into(),
        qty: 2,
        batchref: "b1".into(),
    };
    receive(&bus, allocated.clone()).await;
    assert_eq!(s.document("o1").await.0, 1);
    receive(&bus, allocated).await;
    assert_eq!(s.document("o1").await.0, 1, "unchanged, not written");
    assert_eq!(committed(&bus, "o1").await.status(), Status::Confirmed);
}

/// Two units of work that change one order at once: the second to save it
/// conflicts (its command would run again). Postgres only: on SQLite a
/// unit of work takes the write lock when it begins, so two never hold an
/// order at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_change_is_a_conflict_on_postgres() {
    let Some(s) = Store::postgres().await else {
        return;
    };
    let bus = s.bus();
    bus.handle(PlaceOrder::new("o1", vec![OrderLine::new("LAMP", 2)]))
        .await
        .unwrap();
    let mut first = bus.begin::<OrdersUow>().await.unwrap();
    let mut second = bus.begin::<OrdersUow>().await.unwrap();
    let id = "o1".to_owned();
    first
        .orders()
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .record_allocation("LAMP", "b1");
    second
        .orders()
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .record_failure("LAMP", FailureReason::OutOfStock);
    first.commit().await.unwrap();
    let err = second.commit().await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let saved = committed(&bus, "o1").await;
    assert_eq!((saved.status(), saved.version), (Status::Confirmed, 1));
    s.stop().await;
}

/// Two orders placed at once with one id: the second insert fails on the
/// primary key, the bus runs the command again, and it finds the first.
async fn two_orders_placed_at_once_with_one_id(s: &Store) {
    let bus = s.bus();
    let place = |sku: &str| bus.handle(PlaceOrder::new("o1", vec![OrderLine::new(sku, 1)]));

    let (one, two) = tokio::join!(place("LAMP"), place("CHAIR"));

    let refused = [&one, &two]
        .iter()
        .filter(|r| matches!(r, Err(CommandError::Handler(OrderError::AlreadyPlaced(_)))))
        .count();
    assert_eq!(
        (one.is_ok() || two.is_ok(), refused),
        (true, 1),
        "{one:?} {two:?}"
    );
    assert_eq!(s.published().await, ["orders.order_placed"]);
}

/// Handles an event of allocation, and checks that its handlers succeeded.
async fn receive<E: Event>(bus: &MessageBus, event: E) {
    let report = bus.publish(Envelope::new(event)).await;
    assert!(report.is_ok(), "{:?}", report.failures);
}

/// The handlers on a real database: the outbox holds what is to be
/// published, in the transactions of the changes.
async fn an_order_is_confirmed_or_cancelled_through_the_bus(s: &Store) {
    let bus = s.bus();
    for orderid in ["o1", "o2"] {
        bus.handle(PlaceOrder::new(orderid, vec![OrderLine::new("LAMP", 2)]))
            .await
            .unwrap();
    }
    receive(
        &bus,
        Allocated {
            orderid: "o1".into(),
            sku: "LAMP".into(),
            qty: 2,
            batchref: "b1".into(),
        },
    )
    .await;
    for _ in 0..2 {
        receive(
            &bus,
            AllocationFailed {
                orderid: "o2".into(),
                sku: "LAMP".into(),
                qty: 2,
                reason: FailureReason::OutOfStock,
            },
        )
        .await;
    }

    assert_eq!(committed(&bus, "o1").await.status(), Status::Confirmed);
    let cancelled = committed(&bus, "o2").await;
    assert_eq!(cancelled.status(), Status::Cancelled);
    assert_eq!(cancelled.reason(), Some("out of stock: LAMP"));
    assert_eq!(
        s.published().await,
        [
            "orders.order_placed",
            "orders.order_placed",
            "orders.order_cancelled"
        ]
    );
}

/// A message from the broker delivered twice: the inbox, in the handler's
/// transaction, skips the second delivery.
async fn a_redelivered_event_is_handled_once(s: &Store) {
    let bus = s.bus();
    bus.handle(PlaceOrder::new("o1", vec![OrderLine::new("LAMP", 2)]))
        .await
        .unwrap();
    let metadata = Metadata::new();
    let body = br#"{"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"}"#;
    let deliver = || bus.handle_incoming("allocation.allocated", metadata, body);

    let (one, two) = tokio::join!(deliver(), deliver());
    one.unwrap();
    two.unwrap();

    let order = committed(&bus, "o1").await;
    assert_eq!((order.status(), order.version), (Status::Confirmed, 1));
}

/// A stored order the model cannot hold is an error that says which and
/// where, not a panic or a default.
async fn a_document_that_cannot_be_decoded_is_an_error_naming_its_field(s: &Store) {
    let bus = s.bus();
    s.execute(
        "INSERT INTO eda_aggregates (aggregate, id, version, body) VALUES ('Order', 'bad-lines', 0, \
         '{\"orderid\": \"bad-lines\", \"status\": \"pending\", \"reason\": null, \"lines\": \"not json\", \"version\": 0, \"events\": null}')",
    )
    .await;
    let error = views::order("bad-lines", &bus)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Order bad-lines") && error.contains("lines: invalid type"),
        "{error}"
    );
}
