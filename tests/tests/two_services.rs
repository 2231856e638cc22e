//! Two services, the unit of proof (issue 12): `orders` places orders and
//! `allocation` allocates them, over the broker only, sharing the messages
//! of `contracts`. Many orders from concurrent clients over a few products
//! with scarce stock, then the books (`eda_tests::pair`): every order ends
//! confirmed or cancelled exactly once, stock is never oversold, every
//! cancelled order's stock comes back, each event counts once after dedupe.
//!
//! - on the real RabbitMQ and Postgres, both binaries as processes;
//! - the same with a SIGKILL of each service in turn, mid-stream;
//! - both buses in this process on the in-process broker (fast).
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allocation::domain::commands::CreateBatch;
use allocation::domain::model::Product;
use contracts::OrderLine;
use eda_core::adapters::in_process::InProcessBroker;
use eda_core::backend::OutboxStore;
use eda_core::entrypoints::ConsumerOptions;
use eda_core::sqlx;
use eda_core::testing::unique_name;
use eda_core::{InMemoryDatabase, RelayOptions};
use eda_tests::pair::{InProcessPair, OrderState, PairBooks, Plan, Snapshot, check_pair_books};
use eda_tests::{HttpLoad, Neighbour, Service, World};
use orders::domain::commands::PlaceOrder;
use orders::domain::model::Order;
use serde_json::{Value, json};
use tokio::sync::RwLock;

/// How many orders a run places: `EDA_FAULT_SCALE` times 240.
fn orders_per_run() -> usize {
    240 * std::env::var("EDA_FAULT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn figures(scenario: &str, books: &PairBooks, no_answer: usize, took: Duration) {
    println!(
        "FIGURES {}",
        json!({
            "scenario": scenario,
            "attempted": books.attempted,
            "acknowledged": books.acknowledged,
            "no_answer": no_answer,
            "orders": books.orders,
            "confirmed": books.confirmed,
            "cancelled": books.cancelled,
            "cancelled_unknown_sku": books.unknown_sku,
            "units_confirmed": books.units_confirmed,
            "units_purchased": books.units_purchased,
            "duplicate_deliveries": books.duplicates,
            "seconds": took.as_secs_f64(),
        })
    );
}

// --- Both services in this process, on the in-process broker -----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_settles_every_order_on_the_in_process_broker() {
    let started = Instant::now();
    let plan = Plan::new(&unique_name("mem"), 5, 30, orders_per_run(), 7);
    let fast = |queue: &str| {
        ConsumerOptions::new(queue)
            .retry_delays([Duration::from_millis(20), Duration::from_millis(50)])
    };
    let relay_options = RelayOptions {
        poll: Duration::from_millis(10),
        unroutable_backoff: Duration::from_millis(20),
        unroutable_max_backoff: Duration::from_millis(100),
        ..RelayOptions::default()
    };
    let pair = InProcessPair::start(fast, relay_options);
    // Observers, as a third service would be.
    pair.observe("observer.cancelled", "orders.order_cancelled");
    pair.observe("observer.allocated", "allocation.allocated");
    let broker = pair.broker.clone();
    let InProcessPair {
        allocation_db,
        orders_db,
        orders_bus,
        ..
    } = &pair;
    stock_in_process(&pair, &plan).await;
    // Eight clients place the orders.
    let next = Arc::new(AtomicUsize::new(0));
    let plan = Arc::new(plan);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (plan, next, bus) = (plan.clone(), next.clone(), orders_bus.clone());
            tokio::spawn(async move {
                let mut acknowledged = BTreeSet::new();
                while let Some((orderid, lines)) =
                    plan.orders.get(next.fetch_add(1, Ordering::Relaxed))
                {
                    let lines = lines.iter().map(|(s, q)| OrderLine::new(s, *q)).collect();
                    bus.handle(PlaceOrder::new(orderid, lines)).await.unwrap();
                    acknowledged.insert(orderid.clone());
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = BTreeSet::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    let attempted: BTreeSet<String> = plan.orders.iter().map(|(o, _)| o.clone()).collect();

    let mut snapshot = Snapshot::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        observe_in_process(&broker, &mut snapshot);
        read_memory(orders_db, allocation_db, &mut snapshot).await;
        if snapshot.settled(&acknowledged) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled in 60 s: {}",
            snapshot.unsettled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Late duplicates, and anything that moves after settling.
    tokio::time::sleep(Duration::from_millis(200)).await;
    observe_in_process(&broker, &mut snapshot);
    read_memory(orders_db, allocation_db, &mut snapshot).await;
    for queue in ["allocation.dlq", "orders.dlq"] {
        let dead: Vec<_> = std::iter::from_fn(|| broker.take(queue))
            .map(|m| (m.message.name, m.error))
            .collect();
        assert!(dead.is_empty(), "dead-lettered in {queue}: {dead:#?}");
    }
    let books = check_pair_books(&plan, &attempted, &acknowledged, &snapshot);
    assert!(books.confirmed > 0 && books.cancelled > 0, "{books:?}");
    figures("in-process", &books, 0, started.elapsed());

    pair.stop().await;
    for queue in ["allocation.dlq", "orders.dlq", "eda.events.unrouted"] {
        assert!(
            broker.is_empty(queue),
            "{queue} holds {}",
            broker.len(queue)
        );
    }
}

/// Issue 15: allocation is away while orders are placed; each order is
/// cancelled for `timeout` once its timeout is due (the scheduled
/// `ExpireOrder` of its fulfilment); allocation comes back, allocates from
/// the `OrderPlaced` waiting in its queue, and releases it again on the
/// `OrderCancelled` or the `AllocationRefused` orders answers each late
/// `Allocated` with. Then the books: every order cancelled once, for
/// `timeout`; nothing allocated, nothing oversold, all stock back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_time_out_while_allocation_is_away_on_the_in_process_broker() {
    let timeout = Duration::from_millis(300);
    let plan = Plan::new(&unique_name("away"), 3, 30, 40, 11);
    let fast = |queue: &str| {
        ConsumerOptions::new(queue)
            .retry_delays([Duration::from_millis(20), Duration::from_millis(50)])
    };
    let relay_options = RelayOptions {
        poll: Duration::from_millis(10),
        ..RelayOptions::default()
    };
    let mut pair = InProcessPair::start_with_timeout(fast, relay_options, timeout);
    pair.observe("observer.cancelled", "orders.order_cancelled");
    pair.observe("observer.allocated", "allocation.allocated");
    pair.observe("observer.refused", "orders.allocation_refused");
    stock_in_process(&pair, &plan).await;
    pair.pause_allocation().await;

    let placed = Instant::now();
    let mut acknowledged = BTreeSet::new();
    for (orderid, lines) in &plan.orders {
        let lines = lines.iter().map(|(s, q)| OrderLine::new(s, *q)).collect();
        pair.orders_bus
            .handle(PlaceOrder::new(orderid, lines))
            .await
            .unwrap();
        acknowledged.insert(orderid.clone());
    }
    let mut snapshot = Snapshot::default();
    let margin = Duration::from_secs(5);
    loop {
        read_memory(&pair.orders_db, &pair.allocation_db, &mut snapshot).await;
        let timed_out = snapshot
            .orders
            .values()
            .filter(|o| o.status == "cancelled" && o.reason.as_deref() == Some("timeout"))
            .count();
        if timed_out == acknowledged.len() {
            break;
        }
        assert!(
            placed.elapsed() < timeout + margin,
            "{timed_out} of {} cancelled for timeout within {:?}: {}",
            acknowledged.len(),
            timeout + margin,
            snapshot.unsettled()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_cancelled_after = placed.elapsed();
    assert!(snapshot.allocations.is_empty(), "allocation was away");

    pair.resume_allocation();
    let broker = pair.broker.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    loop {
        observe_in_process(&broker, &mut snapshot);
        while broker.take("observer.refused").is_some() {
            refused += 1;
        }
        read_memory(&pair.orders_db, &pair.allocation_db, &mut snapshot).await;
        // Settled once allocation caught up with its queue (before, nothing
        // is allocated yet, and the pair looks settled).
        let idle = ["allocation", "orders"].iter().all(|q| broker.is_empty(q));
        if idle && snapshot.settled(&acknowledged) && !snapshot.allocated_events.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled in 60 s: {}",
            snapshot.unsettled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    observe_in_process(&broker, &mut snapshot);
    while broker.take("observer.refused").is_some() {
        refused += 1;
    }
    read_memory(&pair.orders_db, &pair.allocation_db, &mut snapshot).await;
    for queue in ["allocation.dlq", "orders.dlq"] {
        let dead: Vec<_> = std::iter::from_fn(|| broker.take(queue))
            .map(|m| (m.message.name, m.error))
            .collect();
        assert!(dead.is_empty(), "dead-lettered in {queue}: {dead:#?}");
    }
    let attempted: BTreeSet<String> = plan.orders.iter().map(|(o, _)| o.clone()).collect();
    let books = check_pair_books(&plan, &attempted, &acknowledged, &snapshot);
    assert_eq!(books.timed_out, plan.orders.len(), "{books:?}");
    assert_eq!(books.confirmed, 0);
    // Allocation allocated lines late, and orders refused each of them.
    let late: usize = snapshot.allocated_events.len();
    assert!(late > 0, "allocation allocated nothing after it came back");
    assert!(
        refused >= late,
        "{refused} refusals for {late} late allocations"
    );
    println!(
        "FIGURES {}",
        json!({
            "scenario": "in-process timeout",
            "orders": books.orders,
            "timeout_ms": timeout.as_millis(),
            "all_cancelled_after_ms": all_cancelled_after.as_millis(),
            "late_allocations": late,
            "refused": refused,
        })
    );
    pair.stop().await;
}

/// Issue 16: an order's `OrderPlaced` and its `OrderCancelled` (its timeout
/// is due almost at once) wait together in allocation's queue while
/// allocation is away, interleaved with the other orders' events; once
/// back, with 8 handlers at once, allocation handles each order's
/// `OrderPlaced` before its `OrderCancelled`: the contracts order both by
/// `orderid`, and the in-process broker keeps that order as RabbitMQ does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_events_reach_allocation_in_order_on_the_in_process_broker() {
    let plan = Plan::new(&unique_name("ordered"), 3, 30, 60, 12);
    let fast = |queue: &str| {
        ConsumerOptions::new(queue)
            .retry_delays([Duration::from_millis(20), Duration::from_millis(50)])
            .ordered_partitions(4)
    };
    let relay_options = RelayOptions {
        poll: Duration::from_millis(5),
        ..RelayOptions::default()
    };
    let mut pair = InProcessPair::start_with_timeout(fast, relay_options, Duration::from_millis(1));
    stock_in_process(&pair, &plan).await;
    pair.pause_allocation().await;
    for (orderid, lines) in &plan.orders {
        let lines = lines.iter().map(|(s, q)| OrderLine::new(s, *q)).collect();
        pair.orders_bus
            .handle(PlaceOrder::new(orderid, lines))
            .await
            .unwrap();
        // Each order's timeout falls due among the next orders' placements.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut snapshot = Snapshot::default();
    loop {
        read_memory(&pair.orders_db, &pair.allocation_db, &mut snapshot).await;
        let cancelled = snapshot
            .orders
            .values()
            .filter(|o| o.status == "cancelled")
            .count();
        if cancelled == plan.orders.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{cancelled} cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pair.resume_allocation();
    let events = ["orders.order_placed", "orders.order_cancelled"];
    let calls = loop {
        let calls = pair.allocation_handled.calls();
        let seen = calls
            .iter()
            .filter(|(_, name)| events.contains(name))
            .count();
        if seen >= 2 * plan.orders.len() {
            break calls;
        }
        assert!(
            Instant::now() < deadline,
            "allocation handled {seen} of them"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut by_order: BTreeMap<eda_core::MessageId, Vec<&str>> = BTreeMap::new();
    for (correlation_id, name) in &calls {
        if events.contains(name) {
            by_order.entry(*correlation_id).or_default().push(name);
        }
    }
    assert_eq!(by_order.len(), plan.orders.len());
    let swapped: Vec<_> = by_order
        .values()
        .filter(|names| **names != events)
        .collect();
    assert!(
        swapped.is_empty(),
        "{} of {} orders' events handled out of order: {swapped:?}",
        swapped.len(),
        by_order.len()
    );
    println!(
        "FIGURES {}",
        json!({
            "scenario": "in-process order per key",
            "orders": plan.orders.len(),
            "events": calls.len(),
            "swapped": swapped.len(),
        })
    );
    pair.stop().await;
}

/// Allocation's batches of the plan, on the in-process pair.
async fn stock_in_process(pair: &InProcessPair, plan: &Plan) {
    for (sku, units) in &plan.stock {
        pair.allocation_bus
            .handle(CreateBatch::new(Plan::batchref(sku), sku, *units, None))
            .await
            .unwrap();
    }
}

fn observe_in_process(broker: &InProcessBroker, snapshot: &mut Snapshot) {
    for queue in ["observer.cancelled", "observer.allocated"] {
        while let Some(m) = broker.take(queue) {
            let body: Value = serde_json::from_slice(&m.message.payload).unwrap();
            snapshot.observe(
                &m.message.name,
                m.message.metadata.message_id.to_string(),
                &body,
            );
        }
    }
}

async fn read_memory(orders: &InMemoryDatabase, allocation: &InMemoryDatabase, s: &mut Snapshot) {
    s.orders = orders
        .all::<Order>()
        .into_iter()
        .map(|o| {
            let state = OrderState {
                status: o.status().as_str().to_owned(),
                reason: o.reason().map(str::to_owned),
                lines: o
                    .lines()
                    .iter()
                    .map(|l| (l.sku.clone(), l.qty, l.batchref.clone()))
                    .collect(),
            };
            (o.orderid, state)
        })
        .collect();
    s.allocations.clear();
    s.purchased.clear();
    for product in allocation.all::<Product>() {
        for batch in &product.batches {
            s.purchased
                .insert(batch.reference.clone(), batch.purchased_quantity());
            for line in batch.allocations() {
                s.allocations.push((
                    line.orderid.clone(),
                    line.sku.clone(),
                    line.qty,
                    batch.reference.clone(),
                ));
            }
        }
    }
    s.unsent = 0;
    for db in [orders, allocation] {
        s.unsent += db.unsent(usize::MAX).await.unwrap().len() as i64;
    }
}

// --- Both binaries as processes, on RabbitMQ and Postgres --------------

/// One broker fault at a time: the fault suite's broker faults run in
/// another test binary; these only kill their own processes.
static PAIRS: RwLock<()> = RwLock::const_new(());

/// The pair started on a world: allocation as the world's service, orders
/// as its neighbour.
struct Pair {
    world: World,
    orders_names: Neighbour,
    /// `None` while it is down.
    allocation: Option<Service>,
    orders: Option<Service>,
    observers: [String; 2],
}

impl Pair {
    async fn start() -> Option<Pair> {
        Self::start_with(&[]).await
    }

    /// The pair, both services with more environment variables.
    async fn start_with(env: &[(&str, &str)]) -> Option<Pair> {
        let world = World::new().await?;
        let orders_names = world.neighbour("orders");
        // Allocation first: its queue is bound to orders' events before
        // any is published (were it not, the relay would keep them).
        let allocation = Service::start_with(&world, env).await;
        let orders = Service::start_neighbour("orders", &world, &orders_names, env).await;
        let observers = [
            world.observe("orders.order_cancelled").await,
            world.observe("allocation.allocated").await,
        ];
        Some(Pair {
            world,
            orders_names,
            allocation: Some(allocation),
            orders: Some(orders),
            observers,
        })
    }

    fn allocation(&self) -> &Service {
        self.allocation.as_ref().expect("allocation runs")
    }

    fn orders(&self) -> &Service {
        self.orders.as_ref().expect("orders runs")
    }

    async fn restart_allocation(&mut self) {
        self.allocation = Some(Service::start(&self.world).await);
    }

    async fn restart_orders(&mut self) {
        self.orders =
            Some(Service::start_neighbour("orders", &self.world, &self.orders_names, &[]).await);
    }

    /// Reads both services' tables and drains the observers into `s`.
    async fn read(&self, s: &mut Snapshot) {
        for queue in &self.observers {
            for m in self.world.drain(queue).await {
                let body: Value = serde_json::from_slice(&m.data).unwrap();
                let name = m.properties.kind().as_ref().unwrap().to_string();
                let id = m.properties.message_id().as_ref().unwrap().to_string();
                s.observe(&name, id, &body);
            }
        }
        let pool = &self.world.pool;
        // Orders are documents in eda's aggregate store: no table of their own.
        let orders_table = format!("\"{}\".eda_aggregates", self.orders_names.schema);
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT id, body FROM {orders_table} WHERE aggregate = 'Order'"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        s.orders = rows
            .into_iter()
            .map(|(orderid, body)| {
                let order: Value = serde_json::from_str(&body).unwrap();
                let status = order["status"].as_str().unwrap().to_owned();
                let reason = order["reason"].as_str().map(str::to_owned);
                let lines = order["lines"].as_array().unwrap();
                let lines = lines
                    .iter()
                    .map(|l| {
                        (
                            l["sku"].as_str().unwrap().to_owned(),
                            l["qty"].as_u64().unwrap() as u32,
                            l["batchref"].as_str().map(str::to_owned),
                        )
                    })
                    .collect();
                (
                    orderid,
                    OrderState {
                        status,
                        reason,
                        lines,
                    },
                )
            })
            .collect();
        s.allocations = sqlx::query_as::<_, (String, String, i64, String)>(&format!(
            "SELECT orderid, sku, qty, batchref FROM {}",
            self.world.table("allocations")
        ))
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(o, s, q, b)| (o, s, q as u32, b))
        .collect();
        s.purchased = sqlx::query_as::<_, (String, i64)>(&format!(
            "SELECT reference, purchased_quantity FROM {}",
            self.world.table("batches")
        ))
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(b, q)| (b, q as u32))
        .collect();
        let mut unsent = 0;
        for schema in [&self.world.schema, &self.orders_names.schema] {
            unsent += sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM \"{schema}\".eda_outbox WHERE sent_at IS NULL"
            ))
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        }
        s.unsent = unsent;
    }

    /// Waits (up to `within`) until the pair settled, then for late
    /// duplicates, and checks the books.
    async fn books(
        &self,
        plan: &Plan,
        attempted: &BTreeSet<String>,
        acknowledged: &BTreeSet<String>,
        within: Duration,
    ) -> PairBooks {
        self.books_after(Snapshot::default(), plan, attempted, acknowledged, within)
            .await
    }

    /// The same, going on from what `snapshot` observed already.
    async fn books_after(
        &self,
        mut snapshot: Snapshot,
        plan: &Plan,
        attempted: &BTreeSet<String>,
        acknowledged: &BTreeSet<String>,
        within: Duration,
    ) -> PairBooks {
        let deadline = Instant::now() + within;
        loop {
            self.read(&mut snapshot).await;
            if snapshot.settled(acknowledged) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not settled within {within:?}: {}",
                snapshot.unsettled()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.read(&mut snapshot).await;
        check_pair_books(plan, attempted, acknowledged, &snapshot)
    }

    /// Waits until `count` orders are cancelled for `timeout`, failing at
    /// `deadline`.
    async fn all_timed_out(&self, snapshot: &mut Snapshot, count: usize, deadline: Instant) {
        loop {
            self.read(snapshot).await;
            let timed_out = snapshot
                .orders
                .values()
                .filter(|o| o.status == "cancelled" && o.reason.as_deref() == Some("timeout"))
                .count();
            if timed_out == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{timed_out} of {count} orders cancelled for timeout by the deadline: {}",
                snapshot.unsettled()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until allocation has handled each of `orders` orders'
    /// `OrderPlaced` and `OrderCancelled` (before that, after it was away,
    /// nothing is allocated yet, and the pair would look settled).
    async fn allocation_caught_up(&self, orders: usize) {
        let orders = orders as f64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let calls = handler_calls(&scrape_metrics(self.allocation()).await);
            let handled = |message: &str| {
                calls
                    .get(&(message.to_owned(), "ok".to_owned()))
                    .copied()
                    .unwrap_or(0.0)
            };
            if handled("orders.order_placed") >= orders
                && handled("orders.order_cancelled") >= orders
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "allocation did not catch up: {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        for service in [self.orders, self.allocation].into_iter().flatten() {
            assert_eq!(service.terminate().await, 0);
        }
        self.world.cleanup().await;
    }
}

async fn stock(pair: &Pair, plan: &Plan) {
    for (sku, units) in &plan.stock {
        pair.allocation()
            .add_batch(&Plan::batchref(sku), sku, *units, None)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_settles_every_order_over_rabbitmq() {
    let _shared = PAIRS.read().await;
    let started = Instant::now();
    let Some(pair) = Pair::start().await else {
        return;
    };
    let plan = Plan::new(&unique_name("pair"), 5, 30, orders_per_run(), 11);
    stock(&pair, &plan).await;
    let placed = HttpLoad::new(&pair.orders().base)
        .post("/orders", plan.requests(), 8)
        .await
        .unwrap();
    assert_eq!(
        placed.acknowledged, placed.attempted,
        "every order answered 201"
    );
    // A placed order is readable at once, pending or settled.
    let (status, body) = pair
        .orders()
        .get(&format!("/orders/{}", plan.orders[0].0))
        .await;
    assert_eq!(status, 200, "{body}");
    let books = pair
        .books(
            &plan,
            &placed.attempted,
            &placed.acknowledged,
            Duration::from_secs(60),
        )
        .await;
    assert!(books.confirmed > 0 && books.cancelled > 0, "{books:?}");
    figures("rabbitmq", &books, 0, started.elapsed());

    // Each service's `/metrics` counts the work done: every acknowledged
    // order's command succeeded once in orders, and allocation handled
    // each order's `OrderPlaced` once, from the other service.
    let (orders_scrape, allocation_scrape) = (
        scrape_metrics(pair.orders()).await,
        scrape_metrics(pair.allocation()).await,
    );
    let orders = handler_calls(&orders_scrape);
    let allocation = handler_calls(&allocation_scrape);
    assert_eq!(
        orders.get(&("orders.place_order".into(), "ok".into())),
        Some(&(placed.acknowledged.len() as f64)),
        "{orders:?}"
    );
    assert_eq!(
        allocation.get(&("orders.order_placed".into(), "ok".into())),
        Some(&(books.orders as f64)),
        "{allocation:?}"
    );
    assert!(
        orders.contains_key(&("allocation.allocated".into(), "ok".into())),
        "orders handled allocation's answers: {orders:?}"
    );
    // Orders published at least one event per order it holds (placed),
    // and its outbox is empty once the pair settled; allocation consumes
    // and handled at least each order's `OrderPlaced` from the broker.
    let value = |scrape: &prometheus_parse::Scrape, metric: &str| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("{metric} in /metrics"));
        match sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{metric}: {other:?}"),
        }
    };
    assert!(value(&orders_scrape, "eda_relay_published_total") >= books.orders as f64);
    assert_eq!(value(&orders_scrape, "eda_outbox_readable"), 1.0);
    assert_eq!(value(&orders_scrape, "eda_outbox_unsent_rows"), 0.0);
    assert_eq!(value(&allocation_scrape, "eda_consumer_consuming"), 1.0);
    assert_eq!(value(&allocation_scrape, "eda_consumer_in_flight"), 0.0);
    assert!(value(&allocation_scrape, "eda_consumer_handled_total") >= books.orders as f64);
    assert_eq!(
        value(&allocation_scrape, "eda_consumer_dead_lettered_total"),
        0.0
    );
    let consumed = |scrape: &prometheus_parse::Scrape, message: &str, outcome: &str| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "eda_consumer_messages_total"
                    && s.labels.get("messaging_destination_name") == Some(message)
                    && s.labels.get("outcome") == Some(outcome)
            })
            .map_or(0.0, |s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("eda_consumer_messages_total: {other:?}"),
            })
    };
    assert!(
        consumed(&allocation_scrape, "orders.order_placed", "handled") >= books.orders as f64,
        "allocation's consumer handled each OrderPlaced"
    );
    assert_eq!(
        consumed(&allocation_scrape, "orders.order_placed", "dead_lettered"),
        0.0
    );
    pair.stop().await;
}

/// Allocation is started again once every order timed out; it catches
/// up with its queue; then the books, every order cancelled for `timeout`.
async fn allocation_back(
    pair: &mut Pair,
    snapshot: Snapshot,
    plan: &Plan,
    placed: &eda_tests::Outcome,
) -> PairBooks {
    pair.restart_allocation().await;
    pair.allocation_caught_up(plan.orders.len()).await;
    let books = pair
        .books_after(
            snapshot,
            plan,
            &placed.attempted,
            &placed.acknowledged,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(books.timed_out, plan.orders.len(), "{books:?}");
    books
}

/// The pair with orders cancelled after `timeout` without an answer, the
/// plan's stock, allocation stopped (SIGTERM: its queue keeps what orders
/// publishes), and then the plan's orders placed over HTTP, each answered
/// 201: the pair, the orders, when the first was sent. `None`: skipped (no
/// Postgres or RabbitMQ outside CI).
async fn placed_while_allocation_is_away(
    timeout: Duration,
    plan: &Plan,
) -> Option<(Pair, eda_tests::Outcome, Instant)> {
    let timeout_ms = timeout.as_millis().to_string();
    let mut pair = Pair::start_with(&[("ORDER_TIMEOUT_MS", &timeout_ms)]).await?;
    stock(&pair, plan).await;
    let allocation = pair.allocation.take().expect("allocation runs");
    assert_eq!(allocation.terminate().await, 0);
    let placed_at = Instant::now();
    let placed = HttpLoad::new(&pair.orders().base)
        .post("/orders", plan.requests(), 8)
        .await
        .unwrap();
    assert_eq!(
        placed.acknowledged, placed.attempted,
        "every order answered 201"
    );
    Some((pair, placed, placed_at))
}

/// Issue 15, both binaries on RabbitMQ and Postgres: allocation is stopped
/// while orders are placed; orders cancels each for `timeout` once its
/// `ORDER_TIMEOUT_MS` is due (its scheduler delivers the `ExpireOrder` its
/// fulfilment scheduled), and `GET /orders/{id}` says why; allocation is
/// started again, allocates from the `OrderPlaced` waiting in its queue,
/// and releases it on the `OrderCancelled`, or on the `AllocationRefused`
/// with which orders answers each late `Allocated`. Then the books: every
/// order cancelled once, for `timeout`; nothing held, nothing oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_time_out_while_allocation_is_stopped_over_rabbitmq() {
    let _shared = PAIRS.read().await;
    let timeout = Duration::from_secs(2);
    let plan = Plan::new(&unique_name("away"), 3, 30, 60, 13);
    let Some((mut pair, placed, placed_at)) = placed_while_allocation_is_away(timeout, &plan).await
    else {
        return;
    };
    let refused_queue = pair.world.observe("orders.allocation_refused").await;
    let mut snapshot = Snapshot::default();
    pair.all_timed_out(
        &mut snapshot,
        placed.acknowledged.len(),
        placed_at + timeout + Duration::from_secs(10),
    )
    .await;
    let all_cancelled_after = placed_at.elapsed();
    let (status, body) = pair
        .orders()
        .get(&format!("/orders/{}", plan.orders[0].0))
        .await;
    assert_eq!(
        (status, &body["status"], &body["reason"]),
        (200, &json!("cancelled"), &json!("timeout")),
        "{body}"
    );

    let books = allocation_back(&mut pair, snapshot, &plan, &placed).await;
    assert_eq!(books.confirmed, 0, "{books:?}");
    let refused: BTreeSet<String> = pair
        .world
        .drain(&refused_queue)
        .await
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert!(
        !refused.is_empty(),
        "allocation allocated lines after it came back, and orders refused them"
    );
    println!(
        "FIGURES {}",
        json!({
            "scenario": "rabbitmq timeout",
            "orders": books.orders,
            "timeout_ms": timeout.as_millis(),
            "all_cancelled_after_ms": all_cancelled_after.as_millis(),
            "refused": refused.len(),
            "duplicate_deliveries": books.duplicates,
        })
    );
    pair.stop().await;
}

/// Issue 15: orders is killed (SIGKILL) after it scheduled its orders'
/// timeouts and before they are due, and stays down past them; started
/// again, it delivers what fell due while it was down, at once: every order
/// cancelled for `timeout`, once. Then allocation comes back, and the
/// books balance as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_due_while_orders_was_killed_are_delivered_when_it_restarts() {
    let _shared = PAIRS.read().await;
    let timeout = Duration::from_secs(2);
    let plan = Plan::new(&unique_name("killed"), 3, 30, 30, 17);
    let Some((mut pair, placed, placed_at)) = placed_while_allocation_is_away(timeout, &plan).await
    else {
        return;
    };
    pair.orders.take().expect("orders runs").kill().await;
    let killed_after = placed_at.elapsed();
    assert!(
        killed_after < timeout,
        "killed before any timeout was due ({killed_after:?})"
    );
    tokio::time::sleep(timeout + Duration::from_secs(1)).await;
    let mut snapshot = Snapshot::default();
    pair.read(&mut snapshot).await;
    assert!(
        snapshot.orders.values().all(|o| o.status == "pending"),
        "nothing cancelled while orders was down"
    );

    pair.restart_orders().await;
    let restarted = Instant::now();
    pair.all_timed_out(
        &mut snapshot,
        placed.acknowledged.len(),
        restarted + Duration::from_secs(10),
    )
    .await;
    let cancelled_after_restart = restarted.elapsed();

    let books = allocation_back(&mut pair, snapshot, &plan, &placed).await;
    println!(
        "FIGURES {}",
        json!({
            "scenario": "rabbitmq timeout after a sigkill",
            "orders": books.orders,
            "timeout_ms": timeout.as_millis(),
            "killed_after_ms": killed_after.as_millis(),
            "cancelled_after_restart_ms": cancelled_after_restart.as_millis(),
            "duplicate_deliveries": books.duplicates,
        })
    );
    pair.stop().await;
}

/// What an OTLP/HTTP collector received (`http/json`): each span with its
/// service's name, and the latest value of each metric's data point.
#[derive(Clone, Default)]
struct Collector(
    Arc<std::sync::Mutex<Vec<CollectedSpan>>>,
    Arc<std::sync::Mutex<BTreeMap<MetricKey, f64>>>,
);

/// A metric's data point: (service, metric, its attributes).
type MetricKey = (String, String, BTreeMap<String, String>);

#[derive(Clone, Debug)]
struct CollectedSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

impl Collector {
    /// A collector on a port of its own: its endpoint.
    async fn start(&self) -> String {
        let (spans, metrics) = (self.0.clone(), self.1.clone());
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                    let spans = spans.clone();
                    async move {
                        spans.lock().unwrap().extend(Self::read(&body));
                        axum::Json(json!({}))
                    }
                }),
            )
            .route(
                "/v1/metrics",
                axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                    let metrics = metrics.clone();
                    async move {
                        metrics.lock().unwrap().extend(Self::read_metrics(&body));
                        axum::Json(json!({}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    /// The spans of an `ExportTraceServiceRequest` in OTLP's JSON.
    fn read(body: &Value) -> Vec<CollectedSpan> {
        let text = |v: &Value| match v {
            Value::Object(o) => o
                .values()
                .next()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default(),
            other => other.to_string(),
        };
        let attributes = |v: &Value| -> BTreeMap<String, String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or("").to_owned(),
                        text(&kv["value"]),
                    )
                })
                .collect()
        };
        let mut spans = Vec::new();
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = attributes(&resource["resource"]["attributes"])
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let id = |key: &str| span[key].as_str().unwrap_or("").to_owned();
                    spans.push(CollectedSpan {
                        service: service.clone(),
                        trace_id: id("traceId"),
                        span_id: id("spanId"),
                        parent_span_id: id("parentSpanId"),
                        name: id("name"),
                        attributes: attributes(&span["attributes"]),
                    });
                }
            }
        }
        spans
    }

    fn spans(&self) -> Vec<CollectedSpan> {
        self.0.lock().unwrap().clone()
    }

    /// The data points of an `ExportMetricsServiceRequest` in OTLP's JSON:
    /// a sum's or gauge's value, a histogram's count.
    fn read_metrics(body: &Value) -> Vec<(MetricKey, f64)> {
        let number = |v: &Value| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        let attributes = |v: &Value| -> BTreeMap<String, String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|kv| {
                    let value = kv["value"]
                        .as_object()
                        .and_then(|o| o.values().next())
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default();
                    (kv["key"].as_str().unwrap_or("").to_owned(), value)
                })
                .collect()
        };
        let mut points = Vec::new();
        for resource in body["resourceMetrics"].as_array().into_iter().flatten() {
            let service = attributes(&resource["resource"]["attributes"])
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource["scopeMetrics"].as_array().into_iter().flatten() {
                for metric in scope["metrics"].as_array().into_iter().flatten() {
                    let name = metric["name"].as_str().unwrap_or("").to_owned();
                    for kind in ["sum", "gauge", "histogram"] {
                        for point in metric[kind]["dataPoints"].as_array().into_iter().flatten() {
                            let value = if kind == "histogram" {
                                number(&point["count"])
                            } else {
                                number(&point["asInt"]).or_else(|| number(&point["asDouble"]))
                            };
                            if let Some(value) = value {
                                points.push((
                                    (
                                        service.clone(),
                                        name.clone(),
                                        attributes(&point["attributes"]),
                                    ),
                                    value,
                                ));
                            }
                        }
                    }
                }
            }
        }
        points
    }

    /// The latest value of `metric` in `service` whose attributes include
    /// these.
    fn metric(&self, service: &str, metric: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.1
            .lock()
            .unwrap()
            .iter()
            .find(|((s, m, attributes), _)| {
                s == service
                    && m == metric
                    && with
                        .iter()
                        .all(|(k, v)| attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| *value)
    }
}

/// Issue 14: an HTTP request with a W3C `traceparent` to `orders`, and one
/// trace follows the order across both binaries over RabbitMQ: the
/// request's span in orders continues the caller's, orders' handler,
/// allocation's handlers and orders' reaction are all in it (exported by
/// each service over OTLP, to a collector of the test's), and the AMQP
/// message carries the `traceparent`; the services' metrics arrive over
/// OTLP as well, with the values of the work done. The services log at WARN: spans are
/// exported at INFO whatever the log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_order_across_both_services_over_rabbitmq() {
    let _shared = PAIRS.read().await;
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let Some(pair) = Pair::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("RUST_LOG", "warn"),
    ])
    .await
    else {
        return;
    };
    let placed = pair.world.observe("orders.order_placed").await;
    let sku = unique_name("LAMP");
    pair.allocation()
        .add_batch(&Plan::batchref(&sku), &sku, 10, None)
        .await;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let caller = format!("{:016x}", fastrand::u64(1..));
    let orderid = unique_name("traced");
    let response = reqwest::Client::new()
        .post(format!("{}/orders", pair.orders().base))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&json!({"orderid": orderid, "lines": [{"sku": sku, "qty": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // Until every span this test looks for is exported (each service
    // sends its own, in its own batches).
    let in_trace = |spans: &[CollectedSpan]| -> Vec<CollectedSpan> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    };
    let handler = |s: &CollectedSpan| {
        (
            s.service.clone(),
            s.attributes
                .get("messaging.destination.name")
                .cloned()
                .unwrap_or_default(),
            s.attributes.get("eda.handler").cloned().unwrap_or_default(),
        )
    };
    let expected_handlers = [
        ("orders", "orders.place_order", "orders::place_order"),
        (
            "allocation",
            "orders.order_placed",
            "allocation::allocate_placed_order",
        ),
        (
            "allocation",
            "allocation.allocate_order",
            "allocation::allocate_order",
        ),
        (
            "orders",
            "allocation.allocated",
            "orders::record_allocation",
        ),
    ];
    let expected_receives = [
        ("allocation", "receive orders.order_placed", "orders"),
        ("orders", "receive allocation.allocated", "allocation"),
    ];
    let all_there = |spans: &[CollectedSpan]| {
        expected_handlers.iter().all(|(service, message, id)| {
            spans.iter().any(|s| {
                s.name == "process"
                    && handler(s) == ((*service).into(), (*message).into(), (*id).into())
            })
        }) && expected_receives.iter().all(|(service, name, _)| {
            spans
                .iter()
                .any(|s| s.service == *service && s.name == *name)
        }) && spans.iter().any(|s| s.name == "POST /orders")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = in_trace(&collector.spans());
        if all_there(&spans) {
            break spans;
        }
        if Instant::now() > deadline {
            // Fails below, naming what is missing.
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The request's span continues the caller's.
    let request = spans
        .iter()
        .find(|s| s.service == "orders" && s.name == "POST /orders")
        .unwrap_or_else(|| panic!("orders' request span: {spans:#?}"));
    assert_eq!(request.parent_span_id, caller);
    // Its log lines (and those of the handlers inside) name the trace.
    assert_eq!(request.attributes.get("trace_id"), Some(&trace_id));
    // Every handler of the order, in both services (named by each
    // binary: `OTEL_SERVICE_NAME` is not set).
    let handlers: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "process")
        .map(handler)
        .collect();
    for (service, message, id) in expected_handlers {
        assert!(
            handlers
                .iter()
                .any(|(s, m, h)| (s.as_str(), m.as_str(), h.as_str()) == (service, message, id)),
            "{id} in {service}, in the caller's trace: {handlers:#?}"
        );
    }
    // Each delivery's span is a child of a span of the other service.
    for (service, name, from) in expected_receives {
        let receive = spans
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("{name} in {service}: {spans:#?}"));
        let parent = spans
            .iter()
            .find(|s| s.span_id == receive.parent_span_id)
            .unwrap_or_else(|| panic!("{name}'s parent exported: {spans:#?}"));
        assert_eq!(parent.service, from, "{name}");
    }
    // The message on the broker carries it.
    let delivery = pair
        .world
        .drain(&placed)
        .await
        .into_iter()
        .next()
        .expect("orders.order_placed observed");
    let traceparent =
        eda_core::adapters::rabbitmq::header_string(&delivery.properties, "traceparent")
            .expect("a traceparent header");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );

    // Metrics over OTLP too: the figures `/metrics` serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    // (service, metric, attributes it has, value)
    type Expected<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64);
    let expected: [Expected<'_>; 4] = [
        (
            "orders",
            "eda.handler.calls",
            &[
                ("eda.handler", "orders::place_order"),
                ("eda.outcome", "ok"),
            ],
            1.0,
        ),
        (
            "orders",
            "messaging.process.duration",
            &[
                ("eda.handler", "orders::place_order"),
                ("eda.outcome", "ok"),
            ],
            1.0,
        ),
        (
            "allocation",
            "messaging.client.consumed.messages",
            &[
                ("messaging.destination.name", "orders.order_placed"),
                ("eda.outcome", "handled"),
            ],
            1.0,
        ),
        ("orders", "messaging.client.sent.messages", &[], 1.0),
    ];
    loop {
        let seen: Vec<_> = expected
            .iter()
            .map(|(service, metric, with, _)| collector.metric(service, metric, with))
            .collect();
        if expected
            .iter()
            .zip(&seen)
            .all(|((.., want), got)| *got == Some(*want))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics over OTLP within 30 s: expected {expected:?}, got {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pair.stop().await;
}

/// A service's `GET /metrics`, read with a Prometheus text-format parser.
async fn scrape_metrics(service: &Service) -> prometheus_parse::Scrape {
    let (status, text) = service.get_text("/metrics").await;
    assert_eq!(status, 200, "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format")
}

/// A service's handler calls by (message, outcome), summed over handlers.
fn handler_calls(scrape: &prometheus_parse::Scrape) -> BTreeMap<(String, String), f64> {
    let mut calls = BTreeMap::new();
    for sample in &scrape.samples {
        if sample.metric != "eda_handler_calls_total" {
            continue;
        }
        let prometheus_parse::Value::Counter(value) = sample.value else {
            panic!("eda_handler_calls_total is a counter: {sample:?}");
        };
        let message = sample.labels.get("messaging_destination_name").unwrap();
        let outcome = sample.labels.get("outcome").unwrap();
        *calls
            .entry((message.to_owned(), outcome.to_owned()))
            .or_insert(0.0) += value;
    }
    calls
}

/// A SIGKILL of allocation a third into the stream (it restarts), then of
/// orders two thirds in (it restarts, the clients follow it): nothing
/// acknowledged is lost, nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_settles_every_order_when_each_service_is_killed_in_turn() {
    let _exclusive = PAIRS.write().await;
    let started = Instant::now();
    let Some(mut pair) = Pair::start().await else {
        return;
    };
    let plan = Plan::new(&unique_name("kill"), 10, 60, 2 * orders_per_run(), 13);
    stock(&pair, &plan).await;
    // About 100 orders a second: the stream lasts long enough for both
    // kills and restarts to land in it.
    let load = HttpLoad::new(&pair.orders().base).pause(Duration::from_millis(40));
    let stream = load.post("/orders", plan.requests(), 4);
    let n = plan.orders.len();

    load.when_sent(n / 4).await;
    pair.allocation.take().unwrap().kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.restart_allocation().await;

    load.when_sent(n / 2).await;
    pair.orders.take().unwrap().kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.restart_orders().await;
    load.target(&pair.orders().base);
    assert!(load.sent() < n, "the stream was still running");

    let placed = stream.await.unwrap();
    assert!(
        placed.failed.get(&0).copied().unwrap_or(0) > 0,
        "orders was killed under load: some requests got no answer ({:?})",
        placed.failed
    );
    let books = pair
        .books(
            &plan,
            &placed.attempted,
            &placed.acknowledged,
            Duration::from_secs(120),
        )
        .await;
    let no_answer = placed.failed.get(&0).copied().unwrap_or(0);
    figures("sigkill each in turn", &books, no_answer, started.elapsed());
    pair.stop().await;
}
