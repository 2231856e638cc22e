//! Rules 9 and 10 of DESIGN.md between two services on the real RabbitMQ
//! (each test with its own exchange and queues): a service's queue is bound
//! to what it consumes from others, events from a shared contracts module
//! included; an event it raises and handles itself is handled once;
//! commands come from the broker only when the service accepts them.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eda_core::adapters::in_process::{InProcessBroker, InProcessService};
use eda_core::adapters::rabbitmq::RabbitMq;
use eda_core::entrypoints::ConsumerMetrics;
use eda_core::entrypoints::ConsumerOptions;
use eda_core::prelude::*;
use eda_core::testing::TestRabbitMq;
use eda_core::{Error, OutboxRelay, RelayOptions};
use tokio::sync::oneshot;

/// What both services share, as a contracts crate would hold it.
mod contracts {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, eda_core::Event)]
    #[event(name = "topology.order_placed", external)]
    pub(crate) struct OrderPlaced {
        pub(crate) orderid: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, eda_core::Event)]
    #[event(name = "topology.shipped", external)]
    pub(crate) struct Shipped {
        pub(crate) orderid: String,
    }
}

/// Places orders; publishes `OrderPlaced`, and also handles it itself.
mod orders {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Aggregate)]
    pub(crate) struct Order {
        #[aggregate(id)]
        pub(crate) orderid: String,
        pub(crate) version: u64,
        pub(crate) events: Events,
    }

    #[derive(UnitOfWork)]
    pub(crate) struct OrdersUow {
        tx: UowTransaction,
        orders: IdentityMap<Order>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "topology.place_order")]
    pub(crate) struct PlaceOrder {
        pub(crate) orderid: String,
    }

    #[command_handler]
    async fn place_order(
        cmd: PlaceOrder,
        uow: &mut OrdersUow,
    ) -> Result<(), CommandError<BoxError>> {
        let mut order = Order {
            orderid: cmd.orderid.clone(),
            version: 0,
            events: Events::new(),
        };
        order.events.raise(contracts::OrderPlaced {
            orderid: cmd.orderid,
        });
        uow.orders().add(order)?;
        Ok(uow.commit().await?)
    }

    #[event_handler]
    async fn count_own(_: &contracts::OrderPlaced, counts: &SharedCounts) {
        counts.orders.fetch_add(1, Ordering::SeqCst);
    }

    #[event_handler]
    async fn mark_shipped(_: &contracts::Shipped, counts: &SharedCounts) {
        counts.orders_saw_shipped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Ships what other services order; publishes `Shipped`, and also handles
/// it itself.
mod shipping {
    use super::*;

    #[derive(Debug, Clone, Aggregate)]
    pub(crate) struct Shipment {
        #[aggregate(id)]
        pub(crate) orderid: String,
        pub(crate) version: u64,
        pub(crate) events: Events,
    }

    #[derive(UnitOfWork)]
    pub(crate) struct ShippingUow {
        tx: UowTransaction,
        shipments: IdentityMap<Shipment>,
    }

    #[event_handler]
    async fn ship(
        event: &contracts::OrderPlaced,
        uow: &mut ShippingUow,
        counts: &SharedCounts,
    ) -> Result<(), Error> {
        counts.shipping.fetch_add(1, Ordering::SeqCst);
        let mut shipment = Shipment {
            orderid: event.orderid.clone(),
            version: 0,
            events: Events::new(),
        };
        shipment.events.raise(contracts::Shipped {
            orderid: event.orderid.clone(),
        });
        uow.shipments().add(shipment)?;
        uow.commit().await
    }

    #[event_handler]
    async fn count_own_shipped(_: &contracts::Shipped, counts: &SharedCounts) {
        counts.shipping_saw_shipped.fetch_add(1, Ordering::SeqCst);
    }
}

/// How often each service's handlers ran.
#[derive(Default)]
pub(crate) struct Counts {
    orders: AtomicUsize,
    shipping: AtomicUsize,
    orders_saw_shipped: AtomicUsize,
    shipping_saw_shipped: AtomicUsize,
}
impl Adapter for Counts {}

/// A service of the test: its bus, database, relay and consumer.
struct Service {
    db: InMemoryDatabase,
    bus: MessageBus,
    relay: OutboxRelay,
    stop: oneshot::Sender<()>,
    consumer: tokio::task::JoinHandle<Result<(), Error>>,
    metrics: Arc<ConsumerMetrics>,
}

/// Where a test's services meet: the real RabbitMQ, or the in-process
/// broker.
#[derive(Clone)]
enum Broker {
    RabbitMq(RabbitMq),
    InProcess(InProcessService),
}

impl From<RabbitMq> for Broker {
    fn from(rabbitmq: RabbitMq) -> Self {
        Broker::RabbitMq(rabbitmq)
    }
}

impl From<InProcessService> for Broker {
    fn from(service: InProcessService) -> Self {
        Broker::InProcess(service)
    }
}

impl Service {
    async fn start(
        broker: impl Into<Broker>,
        scope: &str,
        counts: &Arc<Counts>,
        builder: impl FnOnce(eda_core::BusBuilder) -> eda_core::BusBuilder,
    ) -> Service {
        let db = InMemoryDatabase::new();
        let bus = builder(
            MessageBus::builder()
                .scope(scope)
                .adapter(db.clone())
                .adapter(SharedCounts(counts.clone())),
        )
        .build()
        .expect("wiring");
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (publisher, consumer, metrics) = match broker.into() {
            Broker::RabbitMq(rabbitmq) => {
                let consumer = rabbitmq.consumer(bus.clone());
                let metrics = consumer.metrics();
                (
                    rabbitmq.publisher(),
                    tokio::spawn(consumer.run(stopped)),
                    metrics,
                )
            }
            Broker::InProcess(service) => {
                let consumer = service.consumer(bus.clone());
                let metrics = consumer.metrics();
                (
                    service.publisher(),
                    tokio::spawn(consumer.run(stopped)),
                    metrics,
                )
            }
        };
        let relay = OutboxRelay::spawn(
            Arc::new(db.clone()),
            publisher,
            RelayOptions {
                poll: Duration::from_millis(20),
                ..RelayOptions::default()
            },
        );
        wait_until("the consumer is consuming", || metrics.consuming()).await;
        Service {
            db,
            bus,
            relay,
            stop,
            consumer,
            metrics,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.consumer.await.unwrap().unwrap();
        self.relay.shutdown().await;
    }
}

/// `Counts` shared by both services' buses.
pub(crate) struct SharedCounts(Arc<Counts>);
impl Adapter for SharedCounts {}
impl std::ops::Deref for SharedCounts {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        &self.0
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The issue's trial: with the defaults, an event declared in a shared
/// contracts module and marked `external` (so that its producer publishes
/// it) was never bound to the consumer's queue, and never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_shared_contract_crosses_to_the_service_that_handles_it() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let shipping = rmq.service("shipping", |o| o).await;
    let orders = rmq.service("orders", |o| o).await;
    two_services_exchange_events(shipping, orders).await;
    rmq.cleanup().await;
}

/// The same two services on the in-process broker, which routes as
/// RabbitMQ does: the binding mistake fails here as it does there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_the_in_process_broker() {
    let broker = InProcessBroker::new();
    let shipping = broker.service(ConsumerOptions::new("shipping"));
    let orders = broker.service(ConsumerOptions::new("orders"));
    two_services_exchange_events(shipping, orders).await;
    assert!(broker.is_empty("shipping") && broker.is_empty("orders"));
    assert!(broker.is_empty("shipping.dlq") && broker.is_empty("orders.dlq"));
}

/// A layer that notes each handler call it wraps: handler, whether the
/// message came from the broker, whether it succeeded.
#[derive(Clone, Default)]
struct Calls(Arc<std::sync::Mutex<Vec<(String, bool, bool)>>>);

impl eda_core::Layer for Calls {
    async fn call(
        &self,
        call: eda_core::HandlerCall<'_>,
        next: eda_core::Next<'_>,
    ) -> eda_core::Outcome {
        let outcome = next.run().await;
        self.0.lock().unwrap().push((
            call.handler().to_string(),
            call.is_incoming(),
            outcome.is_ok(),
        ));
        outcome
    }
}

impl Calls {
    /// How many calls of `handler`, `incoming` or not, succeeded.
    fn count(&self, handler: &str, incoming: bool) -> usize {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(h, i, ok)| h == handler && *i == incoming && *ok)
            .count()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn two_services_exchange_events(shipping: impl Into<Broker>, orders: impl Into<Broker>) {
    let counts = Arc::new(Counts::default());
    // Each service's own layer sees its handler calls, those of messages
    // from the other service included.
    let (shipping_calls, orders_calls) = (Calls::default(), Calls::default());
    let shipping = Service::start(shipping, "topology::shipping", &counts, {
        let calls = shipping_calls.clone();
        |b| b.layer(calls)
    })
    .await;
    let orders = Service::start(orders, "topology::orders", &counts, {
        let calls = orders_calls.clone();
        |b| b.layer(calls)
    })
    .await;
    for i in 0..3 {
        orders
            .bus
            .handle(orders::PlaceOrder {
                orderid: format!("o{i}"),
            })
            .await
            .unwrap();
    }
    wait_until("shipping handled the three orders", || {
        counts.shipping.load(Ordering::SeqCst) == 3
    })
    .await;
    wait_until("orders heard of the three shipments", || {
        counts.orders_saw_shipped.load(Ordering::SeqCst) == 3
    })
    .await;
    // Each service's own events came back to it (it handles them, so its
    // queue is bound to them) and were not handled again.
    wait_until("both saw their own events come back", || {
        orders.metrics.own_events() == 3 && shipping.metrics.own_events() == 3
    })
    .await;
    assert_eq!(counts.orders.load(Ordering::SeqCst), 3);
    assert_eq!(counts.shipping_saw_shipped.load(Ordering::SeqCst), 3);
    assert_eq!(orders.db.outbox().len(), 3);
    assert_eq!(shipping.db.outbox().len(), 3);
    assert_eq!(orders_calls.count("topology::place_order", false), 3);
    assert_eq!(orders_calls.count("topology::count_own", false), 3);
    assert_eq!(orders_calls.count("topology::mark_shipped", true), 3);
    assert_eq!(orders_calls.len(), 9, "{:?}", orders_calls.0);
    assert_eq!(shipping_calls.count("topology::ship", true), 3);
    assert_eq!(
        shipping_calls.count("topology::count_own_shipped", false),
        3
    );
    assert_eq!(shipping_calls.len(), 6, "{:?}", shipping_calls.0);
    orders.stop().await;
    shipping.stop().await;
}

/// A plain client of the test's exchange, with publisher confirms.
async fn client(rmq: &TestRabbitMq) -> lapin::Channel {
    let channel = rmq.rabbitmq.channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

/// Publishes `body` as message `name` to `exchange` with the mandatory
/// flag: whether a queue took it.
async fn routed(channel: &lapin::Channel, exchange: &str, name: &str, body: &[u8]) -> bool {
    routed_to(channel, exchange, name, name, body).await
}

/// The same, with a routing key of its own (a queue's name, on the default
/// exchange).
async fn routed_to(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    name: &str,
    body: &[u8],
) -> bool {
    let properties = lapin::BasicProperties::default()
        .with_message_id(eda_core::MessageId::new().to_string().into())
        .with_type(name.into())
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    matches!(confirm, lapin::Confirmation::Ack(None))
}

/// Anyone who can publish to the exchange could send any command a service
/// handles: by default a command is handled in-process only, its name is
/// not bound, and a copy sent to the queue anyway is dead-lettered with the
/// reason. Accepted, it is bound and handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_come_from_the_broker_only_when_accepted() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.max_attempts(1)).await else {
        return;
    };
    let counts = Arc::new(Counts::default());
    let rabbitmq = rmq.service("orders", |o| o.max_attempts(1)).await;
    let queue = rabbitmq.options().consumer().queue_name().to_owned();
    let exchange = rabbitmq.options().consumer().exchange_name().to_owned();
    let channel = client(&rmq).await;
    let body = br#"{"orderid":"sent-over-the-broker"}"#;

    let orders = Service::start(rabbitmq.clone(), "topology::orders", &counts, |b| b).await;
    assert!(
        !routed(&channel, &exchange, "topology.place_order", body).await,
        "no queue is bound to a command nobody accepts"
    );
    // Straight to the queue, as a misbehaving producer could.
    assert!(routed_to(&channel, "", &queue, "topology.place_order", body).await);
    let dlq = rabbitmq.options().consumer().dead_letter_queue();
    wait_until("it is dead-lettered", || {
        orders.metrics.dead_lettered() == 1
    })
    .await;
    let dead = channel
        .basic_get(
            dlq.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("in the dead-letter queue");
    let reason = eda_core::adapters::rabbitmq::header_string(
        &dead.delivery.properties,
        eda_core::adapters::rabbitmq::ERROR_HEADER,
    )
    .unwrap();
    assert!(
        reason.contains("topology.place_order") && reason.contains("accept::<"),
        "{reason}"
    );
    assert!(
        orders
            .db
            .get::<orders::Order>("sent-over-the-broker")
            .is_none()
    );
    orders.stop().await;

    let orders = Service::start(rabbitmq.clone(), "topology::orders", &counts, |b| {
        b.accept::<orders::PlaceOrder>()
    })
    .await;
    assert!(routed(&channel, &exchange, "topology.place_order", body).await);
    wait_until("it is handled", || {
        orders
            .db
            .get::<orders::Order>("sent-over-the-broker")
            .is_some()
    })
    .await;
    orders.stop().await;

    // No longer accepted: the binding left by the previous run goes.
    let orders = Service::start(rabbitmq, "topology::orders", &counts, |b| b).await;
    assert!(!routed(&channel, &exchange, "topology.place_order", body).await);
    orders.stop().await;
    rmq.cleanup().await;
}

/// A binding made by an earlier version of the service, of a name this
/// binary does not even know (a message type since removed), is removed at
/// the next start: the queue keeps a record of what it was bound to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_no_handler_needs_are_removed_at_start() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let counts = Arc::new(Counts::default());
    let exchange = rmq.options().consumer().exchange_name().to_owned();
    let channel = client(&rmq).await;
    let old = rmq
        .service("shipping", |o| {
            o.bind(["topology.order_placed", "topology.retired_event"])
        })
        .await;
    let shipping = Service::start(old, "topology::shipping", &counts, |b| b).await;
    assert!(routed(&channel, &exchange, "topology.retired_event", b"{}").await);
    shipping.stop().await;

    let new = rmq.service("shipping", |o| o).await;
    let shipping = Service::start(new, "topology::shipping", &counts, |b| b).await;
    assert!(
        !routed(&channel, &exchange, "topology.retired_event", b"{}").await,
        "the stale binding was removed"
    );
    assert!(
        routed(
            &channel,
            &exchange,
            "topology.order_placed",
            br#"{"orderid":"x"}"#
        )
        .await
    );
    wait_until("the order is shipped", || {
        counts.shipping.load(Ordering::SeqCst) == 1
    })
    .await;
    shipping.stop().await;
    rmq.cleanup().await;
}

/// What `build()` and the consumer report about a topology, without a
/// broker.
mod reports {
    use super::*;
    use eda_core::TopologyWarning;

    pub(crate) mod nowhere {
        use serde::{Deserialize, Serialize};

        /// Not external, no handler: raising it does nothing.
        #[derive(Debug, Clone, Serialize, Deserialize, eda_core::Event)]
        #[event(name = "topology.nowhere.forgotten")]
        pub(crate) struct Forgotten {}

        #[derive(Debug, Clone, eda_core::Aggregate)]
        pub(crate) struct Thing {
            #[aggregate(id)]
            pub(crate) id: String,
            pub(crate) version: u64,
            pub(crate) events: eda_core::Events,
        }

        #[derive(eda_core::UnitOfWork)]
        pub(crate) struct ThingUow {
            tx: eda_core::UowTransaction,
            things: eda_core::IdentityMap<Thing>,
        }

        #[derive(Debug, Clone, Serialize, Deserialize, eda_core::Command)]
        #[command(name = "topology.nowhere.forget")]
        pub(crate) struct Forget {}

        #[eda_core::command_handler]
        async fn forget(
            _: Forget,
            uow: &mut ThingUow,
        ) -> Result<(), eda_core::CommandError<eda_core::BoxError>> {
            let mut thing = Thing {
                id: eda_core::MessageId::new().to_string(),
                version: 0,
                events: eda_core::Events::new(),
            };
            thing.events.raise(Forgotten {});
            uow.things().add(thing)?;
            Ok(uow.commit().await?)
        }
    }

    #[tokio::test]
    async fn an_event_that_goes_nowhere_is_reported_at_build_and_counted_when_raised() {
        let bus = MessageBus::builder()
            .scope("topology::reports::nowhere")
            .adapter(InMemoryDatabase::new())
            .build()
            .unwrap();
        let warnings = bus.topology(None).warnings().to_vec();
        assert!(
            matches!(
                &warnings[..],
                [TopologyWarning::EventGoesNowhere {
                    event: "topology.nowhere.forgotten",
                    ..
                }]
            ),
            "{warnings:?}"
        );
        assert!(warnings[0].to_string().contains("tests/topology.rs"));
        bus.handle(nowhere::Forget {}).await.unwrap();
        bus.handle(nowhere::Forget {}).await.unwrap();
        assert_eq!(bus.metrics().events_unhandled, 2);
    }

    #[test]
    fn bindings_given_by_hand_are_compared_with_what_the_service_consumes() {
        let bus = MessageBus::builder()
            .scope("topology::orders")
            .adapter(InMemoryDatabase::new())
            .adapter(SharedCounts(Arc::default()))
            .build()
            .unwrap();
        assert_eq!(
            bus.consumed_message_names(),
            ["topology.order_placed", "topology.shipped"]
        );
        let given = [
            "topology.order_placed".to_owned(),
            "topology.place_order".to_owned(),
            "nobody.knows_me".to_owned(),
        ];
        let topology = bus.topology(Some(&given));
        assert_eq!(
            topology.bindings(),
            [
                "nobody.knows_me",
                "topology.order_placed",
                "topology.place_order"
            ]
        );
        let warnings: Vec<String> = topology.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("`topology.shipped`") && warnings[0].contains("never arrive"));
        assert!(
            warnings[1].contains("`topology.place_order`") && warnings[1].contains("accept::<")
        );
        assert!(
            warnings[2].contains("`nobody.knows_me`")
                && warnings[2].contains("no message of this name")
        );
    }

    #[test]
    fn a_command_accepted_without_a_handler_does_not_build() {
        let err = MessageBus::builder()
            .scope("topology::shipping")
            .adapter(InMemoryDatabase::new())
            .adapter(SharedCounts(Arc::default()))
            .accept::<orders::PlaceOrder>()
            .build()
            .unwrap_err();
        assert_eq!(
            err.problems,
            [eda_core::WiringProblem::AcceptedCommandWithoutHandler {
                command: "topology.place_order"
            }]
        );
    }
}

/// The in-process broker's consumer gives the verdicts RabbitMQ's does
/// (the same code), and the relay keeps what it cannot route.
mod in_process {
    use super::*;
    use eda_core::adapters::in_process::InProcessMessage;
    use eda_core::{ExternalMessage, Metadata};

    fn message(name: &str, body: &[u8], to: &str) -> InProcessMessage {
        let mut m = InProcessMessage::new(
            ExternalMessage {
                name: name.into(),
                metadata: Metadata::new(),
                payload: body.to_vec(),
                trace: Default::default(),
            },
            None,
        );
        m.routing_key = to.into();
        m
    }

    #[tokio::test]
    async fn a_command_not_accepted_and_bad_input_are_dead_lettered_with_the_reason() {
        let broker = InProcessBroker::new();
        let counts = Arc::new(Counts::default());
        let orders = Service::start(
            broker.service(ConsumerOptions::new("orders")),
            "topology::orders",
            &counts,
            |b| b,
        )
        .await;
        let body = br#"{"orderid":"o1"}"#;
        for m in [
            message("topology.place_order", body, "orders"),
            message("topology.order_placed", b"{not json", "orders"),
            message("nobody.knows_me", b"{}", "orders"),
        ] {
            assert!(broker.publish("", m).unwrap());
        }
        wait_until("all three are dead-lettered", || {
            orders.metrics.dead_lettered() == 3
        })
        .await;
        let reasons: Vec<String> = std::iter::from_fn(|| broker.take("orders.dlq"))
            .map(|m| m.error.unwrap())
            .collect();
        assert_eq!(reasons.len(), 3);
        // Handled side by side: in any order.
        for expected in ["accept::<", "malformed", "unknown message"] {
            assert!(
                reasons.iter().any(|r| r.contains(expected)),
                "{expected}: {reasons:#?}"
            );
        }
        assert!(orders.db.get::<orders::Order>("o1").is_none());
        orders.stop().await;
    }

    #[tokio::test]
    async fn an_event_published_before_its_consumer_is_bound_arrives_once_it_is() {
        let broker = InProcessBroker::new();
        let counts = Arc::new(Counts::default());
        let db = InMemoryDatabase::new();
        let bus = MessageBus::builder()
            .scope("topology::orders")
            .adapter(db.clone())
            .adapter(SharedCounts(counts.clone()))
            .build()
            .unwrap();
        // Orders publishes before shipping exists.
        let relay = OutboxRelay::spawn(
            Arc::new(db.clone()),
            broker.service(ConsumerOptions::new("orders")).publisher(),
            RelayOptions {
                poll: Duration::from_millis(20),
                unroutable_backoff: Duration::from_millis(20),
                unroutable_max_backoff: Duration::from_millis(50),
                ..RelayOptions::default()
            },
        );
        bus.handle(orders::PlaceOrder {
            orderid: "early".into(),
        })
        .await
        .unwrap();
        wait_until("it is found unroutable", || {
            relay.metrics().unroutable() >= 1
        })
        .await;
        let shipping = Service::start(
            broker.service(ConsumerOptions::new("shipping")),
            "topology::shipping",
            &counts,
            |b| b,
        )
        .await;
        wait_until("shipping handled it", || {
            counts.shipping.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(relay.metrics().published(), 1);
        relay.shutdown().await;
        shipping.stop().await;
    }
}

/// Rule 8: a shutdown that outlives its grace returns the in-flight
/// messages to the queue, and their handlers stop with the consumer.
mod shutdown {
    use super::*;
    use eda_core::adapters::in_process::InProcessMessage;
    use eda_core::{ExternalMessage, Metadata};

    pub(crate) mod slow {
        use super::super::*;

        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, eda_core::Event)]
        #[event(name = "topology.slow.tick", external)]
        pub(crate) struct Tick {}

        #[derive(Default)]
        pub(crate) struct Slow {
            pub(crate) started: AtomicUsize,
            pub(crate) finished: AtomicUsize,
        }
        impl Adapter for Slow {}

        #[event_handler]
        async fn take_your_time(_: &Tick, slow: &Slow) {
            slow.started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(600)).await;
            slow.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_does_not_outlive_its_consumer() {
        let broker = InProcessBroker::new();
        let bus = MessageBus::builder()
            .scope("topology::shutdown::slow")
            .adapter(slow::Slow::default())
            .build()
            .unwrap();
        let service =
            broker.service(ConsumerOptions::new("slow").shutdown_grace(Duration::from_millis(50)));
        let consumer = service.consumer(bus.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(consumer.run(async {
            let _ = stopped.await;
        }));
        let tick = InProcessMessage::new(
            ExternalMessage {
                name: "topology.slow.tick".into(),
                metadata: Metadata::new(),
                payload: b"{}".to_vec(),
                trace: Default::default(),
            },
            None,
        );
        let slow = bus.adapter::<slow::Slow>().unwrap();
        wait_until("the queue is bound", || !broker.bindings("slow").is_empty()).await;
        assert!(broker.publish("eda.events", tick).unwrap());
        wait_until("the handler started", || {
            slow.started.load(Ordering::SeqCst) == 1
        })
        .await;
        let _ = stop.send(());
        running.await.unwrap().unwrap();
        assert_eq!(broker.len("slow"), 1, "returned to the queue");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            slow.finished.load(Ordering::SeqCst),
            0,
            "the handler stopped with the consumer"
        );
    }
}
