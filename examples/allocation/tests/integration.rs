//! The allocation service on each database it runs on, the same scenario
//! bodies on each (a test per scenario and backend:
//! `repository_round_trip::memory`, `repository_round_trip::postgres`,
//! `repository_round_trip::sqlite`): APwP's integration tests
//! (`test_repository.py`, `test_uow.py`, `test_views.py`) and what the
//! framework promises on a real database (the outbox, the inbox, version
//! checks under concurrency).
//!
//! Postgres is the one at 127.0.0.1:5432 or `DATABASE_URL`, a fresh schema
//! per test; its tests are skipped when it is unreachable, and fail under
//! `CI=true`. SQLite is a fresh file per test, in a temporary directory
//! removed afterwards.

use std::future::Future;
use std::time::{Duration, Instant};

use allocation::adapters::notifications::{FakeNotifier, Notifications};
use allocation::adapters::{postgres, sqlite};
use allocation::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use allocation::domain::events::Allocated;
use allocation::domain::model::{Batch, OrderLine, Product};
use allocation::service_layer::STOCK_ADDRESS;
use allocation::service_layer::unit_of_work::{AllocationUow, ByBatchref};
use allocation::views::{self, Allocation};
use chrono::NaiveDate;
use contracts::{OrderCancelled, OrderPlaced};
use eda_core::backend::{Database, OutboxWrite};
use eda_core::sqlx::{self, Row};
use eda_core::testing::{TestPostgres, TestSqlite};
use eda_core::{
    Adapter, CommandError, Envelope, Error, ExternalMessage, InMemoryDatabase, Message, MessageBus,
    Metadata, RepositoryError, RetryPolicy,
};
use serde_json::json;

/// The databases the service runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Postgres,
    Sqlite,
}

/// The database under a test's bus, for looking at it directly.
enum Store {
    Memory(InMemoryDatabase),
    Postgres(TestPostgres),
    Sqlite(TestSqlite),
}

/// The service on one database, with a fake notifier.
struct Service {
    bus: MessageBus,
    store: Store,
    notifier: FakeNotifier,
}

impl Service {
    /// `None`: the database is not reachable and the test is skipped.
    async fn start(backend: Backend) -> Option<Service> {
        let store = match backend {
            Backend::Memory => Store::Memory(InMemoryDatabase::new()),
            Backend::Postgres => {
                let pg = TestPostgres::start().await?;
                postgres::migrate(pg.pool())
                    .await
                    .expect("the service's tables");
                Store::Postgres(pg)
            }
            Backend::Sqlite => {
                let file = TestSqlite::start().await;
                sqlite::migrate(file.pool())
                    .await
                    .expect("the service's tables");
                Store::Sqlite(file)
            }
        };
        let notifier = FakeNotifier::new();
        let bus = bus(&store, &notifier, None);
        Some(Service {
            bus,
            store,
            notifier,
        })
    }

    /// Another bus on the same database and notifier, with this command
    /// retry policy.
    fn bus_with(&self, command_retry: RetryPolicy) -> MessageBus {
        bus(&self.store, &self.notifier, Some(command_retry))
    }

    async fn stop(self) {
        match self.store {
            Store::Memory(_) => {}
            Store::Postgres(pg) => pg.drop_schema().await,
            Store::Sqlite(file) => file.cleanup().await,
        }
    }

    /// The committed product, read through a unit of work (and so through
    /// the repository of the database).
    async fn product(&self, sku: &str) -> Option<Product> {
        let mut uow = self.bus.begin::<AllocationUow>().await.unwrap();
        uow.products().read(&sku.to_owned()).await.unwrap().cloned()
    }

    /// The committed outbox rows to publish (the service's external
    /// events; the table also journals the internal events that have
    /// handlers here, stored as not to publish), as (name, JSON body), in
    /// order. No relay runs in these tests: what is to publish is unsent.
    async fn outbox(&self) -> Vec<(String, serde_json::Value)> {
        const OUTBOX: &str =
            "SELECT name, payload FROM eda_outbox WHERE sent_at IS NULL ORDER BY position";
        let rows: Vec<(String, String)> = match &self.store {
            Store::Memory(db) => {
                return db
                    .outbox()
                    .into_iter()
                    .map(|m| (m.name, serde_json::from_slice(&m.payload).unwrap()))
                    .collect();
            }
            Store::Postgres(pg) => sqlx::query_as(OUTBOX).fetch_all(pg.pool()).await,
            Store::Sqlite(file) => sqlx::query_as(OUTBOX).fetch_all(file.pool()).await,
        }
        .unwrap();
        rows.into_iter()
            .map(|(name, payload)| (name, serde_json::from_str(&payload).unwrap()))
            .collect()
    }

    /// Runs a statement on the SQL database.
    async fn execute(&self, statement: &str) {
        match &self.store {
            Store::Memory(_) => unreachable!("no SQL in memory"),
            Store::Postgres(pg) => sqlx::query(statement).execute(pg.pool()).await.map(drop),
            Store::Sqlite(file) => sqlx::query(statement).execute(file.pool()).await.map(drop),
        }
        .unwrap();
    }

    /// A `count(*)` on the SQL database.
    async fn count(&self, query: &str) -> i64 {
        match &self.store {
            Store::Memory(_) => unreachable!("no SQL in memory"),
            Store::Postgres(pg) => sqlx::query_scalar(query).fetch_one(pg.pool()).await,
            Store::Sqlite(file) => sqlx::query_scalar(query).fetch_one(file.pool()).await,
        }
        .unwrap()
    }

    /// The version of an order's read model row (a save adds one).
    async fn view_version(&self, orderid: &str) -> i64 {
        let query = "SELECT version FROM allocations_view_orders WHERE orderid = $1";
        match &self.store {
            Store::Memory(_) => unreachable!("no SQL in memory"),
            Store::Postgres(pg) => {
                sqlx::query_scalar(query)
                    .bind(orderid)
                    .fetch_one(pg.pool())
                    .await
            }
            Store::Sqlite(file) => {
                sqlx::query_scalar(query)
                    .bind(orderid)
                    .fetch_one(file.pool())
                    .await
            }
        }
        .unwrap()
    }

    /// The batches a line of this order and product is allocated to, read
    /// from the tables (APwP's `get_allocated_batch_ref`).
    async fn allocated_batchrefs(&self, orderid: &str, sku: &str) -> Vec<String> {
        match &self.store {
            Store::Memory(db) => db
                .get::<Product>(sku)
                .map(|p| {
                    p.batches
                        .iter()
                        .filter(|b| b.allocations().iter().any(|l| l.orderid == orderid))
                        .map(|b| b.reference.clone())
                        .collect()
                })
                .unwrap_or_default(),
            Store::Postgres(pg) => sqlx::query_scalar(
                "SELECT batchref FROM allocations WHERE orderid = $1 AND sku = $2 ORDER BY batchref",
            )
            .bind(orderid)
            .bind(sku)
            .fetch_all(pg.pool())
            .await
            .unwrap(),
            Store::Sqlite(file) => sqlx::query_scalar(
                "SELECT batchref FROM allocations WHERE orderid = ?1 AND sku = ?2 ORDER BY batchref",
            )
            .bind(orderid)
            .bind(sku)
            .fetch_all(file.pool())
            .await
            .unwrap(),
        }
    }

    /// Per batch of the product: (reference, purchased, allocated), read
    /// from the tables.
    async fn stock(&self, sku: &str) -> Vec<(String, i64, i64)> {
        match &self.store {
            Store::Memory(db) => db
                .get::<Product>(sku)
                .map(|p| {
                    p.batches
                        .iter()
                        .map(|b| {
                            (
                                b.reference.clone(),
                                i64::from(b.purchased_quantity()),
                                b.allocated_quantity() as i64,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Store::Postgres(pg) => sqlx::query(
                "SELECT b.reference, b.purchased_quantity, COALESCE(SUM(a.qty), 0)::int8 AS allocated \
                 FROM batches b LEFT JOIN allocations a ON a.batchref = b.reference \
                 WHERE b.sku = $1 GROUP BY b.reference, b.position ORDER BY b.position",
            )
            .bind(sku)
            .fetch_all(pg.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
            Store::Sqlite(file) => sqlx::query(
                "SELECT b.reference, b.purchased_quantity, COALESCE(SUM(a.qty), 0) AS allocated \
                 FROM batches b LEFT JOIN allocations a ON a.batchref = b.reference \
                 WHERE b.sku = ?1 GROUP BY b.reference, b.position ORDER BY b.position",
            )
            .bind(sku)
            .fetch_all(file.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        }
    }
}

/// The allocation service's bus on this database, with this command retry
/// policy (`None`: the default one).
fn bus(store: &Store, notifier: &FakeNotifier, command_retry: Option<RetryPolicy>) -> MessageBus {
    fn build(db: impl Adapter, n: &FakeNotifier, retry: Option<RetryPolicy>) -> MessageBus {
        let mut builder = MessageBus::builder()
            .adapter(db)
            .adapter(Notifications::new(n.clone()))
            .scope("allocation");
        if let Some(retry) = retry {
            builder = builder.command_retry(retry);
        }
        builder.build().expect("the allocation service is wired")
    }
    match store {
        Store::Memory(db) => build(db.clone(), notifier, command_retry),
        Store::Postgres(pg) => build(pg.db.clone(), notifier, command_retry),
        Store::Sqlite(file) => build(file.db.clone(), notifier, command_retry),
    }
}

/// Runs a scenario on a fresh service on `backend`, then drops its data.
async fn run(backend: Backend, scenario: impl AsyncFnOnce(&Service)) {
    let Some(s) = Service::start(backend).await else {
        return;
    };
    scenario(&s).await;
    s.stop().await;
}

/// One test of `scenario` on `backend`. Multi-threaded runtimes, so that
/// concurrent handlers really run in parallel.
macro_rules! backend_test {
    ($test:ident, $backend:ident, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            run(Backend::$backend, super::$scenario).await
        }
    };
}

/// For each scenario (an `async fn(&Service)` below), a module of the same
/// name with one test per backend.
macro_rules! on_every_backend {
    ($($scenario:ident,)*) => {$(
        mod $scenario {
            use super::{Backend, run};
            backend_test!(memory, Memory, $scenario);
            backend_test!(postgres, Postgres, $scenario);
            backend_test!(sqlite, Sqlite, $scenario);
        }
    )*};
}

/// The same, for what only a SQL database has: one test on Postgres, one on
/// SQLite.
macro_rules! on_sql_backends {
    ($($scenario:ident,)*) => {$(
        mod $scenario {
            use super::{Backend, run};
            backend_test!(postgres, Postgres, $scenario);
            backend_test!(sqlite, Sqlite, $scenario);
        }
    )*};
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()
}

/// What a product holds, all of it (`Batch`'s `==` compares references
/// only, and `Product` has none).
type Snapshot = (
    String,
    u64,
    Vec<(String, String, u32, Option<NaiveDate>, Vec<OrderLine>)>,
);

fn snapshot(p: &Product) -> Snapshot {
    let batches = p
        .batches
        .iter()
        .map(|b| {
            (
                b.reference.clone(),
                b.sku.clone(),
                b.purchased_quantity(),
                b.eta,
                b.allocations().to_vec(),
            )
        })
        .collect();
    (p.sku.clone(), p.version_number, batches)
}

/// How long `f` takes, printed (`--nocapture` shows it).
async fn timed<T>(what: &str, f: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    eprintln!("{what}: {:?}", start.elapsed());
    out
}

on_every_backend!(
    repository_round_trip,
    get_product_by_batchref,
    uow_can_retrieve_a_batch_and_allocate_to_it,
    rolls_back_uncommitted_work_by_default,
    rolls_back_on_error,
    views_list_the_allocations_of_an_order,
    views_follow_a_deallocation,
    a_cancelled_order_is_released_from_the_tables_and_the_view,
    the_outbox_row_exists_if_and_only_if_the_transaction_committed,
    a_redelivered_message_is_handled_once,
    concurrent_updates_to_a_product_are_detected,
    two_concurrent_allocations_lose_nothing,
    fifty_concurrent_allocations_of_twenty_units_never_oversell,
    an_event_committed_but_never_dispatched_is_recovered_once,
);

/// APwP `test_repository_can_save_a_batch` and `…_retrieve_a_batch_with_allocations`:
/// what is added comes back the same, the order of batches and of lines
/// included.
async fn repository_round_trip(s: &Service) {
    let sku = "RETRO-CLOCK";
    let mut product = Product::new(
        sku,
        vec![
            Batch::new("shipment", sku, 100, Some(today())),
            Batch::new("warehouse", sku, 10, None),
            Batch::new("empty", sku, 0, None),
        ],
    );
    for (order, qty) in [("o2", 7), ("o1", 3), ("o3", 50)] {
        product.allocate(OrderLine::new(order, sku, qty)).unwrap();
    }
    let expected = snapshot(&product);

    let mut uow = s.bus.begin::<AllocationUow>().await.unwrap();
    uow.products().add(product).unwrap();
    uow.commit().await.unwrap();

    let loaded = s.product(sku).await.expect("saved");
    assert_eq!(snapshot(&loaded), expected);
    assert_eq!(s.product("NOPE").await.map(|p| p.sku), None);
}

/// APwP `test_get_by_batchref`.
async fn get_product_by_batchref(s: &Service) {
    let mut uow = s.bus.begin::<AllocationUow>().await.unwrap();
    uow.products()
        .add(Product::new(
            "sku1",
            vec![
                Batch::new("b1", "sku1", 100, None),
                Batch::new("b2", "sku1", 100, None),
            ],
        ))
        .unwrap();
    uow.products()
        .add(Product::new(
            "sku2",
            vec![Batch::new("b3", "sku2", 100, None)],
        ))
        .unwrap();
    uow.commit().await.unwrap();

    let mut uow = s.bus.begin::<AllocationUow>().await.unwrap();
    let found = uow.products().find(&ByBatchref("b2".into())).await.unwrap();
    assert_eq!(found.map(|p| p.sku.clone()).as_deref(), Some("sku1"));
    let found = uow.products().find(&ByBatchref("b3".into())).await.unwrap();
    assert_eq!(found.map(|p| p.sku.clone()).as_deref(), Some("sku2"));
    let found = uow.products().find(&ByBatchref("b4".into())).await.unwrap();
    assert!(found.is_none());
}

/// APwP `test_uow_can_retrieve_a_batch_and_allocate_to_it`.
async fn uow_can_retrieve_a_batch_and_allocate_to_it(s: &Service) {
    let sku = "HIPSTER-WORKBENCH";
    s.bus
        .handle(CreateBatch::new("batch1", sku, 100, None))
        .await
        .unwrap();

    let mut uow = s.bus.begin::<AllocationUow>().await.unwrap();
    let product = uow.products().get(&sku.to_owned()).await.unwrap().unwrap();
    product.allocate(OrderLine::new("o1", sku, 10));
    uow.commit().await.unwrap();

    assert_eq!(s.allocated_batchrefs("o1", sku).await, ["batch1"]);
    assert_eq!(s.product(sku).await.unwrap().version_number, 1);
}

/// APwP `test_rolls_back_uncommitted_work_by_default`.
async fn rolls_back_uncommitted_work_by_default(s: &Service) {
    let mut uow = s.bus.begin::<AllocationUow>().await.unwrap();
    uow.products()
        .add(Product::new(
            "MEDIUM-PLINTH",
            vec![Batch::new("b1", "MEDIUM-PLINTH", 100, None)],
        ))
        .unwrap();
    drop(uow);

    assert!(s.product("MEDIUM-PLINTH").await.is_none());
    assert!(s.stock("MEDIUM-PLINTH").await.is_empty());
}

/// APwP `test_rolls_back_on_error`.
async fn rolls_back_on_error(s: &Service) {
    #[derive(Debug, PartialEq)]
    struct MyError;

    async fn add_then_fail(bus: &MessageBus) -> Result<(), MyError> {
        let mut uow = bus.begin::<AllocationUow>().await.unwrap();
        uow.products()
            .add(Product::new(
                "LARGE-FORK",
                vec![Batch::new("b1", "LARGE-FORK", 100, None)],
            ))
            .unwrap();
        Err(MyError)
    }

    assert_eq!(add_then_fail(&s.bus).await, Err(MyError));
    assert!(s.product("LARGE-FORK").await.is_none());
    assert!(s.stock("LARGE-FORK").await.is_empty());
}

/// APwP `test_allocations_view`: an order's allocations, not another
/// order's.
async fn views_list_the_allocations_of_an_order(s: &Service) {
    let bus = &s.bus;
    bus.handle(CreateBatch::new("sku1batch", "sku1", 50, None))
        .await
        .unwrap();
    bus.handle(CreateBatch::new("sku2batch", "sku2", 50, Some(today())))
        .await
        .unwrap();
    bus.handle(Allocate::new("order1", "sku1", 20))
        .await
        .unwrap();
    bus.handle(Allocate::new("order1", "sku2", 20))
        .await
        .unwrap();
    // A spurious batch and order, to make sure we get the right ones.
    bus.handle(CreateBatch::new(
        "sku1batch-later",
        "sku1",
        50,
        Some(today()),
    ))
    .await
    .unwrap();
    bus.handle(Allocate::new("otherorder", "sku1", 30))
        .await
        .unwrap();
    bus.handle(Allocate::new("otherorder", "sku2", 10))
        .await
        .unwrap();

    assert_eq!(
        views::allocations("order1", bus).await.unwrap(),
        [
            Allocation::new("sku1", "sku1batch"),
            Allocation::new("sku2", "sku2batch")
        ]
    );
    assert_eq!(views::allocations("nobody", bus).await.unwrap(), []);
}

/// APwP `test_deallocation`: after `change_batch_quantity`, the
/// reallocated line shows its new batch, and only it.
async fn views_follow_a_deallocation(s: &Service) {
    let bus = &s.bus;
    bus.handle(CreateBatch::new("b1", "sku1", 50, None))
        .await
        .unwrap();
    bus.handle(CreateBatch::new("b2", "sku1", 50, Some(today())))
        .await
        .unwrap();
    bus.handle(Allocate::new("o1", "sku1", 40)).await.unwrap();
    assert_eq!(
        views::allocations("o1", bus).await.unwrap(),
        [Allocation::new("sku1", "b1")]
    );

    bus.handle(ChangeBatchQuantity::new("b1", 10))
        .await
        .unwrap();

    assert_eq!(
        views::allocations("o1", bus).await.unwrap(),
        [Allocation::new("sku1", "b2")]
    );
    // The tables agree: the line left b1 and went to b2.
    assert_eq!(s.allocated_batchrefs("o1", "sku1").await, ["b2"]);
    assert_eq!(
        s.stock("sku1").await,
        [("b1".to_owned(), 10, 0), ("b2".to_owned(), 50, 40)]
    );
}

/// An order placed then cancelled in the orders service: its lines leave
/// the tables (the first of a batch's lines, so the others move up), the
/// other order's stay, and the view follows.
async fn a_cancelled_order_is_released_from_the_tables_and_the_view(s: &Service) {
    let bus = &s.bus;
    bus.handle(CreateBatch::new("b1", "LAMP", 10, None))
        .await
        .unwrap();
    bus.handle(CreateBatch::new("b2", "CHAIR", 10, None))
        .await
        .unwrap();
    let lines = vec![
        contracts::OrderLine::new("LAMP", 2),
        contracts::OrderLine::new("CHAIR", 3),
    ];
    for orderid in ["o1", "o2"] {
        let placed = OrderPlaced {
            orderid: orderid.into(),
            lines: lines.clone(),
        };
        assert!(bus.publish(Envelope::new(placed)).await.is_ok());
    }
    assert_eq!(s.stock("LAMP").await, [("b1".to_owned(), 10, 4)]);

    let cancelled = OrderCancelled {
        orderid: "o1".into(),
        reason: "out of stock: SOFA".into(),
        lines,
    };
    assert!(bus.publish(Envelope::new(cancelled)).await.is_ok());

    assert_eq!(s.stock("LAMP").await, [("b1".to_owned(), 10, 2)]);
    assert_eq!(s.stock("CHAIR").await, [("b2".to_owned(), 10, 3)]);
    assert_eq!(
        s.allocated_batchrefs("o1", "LAMP").await,
        Vec::<String>::new()
    );
    assert_eq!(s.allocated_batchrefs("o2", "LAMP").await, ["b1"]);
    assert_eq!(views::allocations("o1", bus).await.unwrap(), []);
    assert_eq!(
        views::allocations("o2", bus).await.unwrap(),
        [
            Allocation::new("CHAIR", "b2"),
            Allocation::new("LAMP", "b1")
        ]
    );
}

/// The outbox row of an external event exists if and only if its
/// transaction committed.
async fn the_outbox_row_exists_if_and_only_if_the_transaction_committed(s: &Service) {
    let sku = "LAMP";
    s.bus
        .handle(CreateBatch::new("b1", sku, 100, None))
        .await
        .unwrap();
    enum End {
        Commit,
        Rollback,
        Drop,
    }
    let allocate = async |orderid: &str, end: End| {
        let mut uow = s.bus.begin::<AllocationUow>().await.unwrap();
        let product = uow.products().get(&sku.to_owned()).await.unwrap().unwrap();
        product.allocate(OrderLine::new(orderid, sku, 1)).unwrap();
        match end {
            End::Commit => uow.commit().await.unwrap(),
            End::Rollback => uow.rollback().await.unwrap(),
            End::Drop => drop(uow),
        }
    };

    allocate("dropped", End::Drop).await;
    allocate("rolled-back", End::Rollback).await;
    s.bus
        .handle(Allocate::new("failed", "NO-SUCH-SKU", 1))
        .await
        .unwrap_err();
    assert_eq!(s.outbox().await, []);

    allocate("committed", End::Commit).await;
    assert_eq!(
        s.outbox().await,
        [(
            "allocation.allocated".to_owned(),
            json!({"orderid": "committed", "sku": sku, "qty": 1, "batchref": "b1"})
        )]
    );
    assert_eq!(s.allocated_batchrefs("committed", sku).await, ["b1"]);
    assert_eq!(
        s.allocated_batchrefs("dropped", sku).await,
        Vec::<String>::new()
    );
}

/// A message delivered twice (same metadata: same message id), even at
/// the same time, is handled once.
async fn a_redelivered_message_is_handled_once(s: &Service) {
    s.bus
        .handle(CreateBatch::new("b1", "LAMP", 100, None))
        .await
        .unwrap();
    let metadata = Metadata::new();
    let body = br#"{"orderid": "o1", "sku": "LAMP", "qty": 10}"#;
    let deliver = || s.bus.handle_incoming("allocation.allocate", metadata, body);

    let (one, two) = tokio::join!(deliver(), deliver());
    one.unwrap();
    two.unwrap();
    deliver().await.unwrap();

    assert_eq!(s.stock("LAMP").await, [("b1".to_owned(), 100, 10)]);
    assert_eq!(s.product("LAMP").await.unwrap().version_number, 1);
    assert_eq!(s.outbox().await.len(), 1);
    assert_eq!(
        views::allocations("o1", &s.bus).await.unwrap(),
        [Allocation::new("LAMP", "b1")]
    );
}

/// APwP `test_concurrent_updates_to_version_are_not_allowed`: two units
/// of work load the same product; the second to commit is refused, and
/// the first's change stays.
///
/// On SQLite two units of work cannot hold the product at once: each takes
/// the write lock when it begins, so the second waits for the first to end,
/// then loads what it committed, and both changes stay. (The version check
/// behind the lock is tested in `sqlite_tables`.)
async fn concurrent_updates_to_a_product_are_detected(s: &Service) {
    let sku = "SCANDI-PEN";
    s.bus
        .handle(CreateBatch::new("b1", sku, 100, None))
        .await
        .unwrap();

    let mut one = s.bus.begin::<AllocationUow>().await.unwrap();
    if let Store::Sqlite(_) = s.store {
        let p1 = one.products().get(&sku.to_owned()).await.unwrap().unwrap();
        p1.allocate(OrderLine::new("o1", sku, 10)).unwrap();
        let bus = s.bus.clone();
        let two = tokio::spawn(async move {
            let mut two = bus.begin::<AllocationUow>().await?;
            let p2 = two.products().get(&sku.to_owned()).await?.unwrap();
            let loaded = p2.version_number;
            p2.allocate(OrderLine::new("o2", sku, 10)).unwrap();
            two.commit().await?;
            Ok::<_, eda_core::Error>(loaded)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!two.is_finished(), "the second waits for the first");

        one.commit().await.unwrap();

        let loaded = two
            .await
            .unwrap()
            .expect("the second commits after the first");
        assert_eq!(loaded, 1, "it loaded the first's change");
        assert_eq!(s.product(sku).await.unwrap().version_number, 2);
        assert_eq!(s.stock(sku).await, [("b1".to_owned(), 100, 20)]);
        return;
    }
    let mut two = s.bus.begin::<AllocationUow>().await.unwrap();
    let p1 = one.products().get(&sku.to_owned()).await.unwrap().unwrap();
    p1.allocate(OrderLine::new("o1", sku, 10)).unwrap();
    let p2 = two.products().get(&sku.to_owned()).await.unwrap().unwrap();
    p2.allocate(OrderLine::new("o2", sku, 10)).unwrap();

    one.commit().await.unwrap();
    let error = two.commit().await.unwrap_err();

    assert!(error.is_conflict(), "{error}");
    assert_eq!(s.product(sku).await.unwrap().version_number, 1);
    assert_eq!(s.stock(sku).await, [("b1".to_owned(), 100, 10)]);
    assert_eq!(s.allocated_batchrefs("o2", sku).await, Vec::<String>::new());
}

/// Two allocations of one product at once, through the bus: both land
/// (the loser of the race is retried), and the version grows by two.
async fn two_concurrent_allocations_lose_nothing(s: &Service) {
    let sku = "SCANDI-PEN";
    s.bus
        .handle(CreateBatch::new("b1", sku, 100, None))
        .await
        .unwrap();

    let (one, two) = tokio::join!(
        s.bus.handle(Allocate::new("o1", sku, 10)),
        s.bus.handle(Allocate::new("o2", sku, 10)),
    );

    assert_eq!(one.unwrap().as_deref(), Some("b1"));
    assert_eq!(two.unwrap().as_deref(), Some("b1"));
    assert_eq!(s.product(sku).await.unwrap().version_number, 2);
    assert_eq!(s.stock(sku).await, [("b1".to_owned(), 100, 20)]);
    assert_eq!(s.outbox().await.len(), 2);
}

/// 50 orders of one unit race for 20 units: exactly 20 get a batch, 30
/// are told it is out of stock, nothing is oversold.
///
/// Every one of the 50 commands commits (an out-of-stock answer saves
/// the product too, for its `OutOfStock` event, so that it is checked
/// against the version like an allocation), and one product's commits
/// happen one at a time: a command can lose dozens of races. The
/// default policy (5 attempts) would let most of them fail with a
/// conflict; this one allows 100 attempts, 2 ms to 50 ms apart with
/// jitter, far more than the race needs.
async fn fifty_concurrent_allocations_of_twenty_units_never_oversell(s: &Service) {
    let sku = "POPULAR-CURTAINS";
    s.bus
        .handle(CreateBatch::new("b1", sku, 20, None))
        .await
        .unwrap();
    let bus = s.bus_with(
        RetryPolicy::new(100).backoff(Duration::from_millis(2), Duration::from_millis(50)),
    );

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let bus = bus.clone();
        tasks.spawn(async move { bus.handle(Allocate::new(format!("order{i}"), sku, 1)).await });
    }
    let results = timed("50 concurrent allocations", tasks.join_all()).await;
    eprintln!(
        "  {} version conflicts retried",
        bus.metrics().command_conflicts
    );

    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("no conflict left"))
        .collect();
    let allocated = results
        .iter()
        .filter(|r| r.as_deref() == Some("b1"))
        .count();
    let out_of_stock = results.iter().filter(|r| r.is_none()).count();
    assert_eq!((allocated, out_of_stock), (20, 30));
    assert_eq!(
        s.stock(sku).await,
        [("b1".to_owned(), 20, 20)],
        "never oversold"
    );
    assert_eq!(
        s.product(sku).await.unwrap().version_number,
        50,
        "one version per commit: 50 commands, each committed once"
    );
    let published: Vec<String> = s.outbox().await.into_iter().map(|(name, _)| name).collect();
    let count = |name: &str| published.iter().filter(|n| *n == name).count();
    assert_eq!(count("allocation.allocated"), 20);
    assert_eq!(count("allocation.out_of_stock"), 30);
    assert_eq!(published.len(), 50);
    assert_eq!(s.notifier.sent_to(STOCK_ADDRESS).len(), 30);
    let mut viewed = 0;
    for i in 0..50 {
        viewed += views::allocations(&format!("order{i}"), &s.bus)
            .await
            .unwrap()
            .len();
    }
    assert_eq!(viewed, 20);
}

/// The dispatch journal: an event with handlers in the service (the read
/// model's) is marked dispatched once they ran, so the recovery finds
/// nothing; an event whose process died between its commit and its handlers
/// (simulated: written to the journal, never dispatched) is handled by the
/// recovery, once, and again only when its mark was lost, where the read
/// model's inbox keeps it from being applied twice.
async fn an_event_committed_but_never_dispatched_is_recovered_once(s: &Service) {
    let bus = &s.bus;
    bus.handle(CreateBatch::new("b1", "sku1", 50, None))
        .await
        .unwrap();
    bus.handle(Allocate::new("o1", "sku1", 5)).await.unwrap();
    // Out of stock: an internal event, with a handler without a unit of work.
    bus.handle(Allocate::new("o-big", "sku1", 1000))
        .await
        .unwrap();
    assert_eq!(s.notifier.sent_to(STOCK_ADDRESS).len(), 1);
    assert_eq!(
        bus.recover_undispatched(Duration::ZERO).await.unwrap(),
        0,
        "dispatched and marked"
    );
    let db: &dyn Database = match &s.store {
        Store::Memory(_) => return, // nothing outlives its process
        Store::Postgres(pg) => &pg.db,
        Store::Sqlite(file) => &file.db,
    };
    // Its handlers ran, but the mark was lost (a crash right after them):
    // dispatched again, and skipped by the read model's handler (its
    // inbox, recorded when it ran): the view is not saved again.
    // A handler without a unit of work has no inbox: it runs again (at
    // least once).
    let version = s.view_version("o1").await;
    s.execute("UPDATE eda_outbox SET dispatched_at = NULL")
        .await;
    assert_eq!(bus.recover_undispatched(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(s.view_version("o1").await, version);
    assert_eq!(s.notifier.sent_to(STOCK_ADDRESS).len(), 2);

    let event = Allocated {
        orderid: "o2".into(),
        sku: "sku1".into(),
        qty: 5,
        batchref: "b1".into(),
    };
    let message = ExternalMessage {
        name: Allocated::NAME.into(),
        metadata: Metadata::new(),
        payload: serde_json::to_vec(&event).unwrap(),
        trace: Default::default(),
    };
    let id = message.metadata.message_id;
    let mut tx = db.begin().await.unwrap();
    tx.write_events(&[OutboxWrite {
        message,
        publish: true,
        dispatch: true,
    }])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(views::allocations("o2", bus).await.unwrap(), []);

    assert_eq!(
        bus.recover_undispatched(Duration::from_secs(60))
            .await
            .unwrap(),
        0,
        "younger than asked: perhaps its process is still at it"
    );
    assert_eq!(bus.recover_undispatched(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(
        views::allocations("o2", bus).await.unwrap(),
        [Allocation::new("sku1", "b1")]
    );
    assert_eq!(bus.recover_undispatched(Duration::ZERO).await.unwrap(), 0);
    let version = s.view_version("o2").await;

    // The mark lost in a crash: dispatched again, and skipped by the read
    // model's handler (its inbox): the view is not saved again.
    s.execute(&format!(
        "UPDATE eda_outbox SET dispatched_at = NULL WHERE message_id = '{}'",
        id.as_uuid()
    ))
    .await;
    assert_eq!(bus.recover_undispatched(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(s.view_version("o2").await, version);
    assert_eq!(
        views::allocations("o2", bus).await.unwrap(),
        [Allocation::new("sku1", "b1")]
    );

    // An event this service has no handler for (a newer version's, or
    // another service's on the same tables) is left for whoever handles it.
    let foreign = ExternalMessage {
        name: "billing.invoiced".into(),
        metadata: Metadata::new(),
        payload: b"{}".to_vec(),
        trace: Default::default(),
    };
    let mut tx = db.begin().await.unwrap();
    tx.write_events(&[OutboxWrite {
        message: foreign,
        publish: false,
        dispatch: true,
    }])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(bus.recover_undispatched(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(
        s.count("SELECT count(*) FROM eda_outbox WHERE dispatched_at IS NULL")
            .await,
        1,
        "left undispatched"
    );
}

on_sql_backends!(
    a_row_that_cannot_be_decoded_is_an_error_naming_its_table_and_column,
    a_batch_reference_held_by_another_product_is_refused_without_retries,
);

async fn a_row_that_cannot_be_decoded_is_an_error_naming_its_table_and_column(s: &Service) {
    s.bus
        .handle(CreateBatch::new("b1", "LAMP", 10, None))
        .await
        .unwrap();
    // More than a `u32` holds.
    s.execute("UPDATE batches SET purchased_quantity = 5000000000")
        .await;

    let error = s
        .bus
        .handle(Allocate::new("o1", "LAMP", 1))
        .await
        .unwrap_err();

    assert!(
        matches!(
            &error,
            CommandError::Bus(Error::Repository(RepositoryError::Decode { table, column, .. }))
                if table == "batches" && column == "purchased_quantity"
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("cannot decode column `purchased_quantity` of table `batches`"),
        "{error}"
    );
}

/// The domain does not know that batch references are unique across
/// products; the table does. That is an error at once, not a conflict
/// retried in vain.
async fn a_batch_reference_held_by_another_product_is_refused_without_retries(s: &Service) {
    // Each database words its unique violation its own way.
    let refused = match &s.store {
        Store::Postgres(_) => "duplicate batch reference: Key (reference)=(b1) already exists",
        Store::Sqlite(_) => "duplicate batch reference: b1 already exists",
        Store::Memory(_) => unreachable!("a SQL constraint"),
    };
    s.bus
        .handle(CreateBatch::new("b1", "LAMP", 10, None))
        .await
        .unwrap();
    s.bus
        .handle(CreateBatch::new("b2", "TABLE", 10, None))
        .await
        .unwrap();

    // On an existing product (update) and on a new one (add).
    for sku in ["TABLE", "CHAIR"] {
        let error = s
            .bus
            .handle(CreateBatch::new("b1", sku, 5, None))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains(refused), "{text}");
    }

    assert_eq!(s.bus.metrics().command_conflicts, 0, "not retried");
    assert_eq!(s.stock("TABLE").await, [("b2".to_owned(), 10, 0)]);
    assert!(s.product("CHAIR").await.is_none());
}

/// What only a SQL database has: the schema, rows that do not decode,
/// constraints the domain does not know, how much a save writes. (The
/// same on SQLite: `sqlite_tables`.)
mod postgres_tables {
    use super::*;

    /// The pool of a service started on Postgres.
    fn pool(s: &Service) -> &sqlx::PgPool {
        match &s.store {
            Store::Postgres(pg) => pg.pool(),
            Store::Memory(_) | Store::Sqlite(_) => unreachable!("these tests start on Postgres"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrating_is_idempotent_and_safe_when_instances_start_at_once() {
        let Some(s) = Service::start(Backend::Postgres).await else {
            return;
        };
        s.bus
            .handle(CreateBatch::new("b1", "LAMP", 10, None))
            .await
            .unwrap();
        // Five instances starting at once on this schema (and a spawned
        // future: `migrate` must be `Send`).
        let starts: Vec<_> = (0..5)
            .map(|_| {
                let pool = pool(&s).clone();
                tokio::spawn(async move { postgres::migrate(&pool).await })
            })
            .collect();
        for start in starts {
            start.await.unwrap().expect("a concurrent start");
        }
        assert_eq!(
            s.stock("LAMP").await,
            [("b1".to_owned(), 10, 0)],
            "data kept"
        );
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name NOT LIKE 'eda\\_%' \
             ORDER BY table_name",
        )
        .fetch_all(pool(&s))
        .await
        .unwrap();
        assert_eq!(
            tables,
            [
                "allocations",
                "allocations_view",
                "allocations_view_orders",
                "batches",
                "products",
            ],
            "the example's tables (the framework's, eda_*, are its own business)"
        );
        s.stop().await;
    }

    /// A save writes what changed: an allocation inserts its line and leaves
    /// the other rows as they were (same row versions).
    #[tokio::test]
    async fn a_save_writes_only_what_changed() {
        let Some(s) = Service::start(Backend::Postgres).await else {
            return;
        };
        let row_versions = async || -> Vec<(String, String)> {
            sqlx::query(
                "SELECT 'batch ' || reference, xmin::text FROM batches \
                 UNION ALL SELECT 'line ' || batchref || '/' || position, xmin::text FROM allocations \
                 ORDER BY 1",
            )
            .fetch_all(pool(&s))
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        };
        s.bus
            .handle(CreateBatch::new("b1", "LAMP", 10, None))
            .await
            .unwrap();
        s.bus
            .handle(CreateBatch::new("b2", "LAMP", 10, Some(today())))
            .await
            .unwrap();
        s.bus.handle(Allocate::new("o1", "LAMP", 2)).await.unwrap();
        let before = row_versions().await;

        s.bus.handle(Allocate::new("o2", "LAMP", 3)).await.unwrap();

        let after = row_versions().await;
        assert_eq!(after.len(), before.len() + 1);
        assert!(
            before.iter().all(|row| after.contains(row)),
            "{before:?} -> {after:?}"
        );
        assert!(after.iter().any(|(row, _)| row == "line b1/1"), "{after:?}");

        // Shrinking b1 to 2 gives back o2's line: its row is deleted and
        // b1's updated; o1's line and b2 stay as they were, and o2's line
        // is inserted in b2 by its reallocation.
        s.bus
            .handle(ChangeBatchQuantity::new("b1", 2))
            .await
            .unwrap();
        let changed = row_versions().await;
        assert!(!changed.contains(&before[0]), "b1 updated: {changed:?}");
        assert!(changed.contains(&before[1]), "b2 kept: {changed:?}");
        assert!(changed.contains(&before[2]), "o1's line kept: {changed:?}");
        assert_eq!(
            changed
                .iter()
                .map(|(row, _)| row.as_str())
                .collect::<Vec<_>>(),
            ["batch b1", "batch b2", "line b1/0", "line b2/0"]
        );
        assert_eq!(s.allocated_batchrefs("o2", "LAMP").await, ["b2"]);
        s.stop().await;
    }
}

/// What only a SQL database has, on SQLite: the schema, rows that do not
/// decode, constraints the domain does not know, how much a save writes,
/// and the version check behind SQLite's write lock.
mod sqlite_tables {
    use super::*;
    use allocation::adapters::sqlite::SqliteProductRepository;
    use eda_core::Repository;
    use eda_core::adapters::sqlite::SqliteDatabase;
    use eda_core::sqlx::SqlitePool;

    async fn start() -> Service {
        Service::start(Backend::Sqlite)
            .await
            .expect("SQLite needs no service")
    }

    /// The pool of a service started on SQLite.
    fn pool(s: &Service) -> &SqlitePool {
        match &s.store {
            Store::Sqlite(file) => file.pool(),
            Store::Memory(_) | Store::Postgres(_) => unreachable!("these tests start on SQLite"),
        }
    }

    fn url(s: &Service) -> &str {
        match &s.store {
            Store::Sqlite(file) => &file.url,
            Store::Memory(_) | Store::Postgres(_) => unreachable!("these tests start on SQLite"),
        }
    }

    async fn tables(pool: &SqlitePool) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'eda\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrating_is_idempotent_and_safe_when_processes_start_at_once() {
        let s = start().await;
        s.bus
            .handle(CreateBatch::new("b1", "LAMP", 10, None))
            .await
            .unwrap();
        // Five processes starting at once (each with a pool of its own, and
        // a spawned future: `migrate` must be `Send`): on a file that has
        // only the framework's tables; on one that has the first table only
        // (as if an earlier version made it), where a migration that read
        // the schema before taking the write lock could not then write
        // (SQLite does not wait to upgrade a reader); and on this one.
        let fresh = TestSqlite::start().await;
        let older = TestSqlite::start().await;
        sqlx::query(sqlite::SCHEMA[0])
            .execute(older.pool())
            .await
            .unwrap();
        for url in [fresh.url.as_str(), older.url.as_str(), url(&s)] {
            let mut processes = Vec::new();
            for _ in 0..5 {
                processes.push(SqliteDatabase::connect(url).await.unwrap());
            }
            let starts: Vec<_> = processes
                .iter()
                .map(|db| {
                    let pool = db.pool().clone();
                    tokio::spawn(async move { sqlite::migrate(&pool).await })
                })
                .collect();
            for start in starts {
                start.await.unwrap().expect("a concurrent start");
            }
            assert_eq!(
                tables(processes[0].pool()).await,
                [
                    "allocations",
                    "allocations_view",
                    "allocations_view_orders",
                    "batches",
                    "products",
                ],
                "the example's tables (the framework's, eda_*, are its own business)"
            );
            for db in processes {
                db.pool().close().await;
            }
        }
        assert_eq!(
            s.stock("LAMP").await,
            [("b1".to_owned(), 10, 0)],
            "data kept"
        );
        fresh.cleanup().await;
        older.cleanup().await;
        s.stop().await;
    }

    /// `STRICT` tables and `CHECK`s: what the model could not read back is
    /// not stored in the first place.
    #[tokio::test]
    async fn values_of_the_wrong_type_are_refused_on_write() {
        let s = start().await;
        s.bus
            .handle(CreateBatch::new("b1", "LAMP", 10, None))
            .await
            .unwrap();
        for (sql, why) in [
            (
                "UPDATE batches SET purchased_quantity = 'ten'",
                "cannot store TEXT value in INTEGER column batches.purchased_quantity",
            ),
            (
                "UPDATE batches SET eta = '1 March'",
                "CHECK constraint failed",
            ),
            (
                "UPDATE products SET version = -1",
                "CHECK constraint failed",
            ),
            (
                "INSERT INTO batches VALUES ('b9', 'NO-SUCH-SKU', 0, 1, NULL)",
                "FOREIGN KEY constraint failed",
            ),
        ] {
            let error = sqlx::query(sql).execute(pool(&s)).await.unwrap_err();
            assert!(error.to_string().contains(why), "{sql}: {error}");
        }
        s.stop().await;
    }

    /// A save writes what changed: an allocation inserts its line and
    /// nothing else (triggers log every write to the batches and lines).
    #[tokio::test]
    async fn a_save_writes_only_what_changed() {
        let s = start().await;
        let mut log =
            vec!["CREATE TABLE writes (n INTEGER PRIMARY KEY, what TEXT NOT NULL)".to_owned()];
        for (table, row) in [
            ("batches", "'batch ' || {}.reference"),
            (
                "allocations",
                "'line ' || {}.batchref || '/' || {}.position",
            ),
        ] {
            for (event, which) in [("INSERT", "new"), ("UPDATE", "new"), ("DELETE", "old")] {
                let row = row.replace("{}", which);
                log.push(format!(
                    "CREATE TRIGGER {table}_{event} AFTER {event} ON {table} \
                     BEGIN INSERT INTO writes (what) VALUES ('{event} ' || {row}); END"
                ));
            }
        }
        for sql in &log {
            sqlx::query(sql).execute(pool(&s)).await.unwrap();
        }
        let writes = async || -> Vec<String> {
            let mut tx = pool(&s).begin().await.unwrap();
            let writes = sqlx::query_scalar("SELECT what FROM writes ORDER BY n")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            sqlx::query("DELETE FROM writes")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            writes
        };
        s.bus
            .handle(CreateBatch::new("b1", "LAMP", 10, None))
            .await
            .unwrap();
        s.bus
            .handle(CreateBatch::new("b2", "LAMP", 10, Some(today())))
            .await
            .unwrap();
        s.bus.handle(Allocate::new("o1", "LAMP", 2)).await.unwrap();
        assert_eq!(
            writes().await,
            ["INSERT batch b1", "INSERT batch b2", "INSERT line b1/0"]
        );

        s.bus.handle(Allocate::new("o2", "LAMP", 3)).await.unwrap();
        assert_eq!(writes().await, ["INSERT line b1/1"]);

        // Shrinking b1 to 2 gives back o2's line: its row is deleted and
        // b1's updated; o2's line is inserted in b2 by its reallocation.
        s.bus
            .handle(ChangeBatchQuantity::new("b1", 2))
            .await
            .unwrap();
        assert_eq!(
            writes().await,
            ["DELETE line b1/1", "UPDATE batch b1", "INSERT line b2/0"]
        );
        assert_eq!(s.allocated_batchrefs("o2", "LAMP").await, ["b2"]);
        s.stop().await;
    }

    /// SQLite's write lock keeps two units of work from holding one product
    /// at once, so through the bus the version check never fires. It is
    /// still the repository's contract (`Repository::update`), tested here
    /// on a transaction of the test's own: a save whose expected version is
    /// not the stored one writes nothing and says so.
    #[tokio::test]
    async fn a_stale_save_is_refused_by_the_version_check() {
        let s = start().await;
        let sku = "LAMP".to_owned();
        s.bus
            .handle(CreateBatch::new("b1", &sku, 100, None))
            .await
            .unwrap();
        s.bus.handle(Allocate::new("o1", &sku, 10)).await.unwrap();

        let mut tx = pool(&s).begin_with("BEGIN IMMEDIATE").await.unwrap();
        let mut product = SqliteProductRepository::get(&mut tx, &sku)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(product.version_number, 1);
        product.allocate(OrderLine::new("o2", &sku, 5)).unwrap();
        product.version_number = 2;

        let saved = SqliteProductRepository::update(&mut tx, &product, 0)
            .await
            .unwrap();
        assert!(!saved, "stored at version 1, not 0");
        let stored = SqliteProductRepository::get(&mut tx, &sku)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snapshot(&stored).2[0].4.len(), 1, "nothing written");
        assert_eq!(stored.version_number, 1);

        let saved = SqliteProductRepository::update(&mut tx, &product, 1)
            .await
            .unwrap();
        assert!(saved);
        tx.commit().await.unwrap();
        assert_eq!(s.stock(&sku).await, [("b1".to_owned(), 100, 15)]);
        assert_eq!(s.product(&sku).await.unwrap().version_number, 2);
        s.stop().await;
    }
}
