//! Order per key on the real RabbitMQ (127.0.0.1:5672 or `AMQP_URL`): a
//! message type that declares an ordering key (`key = field`) is published
//! to its key's slot and consumed from the service's ordered partitions,
//! one message after another; different keys in parallel.
//!
//! The main test runs two instances of one service, the first in a process
//! of its own (this test binary, started again with `EDA_ORDER_CHILD` set)
//! that is SIGKILLed mid-stream: every key's handler calls, as committed,
//! see 1, 2, 3, … with no gap or swap.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
use eda_core::adapters::rabbitmq::{KEY_HEADER, RabbitMq, RabbitMqOptions, header_string};
use eda_core::backend::{ORDERING_SLOTS, ordering_slot};
use eda_core::prelude::*;
use eda_core::testing::{TestPostgres, TestRabbitMq, amqp_url};
use eda_core::{Error, ExternalMessage, Metadata};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

/// One step of a key's sequence.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "order_test.step", key = key)]
pub struct Step {
    pub key: String,
    pub seq: u32,
}

/// What the handler saw of a key, committed with each call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
pub struct Seen {
    #[aggregate(id)]
    pub key: String,
    pub seqs: Vec<u32>,
    /// Calls whose step was not the one after the last.
    pub swapped: u32,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct Keys {
    tx: UowTransaction,
    seen: IdentityMap<Seen>,
}

/// Steps that fail: (key, seq) → failures left (`u32::MAX`: always).
#[derive(Default)]
pub struct Failing(Mutex<BTreeMap<(String, u32), u32>>);
impl Adapter for Failing {}

/// How long each step takes.
#[derive(Default)]
pub struct Pace(Duration);
impl Adapter for Pace {}

#[command_handler]
async fn step(cmd: Step, uow: &mut Keys, failing: &Failing, pace: &Pace) -> Result<(), Error> {
    if !pace.0.is_zero() {
        tokio::time::sleep(pace.0).await;
    }
    if let Some(left) = failing
        .0
        .lock()
        .unwrap()
        .get_mut(&(cmd.key.clone(), cmd.seq))
        && *left > 0
    {
        *left -= 1;
        return Err(Error::Broker("this step fails, for the test".into()));
    }
    let seen = match uow.seen().get(&cmd.key).await? {
        Some(seen) => seen,
        None => uow.seen().add(Seen {
            key: cmd.key.clone(),
            seqs: Vec::new(),
            swapped: 0,
            version: 0,
            events: Events::new(),
        })?,
    };
    if seen.seqs.last().copied().unwrap_or(0) + 1 != cmd.seq {
        seen.swapped += 1;
    }
    seen.seqs.push(cmd.seq);
    uow.commit().await
}

fn bus(db: impl Adapter + Clone, failing: Failing) -> MessageBus {
    paced(db, failing, Duration::ZERO)
}

fn paced(db: impl Adapter + Clone, failing: Failing, pace: Duration) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .accept::<Step>()
        .adapter(db)
        .adapter(failing)
        .adapter(Pace(pace))
        .build()
        .expect("wiring")
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    metrics: std::sync::Arc<eda_core::entrypoints::ConsumerMetrics>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn consume(rabbitmq: &RabbitMq, bus: &MessageBus) -> Running {
    let consumer = rabbitmq.consumer(bus.clone());
    let metrics = consumer.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics.consuming() {
        assert!(Instant::now() < deadline, "the consumer never consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        stop,
        task,
        metrics,
    }
}

/// `order_test.step` messages, as the outbox holds them.
fn steps(steps: impl IntoIterator<Item = (String, u32)>) -> Vec<ExternalMessage> {
    steps
        .into_iter()
        .map(|(key, seq)| ExternalMessage {
            name: "order_test.step".into(),
            metadata: Metadata::new(),
            payload: serde_json::to_vec(&Step { key, seq }).unwrap(),
            trace: Default::default(),
        })
        .collect()
}

/// Publishes through the relay's publisher (which routes a keyed message
/// to its slot), every message confirmed.
async fn publish(rabbitmq: &RabbitMq, messages: &[ExternalMessage]) {
    let publisher = rabbitmq.publisher();
    for batch in messages.chunks(500) {
        let (deliveries, error) = publisher.publish(batch).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(deliveries.len(), batch.len());
        assert!(
            deliveries
                .iter()
                .all(|d| matches!(d, eda_core::backend::Delivery::Confirmed)),
            "every step routed: {deliveries:?}"
        );
    }
}

/// Every key's committed sequence, from the aggregate store.
async fn committed(pool: &eda_core::sqlx::PgPool) -> BTreeMap<String, Seen> {
    let rows: Vec<(String, String)> = eda_core::sqlx::query_as(
        "SELECT id, body FROM eda_aggregates WHERE aggregate = 'Seen' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, body)| (id, serde_json::from_str(&body).unwrap()))
        .collect()
}

/// How many steps of `keys` an in-memory database has committed.
fn handled(db: &InMemoryDatabase, keys: &[String]) -> usize {
    keys.iter()
        .filter_map(|k| db.get::<Seen>(k.as_str()))
        .map(|s| s.seqs.len())
        .sum()
}

const CHILD: &str = "EDA_ORDER_CHILD";

/// Not a test on its own: the first instance of the main test below, in a
/// process of its own (started with `EDA_ORDER_CHILD` =
/// `<postgres url> <schema> <amqp url> <queue> <exchange>`). Consumes
/// until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_instance_in_a_process_of_its_own() {
    let Ok(config) = std::env::var(CHILD) else {
        return;
    };
    let [url, schema, amqp, queue, exchange]: [&str; 5] = config
        .split(' ')
        .collect::<Vec<_>>()
        .try_into()
        .expect("five settings");
    let db = PostgresDatabase::connect_with(url, PostgresOptions::default().schema(schema))
        .await
        .unwrap();
    let bus = bus(db, Failing::default());
    let rabbitmq = RabbitMq::connect(
        RabbitMqOptions::new(amqp, queue)
            .exchange(exchange)
            .ordered_partitions(8),
    )
    .await
    .unwrap();
    let running = consume(&rabbitmq, &bus).await;
    println!("CONSUMING");
    let _ = running.task.await;
}

/// Two instances of one service (the first in a process of its own, so
/// that it is active on every partition: a partition has one active
/// consumer), 10,000 steps over 50 keys, published interleaved; the first
/// instance SIGKILLed once it handled about a third: the second takes the
/// partitions over, and every key's committed calls are 1, 2, …, 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_messages_are_handled_in_order_across_instances_and_a_sigkill() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    const KEYS: u32 = 50;
    const STEPS: u32 = 200;
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    let Some(rmq) = TestRabbitMq::start_with(|o| o.ordered_partitions(8)).await else {
        return;
    };
    let o = rmq.options().clone();
    let second = bus(pg.db.clone(), Failing::default());
    rmq.rabbitmq.declare_topology(&second).await.unwrap();

    let config = [
        pg.url.as_str(),
        &pg.schema,
        &amqp_url(),
        o.consumer().queue_name(),
        o.consumer().exchange_name(),
    ]
    .join(" ");
    let mut first = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ordered_instance_in_a_process_of_its_own",
            "--nocapture",
        ])
        .env(CHILD, config)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("the first instance consumes in time")
            .unwrap()
            .expect("the first instance says when it consumes");
        if line.contains("CONSUMING") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let second_running = consume(&rmq.rabbitmq, &second).await;

    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let slots: std::collections::BTreeSet<u32> = keys.iter().map(|k| ordering_slot(k)).collect();
    assert!(slots.len() > 8, "the keys spread over the slots: {slots:?}");
    assert!(slots.iter().all(|slot| *slot < ORDERING_SLOTS));
    let messages = steps((1..=STEPS).flat_map(|seq| keys.iter().map(move |k| (k.clone(), seq))));
    let started = Instant::now();
    let publishing = {
        let rabbitmq = rmq.rabbitmq.clone();
        tokio::spawn(async move { publish(&rabbitmq, &messages).await })
    };

    let total = |seen: &BTreeMap<String, Seen>| seen.values().map(|s| s.seqs.len()).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let handled = total(&committed(pg.pool()).await);
        if handled >= (KEYS * STEPS / 3) as usize {
            break handled;
        }
        assert!(Instant::now() < deadline, "only {handled} handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let killed_after = started.elapsed();
    publishing.await.unwrap();

    let seen = loop {
        let seen = committed(pg.pool()).await;
        if total(&seen) >= (KEYS * STEPS) as usize {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} handled",
            total(&seen),
            KEYS * STEPS
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    let expected: Vec<u32> = (1..=STEPS).collect();
    assert_eq!(seen.len(), KEYS as usize);
    for (key, s) in &seen {
        assert_eq!(s.seqs, expected, "{key}: every step once, in order");
        assert_eq!(s.swapped, 0, "{key}");
    }
    let by_second = second_running.metrics.handled();
    assert!(
        by_second > 0 && (by_second as usize) < (KEYS * STEPS) as usize - at_kill + 64,
        "the second instance took over what was left: {by_second}"
    );
    println!(
        "FIGURES {}",
        serde_json::json!({
            "scenario": "order_per_key",
            "messages": KEYS * STEPS,
            "keys": KEYS,
            "partitions": 8,
            "killed_after_committed": at_kill,
            "killed_after_ms": killed_after.as_millis(),
            "handled_by_second": by_second,
            "all_in_order_ms": elapsed.as_millis(),
            "dead_lettered": second_running.metrics.dead_lettered(),
        })
    );
    second_running.stop().await;
    rmq.cleanup().await;
    pg.drop_schema().await;
}

/// The same across a graceful stop (a deploy): the first instance stops
/// mid-stream, what it had taken and not handled returns to its place, and
/// the second instance goes on from there (both in this process, on one
/// database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_messages_stay_in_order_when_an_instance_stops() {
    const KEYS: u32 = 30;
    const STEPS: u32 = 100;
    let Some(rmq) = TestRabbitMq::start_with(|o| o.ordered_partitions(4)).await else {
        return;
    };
    let db = InMemoryDatabase::new();
    // Slow enough that the first instance holds taken, unhandled messages
    // when it stops.
    let pace = Duration::from_millis(2);
    let first = paced(db.clone(), Failing::default(), pace);
    let second = paced(db.clone(), Failing::default(), pace);
    let first_running = consume(&rmq.rabbitmq, &first).await;
    let other = RabbitMq::connect(rmq.options().clone()).await.unwrap();
    let second_running = consume(&other, &second).await;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let messages = steps((1..=STEPS).flat_map(|seq| keys.iter().map(move |k| (k.clone(), seq))));
    let publishing = {
        let rabbitmq = rmq.rabbitmq.clone();
        tokio::spawn(async move { publish(&rabbitmq, &messages).await })
    };
    let total = || handled(&db, &keys);
    let deadline = Instant::now() + Duration::from_secs(60);
    while total() < (KEYS * STEPS / 3) as usize {
        assert!(Instant::now() < deadline, "only {} handled", total());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first_running.stop().await;
    publishing.await.unwrap();
    while total() < (KEYS * STEPS) as usize {
        assert!(Instant::now() < deadline, "only {} handled", total());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: Vec<u32> = (1..=STEPS).collect();
    for key in &keys {
        let seen = db.get::<Seen>(key.as_str()).unwrap();
        assert_eq!(seen.seqs, expected, "{key}: every step once, in order");
    }
    assert!(second_running.metrics.handled() > 0);
    second_running.stop().await;
    rmq.cleanup().await;
}

/// A failing step is retried in place: the steps of its key behind it wait
/// (the others go on), and follow it once it succeeds; one that fails
/// every attempt is dead-lettered, and the next step of its key follows
/// (a gap, never a swap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_holds_its_key_until_it_succeeds_or_is_dead_lettered() {
    let Some(rmq) = TestRabbitMq::start_with(|o| {
        o.ordered_partitions(4)
            .retry_delays([Duration::from_millis(100)])
            .max_attempts(3)
    })
    .await
    else {
        return;
    };
    let db = InMemoryDatabase::new();
    let failing = Failing::default();
    failing.0.lock().unwrap().extend([
        (("twice".to_owned(), 3), 2),
        (("always".to_owned(), 3), u32::MAX),
    ]);
    let bus = bus(db.clone(), failing);
    let running = consume(&rmq.rabbitmq, &bus).await;
    publish(
        &rmq.rabbitmq,
        &steps((1..=6).flat_map(|seq| ["twice", "always", "fine"].map(|k| (k.to_owned(), seq)))),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.metrics.handled() + running.metrics.dead_lettered() < 18 {
        assert!(Instant::now() < deadline, "not all settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seqs = |key: &str| db.get::<Seen>(key).unwrap().seqs;
    assert_eq!(seqs("twice"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs("fine"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs("always"), [1, 2, 4, 5, 6], "a gap, not a swap");
    assert_eq!(db.get::<Seen>("twice").unwrap().swapped, 0);
    assert_eq!(running.metrics.dead_lettered(), 1);
    assert_eq!(running.metrics.retried(), 2 + 2);
    running.stop().await;

    // The dead-lettered step is in the dead-letter queue, with its key.
    let channel = rmq.rabbitmq.channel().await.unwrap();
    let dead = channel
        .basic_get(
            rmq.options().consumer().dead_letter_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("dead-lettered");
    assert_eq!(
        header_string(&dead.delivery.properties, KEY_HEADER).as_deref(),
        Some("always")
    );
    // Nothing was sent to a retry queue: retried in place.
    for queue in rmq.options().retry_queues() {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(declared.message_count(), 0, "{queue}");
    }
    rmq.cleanup().await;
}

/// The same on the in-process broker, which routes and consumes ordered
/// messages as RabbitMQ does (slots, partitions, one active consumer per
/// partition, failures retried in place): two instances, the first stopped
/// mid-stream; a step that fails twice, one that always fails.
mod in_process {
    use super::*;
    use eda_core::adapters::in_process::InProcessBroker;
    use eda_core::entrypoints::ConsumerOptions;

    struct Consuming {
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), Error>>,
        metrics: std::sync::Arc<eda_core::entrypoints::ConsumerMetrics>,
    }

    async fn consume(
        service: &eda_core::adapters::in_process::InProcessService,
        bus: &MessageBus,
    ) -> Consuming {
        let consumer = service.consumer(bus.clone());
        let metrics = consumer.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run(async {
            let _ = stopped.await;
        }));
        while !metrics.consuming() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Consuming {
            stop,
            task,
            metrics,
        }
    }

    impl Consuming {
        async fn stop(self) {
            let _ = self.stop.send(());
            self.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keys_messages_are_handled_in_order_across_a_stop_and_failures() {
        // Few keys: a partition's next message is often the same key's
        // next step, which a second consumer of the partition would take
        // at the same time.
        const KEYS: u32 = 6;
        const STEPS: u32 = 200;
        let broker = InProcessBroker::new();
        let options = ConsumerOptions::new("order_test")
            .ordered_partitions(4)
            .retry_delays([Duration::from_millis(20)])
            .max_attempts(3);
        let service = broker.service(options.clone());
        let db = InMemoryDatabase::new();
        let failing = || {
            let failing = Failing::default();
            failing.0.lock().unwrap().extend([
                (("key-0".to_owned(), 50), 2),
                (("key-1".to_owned(), 50), u32::MAX),
            ]);
            failing
        };
        let pace = Duration::from_micros(200);
        let first = paced(db.clone(), failing(), pace);
        let second = paced(db.clone(), failing(), pace);
        let first_running = consume(&service, &first).await;
        let second_running = consume(&service, &second).await;

        let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
        let messages =
            steps((1..=STEPS).flat_map(|seq| keys.iter().map(move |k| (k.clone(), seq))));
        let (deliveries, error) = service.publisher().publish(&messages).await;
        assert!(error.is_none());
        assert!(
            deliveries
                .iter()
                .all(|d| matches!(d, eda_core::backend::Delivery::Confirmed))
        );
        assert!(
            broker.is_empty("order_test"),
            "keyed steps go to the partitions, not the service queue"
        );

        let total = || handled(&db, &keys);
        let deadline = Instant::now() + Duration::from_secs(60);
        while total() < (KEYS * STEPS / 3) as usize {
            assert!(Instant::now() < deadline, "only {} handled", total());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        first_running.stop().await;
        while total() < (KEYS * STEPS) as usize - 1 {
            assert!(Instant::now() < deadline, "only {} handled", total());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for key in &keys {
            let seen = db.get::<Seen>(key.as_str()).unwrap();
            let expected: Vec<u32> = (1..=STEPS).filter(|s| key != "key-1" || *s != 50).collect();
            assert_eq!(
                seen.seqs, expected,
                "{key}: in order (key-1's 50th dead-lettered)"
            );
            assert_eq!(seen.swapped, u32::from(key == "key-1"), "{key}");
        }
        assert_eq!(broker.len(&options.dead_letter_queue()), 1);
        assert!(second_running.metrics.handled() > 0);
        second_running.stop().await;
    }
}
