//! The RabbitMQ adapter against the real broker (127.0.0.1:5672 or
//! `AMQP_URL`), each test with its own exchange and queues: rules 2, 4, 7 and
//! 8 of DESIGN.md. The relay reads the in-memory database's outbox here
//! (the Postgres outbox store is tested in `postgres.rs`).
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eda_core::adapters::rabbitmq::{ATTEMPTS_HEADER, ERROR_HEADER, header_string};
use eda_core::prelude::*;
use eda_core::testing::TestRabbitMq;
use eda_core::{Envelope, OutboxRelay, RelayOptions};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, Aggregate)]
pub struct Account {
    #[aggregate(id)]
    pub id: String,
    pub balance: i64,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct Bank {
    tx: UowTransaction,
    accounts: IdentityMap<Account>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "rmq.deposit")]
pub struct Deposit {
    pub account: String,
    pub amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "rmq.always_fail")]
pub struct AlwaysFail {}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "rmq.fail_twice")]
pub struct FailTwice {
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "rmq.explode")]
pub struct Explode {}

/// Handled slowly, noting which consumer handled it.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "rmq.work")]
pub struct Work {
    pub n: u32,
    pub millis: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "rmq.deposited", external)]
pub struct Deposited {
    pub account: String,
    pub amount: i64,
}

/// Published by nobody's binding: unroutable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "rmq.shouted_into_the_void", external)]
pub struct Shouted {}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "rmq.shout")]
pub struct Shout {}

/// What the handlers saw.
#[derive(Default)]
pub struct Seen {
    runs: Mutex<HashMap<String, usize>>,
    who: Mutex<Vec<(u32, &'static str)>>,
    started: tokio::sync::Notify,
}
impl Adapter for Seen {}
impl Seen {
    fn run(&self, key: &str) -> usize {
        let mut runs = self.runs.lock().unwrap();
        let n = runs.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
    fn runs(&self, key: &str) -> usize {
        self.runs.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// The name of the consumer a bus belongs to.
pub struct Me(&'static str);
impl Adapter for Me {}

type Handled = Result<(), CommandError<BoxError>>;

#[command_handler]
async fn deposit(cmd: Deposit, uow: &mut Bank) -> Handled {
    let account = match uow.accounts().get(&cmd.account).await? {
        Some(a) => a,
        None => uow.accounts().add(Account {
            id: cmd.account.clone(),
            balance: 0,
            version: 0,
            events: Events::new(),
        })?,
    };
    account.balance += cmd.amount;
    account.events.raise(Deposited {
        account: cmd.account,
        amount: cmd.amount,
    });
    Ok(uow.commit().await?)
}

#[command_handler]
async fn always_fail(_: AlwaysFail, seen: &Seen) -> Handled {
    seen.run("always_fail");
    Err("it always fails".into())
}

#[command_handler]
async fn fail_twice(cmd: FailTwice, seen: &Seen) -> Handled {
    if seen.run(&cmd.key) <= 2 {
        return Err("not yet".into());
    }
    Ok(())
}

#[command_handler]
async fn explode(_: Explode, seen: &Seen) -> Handled {
    seen.run("explode");
    panic!("boom");
}

#[command_handler]
async fn work(cmd: Work, seen: &Seen, me: &Me) -> Handled {
    seen.started.notify_one();
    tokio::time::sleep(Duration::from_millis(cmd.millis)).await;
    seen.who.lock().unwrap().push((cmd.n, me.0));
    Ok(())
}

#[command_handler]
async fn shout(_: Shout, uow: &mut Bank) -> Handled {
    let mut account = Account {
        id: "void".into(),
        balance: 0,
        version: 0,
        events: Events::new(),
    };
    account.events.raise(Shouted {});
    uow.accounts().add(account)?;
    Ok(uow.commit().await?)
}

fn bus(db: &InMemoryDatabase, me: &'static str) -> MessageBus {
    // Other services send these over the broker.
    MessageBus::builder()
        .scope(module_path!())
        .accept::<Deposit>()
        .accept::<AlwaysFail>()
        .accept::<FailTwice>()
        .accept::<Explode>()
        .accept::<Work>()
        .adapter(db.clone())
        .adapter(Seen::default())
        .adapter(Me(me))
        .build()
        .expect("wiring")
}

fn seen(bus: &MessageBus) -> &Seen {
    bus.adapter::<Seen>().unwrap()
}

/// A running consumer, stopped by `stop`.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), eda_core::Error>>,
    metrics: std::sync::Arc<eda_core::entrypoints::ConsumerMetrics>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn consume(rmq: &TestRabbitMq, bus: &MessageBus) -> Running {
    let consumer = rmq.rabbitmq.consumer(bus.clone());
    let metrics = consumer.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    wait_until("the consumer is consuming", || async {
        metrics.consuming()
    })
    .await;
    Running {
        stop,
        task,
        metrics,
    }
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain lapin client, as another service would publish.
async fn client(rmq: &TestRabbitMq) -> Channel {
    let channel = rmq.rabbitmq.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

async fn publish_raw(
    channel: &Channel,
    rmq: &TestRabbitMq,
    name: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            rmq.options().consumer().exchange_name().into(),
            name.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn props(name: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(eda_core::MessageId::new().to_string().into())
        .with_type(name.into())
        .with_content_type("application/json".into())
}

async fn queue_len(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

async fn get(channel: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

fn balance(db: &InMemoryDatabase, account: &str) -> i64 {
    db.get::<Account>(account).map_or(0, |a| a.balance)
}

#[tokio::test]
async fn a_message_is_consumed_handled_and_acknowledged() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    for _ in 0..3 {
        publish_raw(
            &channel,
            &rmq,
            "rmq.deposit",
            br#"{"account":"a","amount":5}"#,
            props("rmq.deposit"),
        )
        .await;
    }
    wait_until("the deposits are handled", || async {
        balance(&db, "a") == 15
    })
    .await;
    wait_until("all are acknowledged", || async {
        running.metrics.handled() == 3
    })
    .await;
    running.stop().await;
    assert_eq!(
        queue_len(&channel, rmq.options().consumer().queue_name()).await,
        0,
        "nothing left unacknowledged"
    );
    rmq.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_delivery_is_handled_once() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    let properties = props("rmq.deposit");
    for _ in 0..2 {
        publish_raw(
            &channel,
            &rmq,
            "rmq.deposit",
            br#"{"account":"a","amount":5}"#,
            properties.clone(),
        )
        .await;
    }
    wait_until("both copies are acknowledged", || async {
        running.metrics.handled() == 2
    })
    .await;
    assert_eq!(balance(&db, "a"), 5, "the second copy changed nothing");
    running.stop().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered_with_the_reason() {
    let Some(rmq) = TestRabbitMq::start_with(|o| {
        o.retry_delays([Duration::from_millis(50), Duration::from_millis(100)])
            .max_attempts(3)
    })
    .await
    else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    // With the trace it continues: kept through the retries.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let properties = props("rmq.always_fail");
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(traceparent.into()),
    );
    publish_raw(
        &channel,
        &rmq,
        "rmq.always_fail",
        b"{}",
        properties.with_headers(headers),
    )
    .await;
    let dlq = rmq.options().consumer().dead_letter_queue();
    wait_until("the message is dead-lettered", || async {
        queue_len(&channel, &dlq).await == 1
    })
    .await;
    let dead = get(&channel, &dlq).await.expect("in the dead-letter queue");
    assert_eq!(
        header_string(&dead.delivery.properties, "traceparent").as_deref(),
        Some(traceparent),
        "the dead letter keeps its trace"
    );
    assert_eq!(
        header_string(&dead.delivery.properties, ATTEMPTS_HEADER).as_deref(),
        Some("3")
    );
    let reason = header_string(&dead.delivery.properties, ERROR_HEADER).unwrap();
    assert!(reason.contains("it always fails"), "{reason}");
    assert_eq!(dead.delivery.data, b"{}");
    assert_eq!(seen(&bus).runs("always_fail"), 3);
    assert_eq!(running.metrics.retried(), 2);
    // Counted once the broker confirmed the copy, a moment after it is
    // in the queue.
    wait_until("the dead letter is counted", || async {
        running.metrics.dead_lettered() == 1
    })
    .await;
    running.stop().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn a_handler_that_recovers_is_not_dead_lettered() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.retry_delays([Duration::from_millis(50)])).await
    else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    publish_raw(
        &channel,
        &rmq,
        "rmq.fail_twice",
        br#"{"key":"k"}"#,
        props("rmq.fail_twice"),
    )
    .await;
    wait_until("it succeeds on the third attempt", || async {
        running.metrics.handled() == 1
    })
    .await;
    assert_eq!(seen(&bus).runs("k"), 3);
    assert_eq!(running.metrics.retried(), 2);
    assert_eq!(
        queue_len(&channel, &rmq.options().consumer().dead_letter_queue()).await,
        0
    );
    running.stop().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_dead_lettered_at_once_and_the_next_good_message_is_handled() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.max_message_bytes(1024)).await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    // The queue binds the names the bus consumes; these go straight to it
    // (through the default exchange), as a misbehaving producer could.
    let queue = rmq.options().consumer().queue_name().to_owned();
    let poison: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        (
            "malformed JSON",
            b"{not json".to_vec(),
            props("rmq.deposit"),
        ),
        (
            "wrong types",
            br#"{"account":1,"amount":"x"}"#.to_vec(),
            props("rmq.deposit"),
        ),
        (
            "unknown message",
            b"{}".to_vec(),
            props("rmq.no_such_message"),
        ),
        (
            "no message id",
            br#"{"account":"a","amount":1}"#.to_vec(),
            BasicProperties::default().with_type("rmq.deposit".into()),
        ),
        ("too large", vec![b' '; 2000], props("rmq.deposit")),
    ];
    for (_, body, properties) in &poison {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publish_raw(
        &channel,
        &rmq,
        "rmq.deposit",
        br#"{"account":"a","amount":7}"#,
        props("rmq.deposit"),
    )
    .await;
    wait_until("the good message is handled", || async {
        balance(&db, "a") == 7
    })
    .await;
    let dlq = rmq.options().consumer().dead_letter_queue();
    wait_until("all the poison is dead-lettered", || async {
        queue_len(&channel, &dlq).await == 5
    })
    .await;
    let mut reasons = Vec::new();
    while let Some(dead) = get(&channel, &dlq).await {
        assert_eq!(
            header_string(&dead.delivery.properties, ATTEMPTS_HEADER).as_deref(),
            Some("0"),
            "not retried"
        );
        reasons.push(header_string(&dead.delivery.properties, ERROR_HEADER).unwrap());
    }
    let expected = [
        "malformed `rmq.deposit`",
        "invalid type",
        "unknown message `rmq.no_such_message`",
        "no message_id",
        "message too large",
    ];
    for needle in expected {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no reason with {needle:?} in {reasons:?}"
        );
    }
    assert_eq!(running.metrics.retried(), 0);
    running.stop().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn a_handler_panic_is_a_failure_and_the_consumer_carries_on() {
    let Some(rmq) =
        TestRabbitMq::start_with(|o| o.retry_delays([Duration::from_millis(20)]).max_attempts(2))
            .await
    else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    publish_raw(&channel, &rmq, "rmq.explode", b"{}", props("rmq.explode")).await;
    let dlq = rmq.options().consumer().dead_letter_queue();
    wait_until("the panicking message is dead-lettered", || async {
        queue_len(&channel, &dlq).await == 1
    })
    .await;
    let dead = get(&channel, &dlq).await.unwrap();
    let reason = header_string(&dead.delivery.properties, ERROR_HEADER).unwrap();
    assert!(reason.contains("panicked: boom"), "{reason}");
    assert_eq!(seen(&bus).runs("explode"), 2);
    publish_raw(
        &channel,
        &rmq,
        "rmq.deposit",
        br#"{"account":"a","amount":1}"#,
        props("rmq.deposit"),
    )
    .await;
    wait_until("the next message is handled", || async {
        balance(&db, "a") == 1
    })
    .await;
    running.stop().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn two_consumers_on_one_queue_share_the_work() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.prefetch(2).concurrency(2)).await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let (first, second) = (bus(&db, "first"), bus(&db, "second"));
    let one = consume(&rmq, &first).await;
    let two = consume(&rmq, &second).await;
    let channel = client(&rmq).await;
    for n in 0..40u32 {
        let body = serde_json::to_vec(&Work { n, millis: 20 }).unwrap();
        publish_raw(&channel, &rmq, "rmq.work", &body, props("rmq.work")).await;
    }
    wait_until("all the work is done", || async {
        one.metrics.handled() + two.metrics.handled() == 40
    })
    .await;
    let (a, b) = (
        seen(&first).who.lock().unwrap().len(),
        seen(&second).who.lock().unwrap().len(),
    );
    assert_eq!(a + b, 40);
    assert!(a >= 4 && b >= 4, "the work was shared: {a} and {b}");
    one.stop().await;
    two.stop().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_messages_finish_and_returns_the_rest() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.prefetch(5).concurrency(1)).await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let running = consume(&rmq, &bus).await;
    let channel = client(&rmq).await;
    for n in 0..3u32 {
        let body = serde_json::to_vec(&Work { n, millis: 300 }).unwrap();
        publish_raw(&channel, &rmq, "rmq.work", &body, props("rmq.work")).await;
    }
    tokio::time::timeout(Duration::from_secs(30), seen(&bus).started.notified())
        .await
        .expect("a message started");
    running.stop().await;
    assert_eq!(
        seen(&bus).who.lock().unwrap().as_slice(),
        &[(0, "one")],
        "the message in flight finished"
    );
    // A quorum queue takes returned messages back asynchronously, once it
    // learns that their channel closed: waited for, then counted.
    let queue = rmq.options().consumer().queue_name().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue_len(&channel, &queue).await < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        queue_len(&channel, &queue).await,
        2,
        "the others went back to the queue"
    );
    rmq.cleanup().await;
}

async fn bound_test_queue(rmq: &TestRabbitMq, channel: &Channel, names: &[&str]) -> String {
    let queue = format!("{}.observer", rmq.options().consumer().queue_name());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for name in names {
        channel
            .queue_bind(
                queue.as_str().into(),
                rmq.options().consumer().exchange_name().into(),
                (*name).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    queue
}

fn fast_relay() -> RelayOptions {
    RelayOptions {
        batch: 64,
        poll: Duration::from_millis(50),
        ..RelayOptions::default()
    }
}

#[tokio::test]
async fn an_event_committed_through_the_outbox_arrives_with_its_properties() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let channel = client(&rmq).await;
    let observer = bound_test_queue(&rmq, &channel, &["rmq.deposited"]).await;
    let relay = OutboxRelay::spawn(
        std::sync::Arc::new(db.clone()),
        rmq.rabbitmq.publisher(),
        fast_relay(),
    );
    let command = Envelope::new(Deposit {
        account: "a".into(),
        amount: 5,
    });
    let command_id = command.metadata.message_id;
    bus.handle_envelope(command).await.unwrap();
    wait_until("the event arrives", || async {
        queue_len(&channel, &observer).await == 1
    })
    .await;
    let message = get(&channel, &observer).await.unwrap().delivery;
    let outbox = &db.outbox()[0];
    let p = &message.properties;
    assert_eq!(message.routing_key.as_str(), "rmq.deposited");
    assert_eq!(message.data, br#"{"account":"a","amount":5}"#);
    assert_eq!(
        p.message_id().as_ref().unwrap().as_str(),
        outbox.metadata.message_id.to_string()
    );
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "rmq.deposited");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(
        p.correlation_id().as_ref().unwrap().as_str(),
        command_id.to_string()
    );
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        *p.timestamp(),
        Some(outbox.metadata.timestamp.as_millis() / 1000)
    );
    assert_eq!(
        header_string(p, "x-causation-id"),
        Some(command_id.to_string())
    );
    let metadata = eda_core::adapters::rabbitmq::metadata(p).unwrap();
    assert_eq!(metadata, outbox.metadata, "the metadata survives the trip");
    relay.shutdown().await;
    rmq.cleanup().await;
}

#[tokio::test]
async fn the_relay_publishes_batches_in_outbox_order_and_flushes_on_shutdown() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let channel = client(&rmq).await;
    let observer = bound_test_queue(&rmq, &channel, &["rmq.deposited"]).await;
    for i in 0..300 {
        bus.handle(Deposit {
            account: format!("a{}", i % 7),
            amount: i,
        })
        .await
        .unwrap();
    }
    let relay = OutboxRelay::spawn(
        std::sync::Arc::new(db.clone()),
        rmq.rabbitmq.publisher(),
        fast_relay(),
    );
    relay.shutdown().await;
    assert_eq!(
        queue_len(&channel, &observer).await,
        300,
        "shutdown flushed the outbox"
    );
    let expected: Vec<String> = db
        .outbox()
        .iter()
        .map(|m| m.metadata.message_id.to_string())
        .collect();
    let mut received = Vec::new();
    while let Some(m) = get(&channel, &observer).await {
        received.push(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(received, expected, "in outbox order");
    rmq.cleanup().await;
}

#[tokio::test]
async fn the_relay_wakes_on_commit_without_waiting_for_its_poll() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db, "one");
    let channel = client(&rmq).await;
    let observer = bound_test_queue(&rmq, &channel, &["rmq.deposited"]).await;
    let slow_poll = RelayOptions {
        poll: Duration::from_secs(60),
        ..RelayOptions::default()
    };
    let relay = OutboxRelay::spawn(
        std::sync::Arc::new(db.clone()),
        rmq.rabbitmq.publisher(),
        slow_poll,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = std::time::Instant::now();
    bus.handle(Deposit {
        account: "a".into(),
        amount: 1,
    })
    .await
    .unwrap();
    wait_until("the event arrives", || async {
        queue_len(&channel, &observer).await == 1
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken by the commit: {:?}",
        start.elapsed()
    );
    relay.shutdown().await;
    rmq.cleanup().await;
}

/// A service that commits one event nobody is bound to, and its relay with
/// `options` (unroutable events published again 50 ms after the first try).
async fn shouting_into_the_void(
    rmq: &TestRabbitMq,
    options: RelayOptions,
) -> (InMemoryDatabase, OutboxRelay) {
    let db = InMemoryDatabase::new();
    bus(&db, "one").handle(Shout {}).await.unwrap();
    let relay = OutboxRelay::spawn(
        std::sync::Arc::new(db.clone()),
        rmq.rabbitmq.publisher(),
        RelayOptions {
            unroutable_backoff: Duration::from_millis(50),
            ..options
        },
    );
    (db, relay)
}

/// An event no queue is bound to yet (its consumer is not deployed): it was
/// marked sent and dropped. Now it stays in the outbox, counted, and is
/// published again until a queue takes it.
#[tokio::test]
async fn an_unroutable_event_is_kept_and_delivered_once_a_queue_is_bound() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let (db, relay) = shouting_into_the_void(
        &rmq,
        RelayOptions {
            unroutable_max_backoff: Duration::from_millis(200),
            ..fast_relay()
        },
    )
    .await;
    wait_until("it was found unroutable, twice", || async {
        relay.metrics().unroutable() >= 2
    })
    .await;
    assert_eq!(relay.metrics().published(), 0);
    assert_eq!(relay.metrics().parked(), 0);

    // Its consumer arrives.
    let channel = client(&rmq).await;
    let queue = format!("{}.late", rmq.options().consumer().queue_name());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            rmq.options().consumer().exchange_name().into(),
            "rmq.shouted_into_the_void".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    wait_until("it is published once the queue is bound", || async {
        relay.metrics().published() == 1
    })
    .await;
    let delivered = get(&channel, &queue).await.expect("delivered");
    assert_eq!(
        delivered
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(db.outbox()[0].metadata.message_id.to_string())
    );
    relay.shutdown().await;
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    rmq.cleanup().await;
}

/// One that no queue takes for as long as the relay tries is parked in
/// `<exchange>.unrouted`, with the reason, rather than kept in the outbox
/// forever.
#[tokio::test]
async fn an_event_no_queue_takes_in_time_is_parked_with_the_reason() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let (db, relay) = shouting_into_the_void(
        &rmq,
        RelayOptions {
            unroutable_max_backoff: Duration::from_millis(100),
            unroutable_retry_for: Duration::from_millis(400),
            ..fast_relay()
        },
    )
    .await;
    wait_until("it is parked", || async { relay.metrics().parked() == 1 }).await;
    let channel = client(&rmq).await;
    let parked = get(&channel, &rmq.options().consumer().unrouted_queue())
        .await
        .expect("in the parking queue");
    let properties = &parked.delivery.properties;
    assert_eq!(
        properties.kind().as_ref().map(|k| k.to_string()).as_deref(),
        Some("rmq.shouted_into_the_void")
    );
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.to_string()),
        Some(db.outbox()[0].metadata.message_id.to_string())
    );
    let reason = header_string(properties, ERROR_HEADER).unwrap();
    assert!(reason.contains("no queue took it"), "{reason}");
    assert!(relay.metrics().unroutable() >= 2);
    assert_eq!(relay.metrics().published(), 0);
    relay.shutdown().await;
    rmq.cleanup().await;
}

#[test]
fn connecting_is_send_so_it_can_be_spawned() {
    fn assert_send<T: Send>(_: T) {}
    assert_send(eda_core::adapters::rabbitmq::RabbitMq::connect(
        eda_core::adapters::rabbitmq::RabbitMqOptions::new("amqp://localhost", "q"),
    ));
    let _ = AtomicUsize::new(0).load(Ordering::Relaxed);
}
