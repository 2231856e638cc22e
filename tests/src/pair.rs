//! The example pair, `orders` and `allocation`, as the unit of proof: a plan
//! of stock and orders, what the two services hold once they settled (a
//! [`Snapshot`], read from Postgres and the broker, or from memory), and
//! the books that must balance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::json;

/// Stock and orders: a few products with scarce stock, many orders of
/// one to three lines, some naming a product nobody stocks.
#[derive(Clone, Debug)]
pub struct Plan {
    /// (sku, units purchased, in one batch named after the sku).
    pub stock: Vec<(String, u32)>,
    /// (orderid, lines (sku, qty)).
    pub orders: Vec<(String, Vec<(String, u32)>)>,
}

impl Plan {
    /// `orders` orders over `skus` products of `units` each, drawn from
    /// `seed` (the same plan every run); about one order in twenty has a
    /// line of an unknown product.
    pub fn new(prefix: &str, skus: usize, units: u32, orders: usize, seed: u64) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let stock: Vec<(String, u32)> = (0..skus)
            .map(|i| (format!("{prefix}-sku{i}"), units))
            .collect();
        let orders = (0..orders)
            .map(|i| {
                let mut skus: Vec<String> = stock.iter().map(|(s, _)| s.clone()).collect();
                rng.shuffle(&mut skus);
                let mut lines: Vec<(String, u32)> = skus
                    .into_iter()
                    .take(rng.usize(1..=3))
                    .map(|sku| (sku, rng.u32(1..=3)))
                    .collect();
                if rng.usize(0..20) == 0 {
                    lines.push((format!("{prefix}-unknown"), 1));
                }
                (format!("{prefix}-o{i}"), lines)
            })
            .collect();
        Plan { stock, orders }
    }

    /// The `POST /orders` of each order: (orderid, body).
    pub fn requests(&self) -> Vec<(String, serde_json::Value)> {
        self.orders
            .iter()
            .map(|(orderid, lines)| {
                let lines: Vec<_> = lines
                    .iter()
                    .map(|(sku, qty)| json!({"sku": sku, "qty": qty}))
                    .collect();
                (orderid.clone(), json!({"orderid": orderid, "lines": lines}))
            })
            .collect()
    }

    /// The batch reference of a product's stock.
    pub fn batchref(sku: &str) -> String {
        format!("{sku}-batch")
    }
}

/// An order as the orders service holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderState {
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// Why it was cancelled.
    pub reason: Option<String>,
    /// (sku, qty, batchref).
    pub lines: Vec<(String, u32, Option<String>)>,
}

/// What the two services hold, and what the events observed on the broker
/// say.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Orders, by id.
    pub orders: BTreeMap<String, OrderState>,
    /// Allocation's allocations: (orderid, sku, qty, batchref).
    pub allocations: Vec<(String, String, u32, String)>,
    /// Allocation's batches: reference → units purchased.
    pub purchased: BTreeMap<String, u32>,
    /// `orders.order_cancelled` received, by order: their message ids.
    pub cancelled_events: BTreeMap<String, BTreeSet<String>>,
    /// `allocation.allocated` received, by (order, sku): their message ids.
    pub allocated_events: BTreeMap<(String, String), BTreeSet<String>>,
    /// Publications received (duplicates included).
    pub deliveries: usize,
    /// Outbox rows not yet published, both services.
    pub unsent: i64,
}

impl Snapshot {
    /// Whether the pair has settled: every acknowledged order is known,
    /// none is pending, each cancelled one's event arrived and allocation
    /// released its stock, the outboxes are empty.
    pub fn settled(&self, acknowledged: &BTreeSet<String>) -> bool {
        acknowledged.iter().all(|o| self.orders.contains_key(o))
            && self.orders.values().all(|o| o.status != "pending")
            && self
                .orders
                .iter()
                .filter(|(_, o)| o.status == "cancelled")
                .all(|(id, _)| self.cancelled_events.contains_key(id))
            && self.unreleased().is_empty()
            && self.unsent == 0
    }

    /// Allocations of orders that are not confirmed (yet, or any more): a
    /// cancelled order's until allocation released them.
    pub fn unreleased(&self) -> Vec<&(String, String, u32, String)> {
        self.allocations
            .iter()
            .filter(|(o, ..)| self.orders.get(o).is_none_or(|o| o.status != "confirmed"))
            .collect()
    }

    /// What is not settled yet, for a timeout's message.
    pub fn unsettled(&self) -> String {
        let pending: Vec<&String> = self
            .orders
            .iter()
            .filter(|(_, o)| o.status == "pending")
            .map(|(id, _)| id)
            .take(5)
            .collect();
        let unreleased: Vec<_> = self.unreleased().into_iter().take(5).collect();
        format!(
            "pending orders {pending:?}, unreleased allocations {unreleased:?}, unsent outbox rows {}",
            self.unsent
        )
    }

    /// Records an observed event (`orders.order_cancelled` or
    /// `allocation.allocated`) with its message id.
    pub fn observe(&mut self, name: &str, message_id: String, body: &serde_json::Value) {
        self.deliveries += 1;
        let orderid = body["orderid"].as_str().unwrap_or_default().to_owned();
        match name {
            "orders.order_cancelled" => {
                self.cancelled_events
                    .entry(orderid)
                    .or_default()
                    .insert(message_id);
            }
            "allocation.allocated" => {
                let sku = body["sku"].as_str().unwrap_or_default().to_owned();
                self.allocated_events
                    .entry((orderid, sku))
                    .or_default()
                    .insert(message_id);
            }
            _ => {}
        }
    }
}

/// What the books counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairBooks {
    /// Orders placed (answered or not).
    pub attempted: usize,
    /// Orders that got a 201 (or whose command returned `Ok`).
    pub acknowledged: usize,
    /// Orders the orders service holds.
    pub orders: usize,
    /// Of those, confirmed.
    pub confirmed: usize,
    /// Of those, cancelled.
    pub cancelled: usize,
    /// Cancelled for a product nobody stocks.
    pub unknown_sku: usize,
    /// Cancelled because allocation did not answer in time.
    pub timed_out: usize,
    /// Units allocated to confirmed orders.
    pub units_confirmed: u64,
    /// Units purchased.
    pub units_purchased: u64,
    /// Events received more than once (same message id): removed by the
    /// consumers' inboxes.
    pub duplicates: usize,
}

/// Asserts the books of the pair, given the plan, the orders attempted and
/// acknowledged, and the settled snapshot:
///
/// - every acknowledged order is held, and nothing but attempted orders;
/// - every order ended confirmed or cancelled, a cancelled one with a
///   reason, and its `orders.order_cancelled` published exactly once after
///   dedupe (a confirmed one never);
/// - a confirmed order has every line allocated, and allocation holds
///   exactly the lines of confirmed orders, each once: the allocations of
///   cancelled orders were released;
/// - stock is never oversold, and what is left of each product is what was
///   purchased less the confirmed orders' quantities;
/// - each line allocated has exactly one `allocation.allocated` after
///   dedupe.
pub fn check_pair_books(
    plan: &Plan,
    attempted: &BTreeSet<String>,
    acknowledged: &BTreeSet<String>,
    s: &Snapshot,
) -> PairBooks {
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|o| !s.orders.contains_key(*o))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not held: {lost:?}");
    let strangers: Vec<&String> = s
        .orders
        .keys()
        .filter(|o| !attempted.contains(*o))
        .collect();
    assert!(strangers.is_empty(), "held but never placed: {strangers:?}");
    let planned: BTreeMap<&str, &Vec<(String, u32)>> = plan
        .orders
        .iter()
        .map(|(id, lines)| (id.as_str(), lines))
        .collect();

    let mut books = PairBooks {
        attempted: attempted.len(),
        acknowledged: acknowledged.len(),
        orders: s.orders.len(),
        ..PairBooks::default()
    };
    let mut expected_allocations: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (id, order) in &s.orders {
        let lines: Vec<(String, u32)> = order
            .lines
            .iter()
            .map(|(sku, qty, _)| (sku.clone(), *qty))
            .collect();
        assert_eq!(&lines, planned[id.as_str()], "order {id} holds its lines");
        let cancellations = s.cancelled_events.get(id).map_or(0, BTreeSet::len);
        match order.status.as_str() {
            "confirmed" => {
                books.confirmed += 1;
                assert!(
                    order.lines.iter().all(|(_, _, b)| b.is_some()),
                    "confirmed order {id} has every line allocated: {order:?}"
                );
                assert_eq!(cancellations, 0, "confirmed order {id} was cancelled");
                for (sku, qty, _) in &order.lines {
                    expected_allocations.insert((id.clone(), sku.clone()), *qty);
                    books.units_confirmed += u64::from(*qty);
                }
            }
            "cancelled" => {
                books.cancelled += 1;
                let reason = order.reason.as_deref().unwrap_or_default();
                assert!(
                    reason.starts_with("out of stock")
                        || reason.starts_with("unknown sku")
                        || reason == "timeout",
                    "order {id} cancelled for {reason:?}"
                );
                if reason.starts_with("unknown sku") {
                    books.unknown_sku += 1;
                }
                if reason == "timeout" {
                    books.timed_out += 1;
                }
                assert_eq!(
                    cancellations, 1,
                    "order {id}: one orders.order_cancelled after dedupe"
                );
            }
            other => panic!("order {id} ended {other}"),
        }
    }
    let ghosts: Vec<&String> = s
        .cancelled_events
        .keys()
        .filter(|o| s.orders.get(*o).is_none_or(|o| o.status != "cancelled"))
        .collect();
    assert!(
        ghosts.is_empty(),
        "cancellations of orders not cancelled: {ghosts:?}"
    );

    // Allocation holds exactly the lines of confirmed orders, each once.
    let mut held: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut per_batch: BTreeMap<&str, u64> = BTreeMap::new();
    for (orderid, sku, qty, batchref) in &s.allocations {
        let before = held.insert((orderid.clone(), sku.clone()), *qty);
        assert!(before.is_none(), "{orderid}/{sku} allocated twice");
        *per_batch.entry(batchref.as_str()).or_default() += u64::from(*qty);
    }
    let released_late: Vec<_> = held
        .keys()
        .filter(|k| !expected_allocations.contains_key(*k))
        .collect();
    assert!(
        released_late.is_empty(),
        "allocated, but the order is not confirmed (not released): {released_late:?}"
    );
    assert_eq!(
        held, expected_allocations,
        "allocation holds the confirmed lines"
    );
    for (batchref, allocated) in &per_batch {
        let purchased = s.purchased.get(*batchref).copied().unwrap_or(0);
        assert!(
            *allocated <= u64::from(purchased),
            "{batchref} oversold: {allocated} of {purchased}"
        );
    }
    for (sku, units) in &plan.stock {
        let batchref = Plan::batchref(sku);
        let confirmed: u64 = expected_allocations
            .iter()
            .filter(|((_, s), _)| s == sku)
            .map(|(_, q)| u64::from(*q))
            .sum();
        assert_eq!(
            u64::from(*units) - per_batch.get(batchref.as_str()).copied().unwrap_or(0),
            u64::from(*units) - confirmed,
            "what is left of {sku}"
        );
        books.units_purchased += u64::from(*units);
    }

    // One allocation.allocated per line ever allocated, after dedupe.
    let twice: Vec<_> = s
        .allocated_events
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "lines allocated more than once: {twice:?}"
    );
    for key in expected_allocations.keys() {
        assert!(
            s.allocated_events.contains_key(key),
            "no allocation.allocated for {key:?}"
        );
    }
    let distinct = s
        .cancelled_events
        .values()
        .map(BTreeSet::len)
        .sum::<usize>()
        + s.allocated_events
            .values()
            .map(BTreeSet::len)
            .sum::<usize>();
    books.duplicates = s.deliveries - distinct;
    books
}

/// A consumer's task.
type Consumer = tokio::task::JoinHandle<Result<(), eda_core::Error>>;

/// Both example services' buses in this process, on an in-process broker,
/// in memory, each with its consumer, its outbox relay and its scheduler:
/// the pair as the fast tests run it.
pub struct InProcessPair {
    /// The broker both share.
    pub broker: eda_core::adapters::in_process::InProcessBroker,
    /// Allocation's state.
    pub allocation_db: eda_core::InMemoryDatabase,
    /// Allocation's bus (the handlers of the crate `allocation`).
    pub allocation_bus: eda_core::MessageBus,
    /// Orders' state.
    pub orders_db: eda_core::InMemoryDatabase,
    /// Orders' bus (the handlers of the crate `orders`).
    pub orders_bus: eda_core::MessageBus,
    /// Allocation's place on the broker, and its consumer while it runs
    /// (with what stops it alone).
    allocation_service: eda_core::adapters::in_process::InProcessService,
    /// What allocation handled from the broker, in order.
    pub allocation_handled: Handled,
    allocation_consumer: Option<(tokio::sync::watch::Sender<bool>, Consumer)>,
    stop: tokio::sync::watch::Sender<bool>,
    consumers: Vec<Consumer>,
    schedulers: Vec<tokio::task::JoinHandle<()>>,
    relays: Vec<eda_core::OutboxRelay>,
}

/// The messages from the broker that allocation handled, in the order
/// their handler calls ended, with their correlation id (an order's
/// `OrderPlaced` and `OrderCancelled` share their order's): a layer of
/// allocation's bus in the in-process pair.
#[derive(Clone, Default)]
pub struct Handled(std::sync::Arc<Mutex<Vec<(eda_core::MessageId, &'static str)>>>);

impl Handled {
    /// What was handled so far, in order.
    pub fn calls(&self) -> Vec<(eda_core::MessageId, &'static str)> {
        self.0.lock().unwrap().clone()
    }
}

impl eda_core::Layer for Handled {
    async fn call(
        &self,
        call: eda_core::HandlerCall<'_>,
        next: eda_core::Next<'_>,
    ) -> eda_core::Outcome {
        let outcome = next.run().await;
        if call.is_incoming() && outcome.is_ok() && !outcome.is_duplicate() {
            self.0
                .lock()
                .unwrap()
                .push((call.metadata().correlation_id, call.message()));
        }
        outcome
    }
}

impl InProcessPair {
    /// Starts the pair; `consumer` gives each service's consumer options
    /// from its queue's name. Orders time out after the default 30 s.
    pub fn start(
        consumer: impl Fn(&str) -> eda_core::entrypoints::ConsumerOptions,
        relay: eda_core::RelayOptions,
    ) -> InProcessPair {
        Self::start_with_timeout(
            consumer,
            relay,
            orders::service_layer::DEFAULT_ORDER_TIMEOUT,
        )
    }

    /// The same, with orders cancelled after `order_timeout` without an
    /// answer from allocation. Each service's scheduler looks for due
    /// messages every 20 ms.
    pub fn start_with_timeout(
        consumer: impl Fn(&str) -> eda_core::entrypoints::ConsumerOptions,
        relay: eda_core::RelayOptions,
        order_timeout: std::time::Duration,
    ) -> InProcessPair {
        use allocation::adapters::notifications::{FakeNotifier, Notifications};
        use eda_core::{InMemoryDatabase, MessageBus, OutboxRelay};
        let broker = eda_core::adapters::in_process::InProcessBroker::new();
        let allocation_db = InMemoryDatabase::new();
        let handled = Handled::default();
        let allocation_bus = MessageBus::builder()
            .scope("allocation")
            .adapter(allocation_db.clone())
            .adapter(Notifications::new(FakeNotifier::new()))
            .layer(handled.clone())
            .build()
            .unwrap();
        let orders_db = InMemoryDatabase::new();
        let orders_bus = MessageBus::builder()
            .scope("orders")
            .adapter(orders_db.clone())
            .adapter(orders::service_layer::OrderTimeout(order_timeout))
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stop_signal = stopped.clone();
        let mut consumers = Vec::new();
        let mut relays = Vec::new();
        let mut schedulers = Vec::new();
        let mut allocation_service = None;
        for (queue, db, bus) in [
            ("allocation", &allocation_db, &allocation_bus),
            ("orders", &orders_db, &orders_bus),
        ] {
            let service = broker.service(consumer(queue));
            service.declare_topology(bus);
            if queue == "orders" {
                let mut stopped = stopped.clone();
                consumers.push(tokio::spawn(service.consumer(bus.clone()).run(
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )));
            }
            let mut stopped_too = stop_signal.clone();
            schedulers.push(tokio::spawn(bus.scheduler(
                eda_core::SchedulerOptions {
                    poll: std::time::Duration::from_millis(20),
                    ..eda_core::SchedulerOptions::default()
                },
                async move {
                    let _ = stopped_too.wait_for(|s| *s).await;
                },
            )));
            relays.push(OutboxRelay::spawn(
                std::sync::Arc::new(db.clone()),
                service.publisher(),
                relay.clone(),
            ));
            if queue == "allocation" {
                allocation_service = Some(service);
            }
        }
        let mut pair = InProcessPair {
            broker,
            allocation_db,
            allocation_bus,
            orders_db,
            orders_bus,
            allocation_service: allocation_service.expect("allocation is one of the two"),
            allocation_handled: handled,
            allocation_consumer: None,
            stop,
            consumers,
            schedulers,
            relays,
        };
        pair.resume_allocation();
        pair
    }

    /// Stops allocation's consumer (allocation is away): what is published
    /// for it waits in its queue. Its bus, relay and scheduler go on.
    pub async fn pause_allocation(&mut self) {
        if let Some((stop, consumer)) = self.allocation_consumer.take() {
            let _ = stop.send(true);
            consumer.await.unwrap().unwrap();
        }
    }

    /// Starts allocation's consumer again (it is started with the pair).
    pub fn resume_allocation(&mut self) {
        if self.allocation_consumer.is_some() {
            return;
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut all_stopped = self.stop.subscribe();
        let consumer = self
            .allocation_service
            .consumer(self.allocation_bus.clone())
            .run(async move {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => {}
                    _ = all_stopped.wait_for(|s| *s) => {}
                }
            });
        self.allocation_consumer = Some((stop, tokio::spawn(consumer)));
    }
    /// A queue of an observer (a third service), bound to `name` and to
    /// its ordering slots (`<name>.*`: where a message whose type declares
    /// an ordering key is published).
    pub fn observe(&self, queue: &str, name: &str) {
        self.broker.declare_exchange("eda.events");
        self.broker.declare_queue(queue);
        self.broker.bind(queue, "eda.events", name).unwrap();
        self.broker
            .bind(queue, "eda.events", &format!("{name}.*"))
            .unwrap();
    }

    /// Stops the consumers (each must end well) and the relays.
    pub async fn stop(mut self) {
        self.pause_allocation().await;
        let _ = self.stop.send(true);
        for consumer in self.consumers {
            consumer.await.unwrap().unwrap();
        }
        for scheduler in self.schedulers {
            scheduler.await.unwrap();
        }
        for relay in self.relays {
            relay.shutdown().await;
        }
    }
}
