//! The queues eda declares on the real RabbitMQ (127.0.0.1:5672 or
//! `AMQP_URL`): quorum by default, classic on request, an existing queue of
//! the other type used as it is, a delivery limit that cannot drop a
//! message behind the consumer's back (refused when declared too low,
//! refused when an existing queue has another), deliveries never settled
//! counted as attempts, and a list of nodes of which the first is down.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eda_core::adapters::rabbitmq::{
    ERROR_HEADER, QueueType, RabbitMq, RabbitMqOptions, header_string,
};
use eda_core::prelude::*;
use eda_core::testing::{TestRabbitMq, amqp_url, unique_name};
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "queues.touch")]
pub struct Touch {}

/// How many times the handler ran.
#[derive(Default)]
pub struct Calls(AtomicUsize);
impl Adapter for Calls {}

#[command_handler]
async fn touch(_: Touch, calls: &Calls) -> Result<(), CommandError<BoxError>> {
    calls.0.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn bus() -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .accept::<Touch>()
        .adapter(Calls::default())
        .build()
        .expect("wiring")
}

fn calls(bus: &MessageBus) -> usize {
    bus.adapter::<Calls>().unwrap().0.load(Ordering::SeqCst)
}

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

fn spawn_consumer(rabbitmq: &RabbitMq, bus: &MessageBus) -> Running {
    let consumer = rabbitmq.consumer(bus.clone());
    let metrics = consumer.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    Running {
        stop,
        task,
        metrics,
    }
}

async fn consume(rabbitmq: &RabbitMq, bus: &MessageBus) -> Running {
    let running = spawn_consumer(rabbitmq, bus);
    let metrics = running.metrics.clone();
    wait_until("the consumer is consuming", || metrics.consuming()).await;
    running
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(rabbitmq: &RabbitMq) -> Channel {
    let channel = rabbitmq.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

/// A `queues.touch` straight into `queue`, confirmed.
async fn send_touch(channel: &Channel, queue: &str) {
    let properties = BasicProperties::default()
        .with_message_id(eda_core::MessageId::new().to_string().into())
        .with_type("queues.touch".into())
        .with_delivery_mode(2);
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Declares `queue` durable with `args` on a channel of its own: the
/// broker's refusal (406 closes the channel), if it refused.
async fn declare(rabbitmq: &RabbitMq, queue: &str, args: FieldTable) -> Result<(), String> {
    let channel = rabbitmq.channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "bye".into()).await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn quorum(more: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in more {
        args.insert((*k).into(), v.clone());
    }
    args
}

/// The type of each queue whose name starts with `prefix`, as
/// `rabbitmqctl` lists them (AMQP cannot tell a queue's type).
fn queue_types(prefix: &str) -> std::collections::HashMap<String, QueueType> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "type"])
        .output()
        .expect("rabbitmqctl (installed with RabbitMQ) lists the queues' types");
    assert!(out.status.success(), "rabbitmqctl: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, kind) = line.split_once('\t')?;
            let name = name.trim();
            name.starts_with(prefix)
                .then(|| (name.to_owned(), kind.trim().parse().expect(kind)))
        })
        .collect()
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

/// Takes (and acknowledges) the head of `queue`, which must have one.
async fn take(channel: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("a message in {queue}"))
}

/// Takes the head of `queue` and returns it to the queue (as a consumer
/// that died would), `times` times: a quorum queue counts each.
async fn return_unsettled(channel: &Channel, queue: &str, times: usize) {
    for _ in 0..times {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message to take");
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// By default every queue of the service is a quorum queue, and a message
/// goes through it; asked for classic, they are classic.
#[tokio::test]
async fn the_service_queues_are_quorum_by_default_and_classic_on_request() {
    for wanted in [QueueType::Quorum, QueueType::Classic] {
        let Some(rmq) = TestRabbitMq::start_with(|o| match wanted {
            QueueType::Quorum => o,
            QueueType::Classic => o.queue_type(QueueType::Classic),
        })
        .await
        else {
            return;
        };
        let bus = bus();
        let running = consume(&rmq.rabbitmq, &bus).await;
        let o = rmq.options();
        let c = o.consumer();
        let mut queues = vec![
            c.queue_name().to_owned(),
            c.dead_letter_queue(),
            c.bindings_queue(),
        ];
        queues.extend(o.retry_queues());
        let types = queue_types(c.queue_name());
        for queue in &queues {
            assert_eq!(types.get(queue), Some(&wanted), "{queue}: {types:?}");
        }
        let channel = client(&rmq.rabbitmq).await;
        send_touch(&channel, c.queue_name()).await;
        wait_until("the message is handled", || running.metrics.handled() == 1).await;
        assert_eq!(calls(&bus), 1);
        running.stop().await;
        rmq.cleanup().await;
    }
}

/// A service queue that exists as classic (declared before quorum was the
/// default) is used as it is: the consumer starts, handles, and the queue
/// stays classic; its retry queues are new, and quorum.
#[tokio::test]
async fn an_existing_classic_queue_is_used_as_it_is() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let c = rmq.options().consumer().clone();
    declare(&rmq.rabbitmq, c.queue_name(), FieldTable::default())
        .await
        .unwrap();
    let bus = bus();
    let running = consume(&rmq.rabbitmq, &bus).await;
    let channel = client(&rmq.rabbitmq).await;
    send_touch(&channel, c.queue_name()).await;
    wait_until("the message is handled", || running.metrics.handled() == 1).await;
    let types = queue_types(c.queue_name());
    assert_eq!(types.get(c.queue_name()), Some(&QueueType::Classic));
    let retry = &rmq.options().retry_queues()[0];
    assert_eq!(types.get(retry), Some(&QueueType::Quorum), "{types:?}");
    running.stop().await;
    rmq.cleanup().await;
}

/// A delivery limit below the attempts would let the broker dead-letter a
/// message before the consumer spent them: refused before the broker is
/// asked, with what to do.
#[tokio::test]
async fn a_delivery_limit_below_the_attempts_is_refused_at_start() {
    let options = RabbitMqOptions::new(amqp_url(), unique_name("eda_limit"))
        .max_attempts(5)
        .delivery_limit(3);
    let err = RabbitMq::connect(options).await.unwrap_err();
    assert!(matches!(err, eda_core::Error::Topology { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("delivery limit (3)"), "{text}");
    assert!(text.contains("attempts (5)"), "{text}");
    assert!(text.contains("EDA_DELIVERY_LIMIT"), "{text}");
    // Classic queues have no delivery limit: nothing to refuse.
    let options = RabbitMqOptions::new(amqp_url(), unique_name("eda_limit"))
        .max_attempts(5)
        .delivery_limit(3)
        .queue_type(QueueType::Classic);
    if let Err(e) = RabbitMq::connect(options).await {
        assert!(!matches!(e, eda_core::Error::Topology { .. }), "{e}");
    }
}

/// A quorum queue that exists with a delivery limit of 2 (below the 5
/// attempts) is refused at start: the topology's declaration fails with
/// the broker's words and what to do, and the consumer returns that error
/// at once instead of reconnecting forever.
#[tokio::test]
async fn an_existing_queue_with_another_delivery_limit_is_refused() {
    let Some(rmq) = TestRabbitMq::start().await else {
        return;
    };
    let queue = rmq.options().consumer().queue_name().to_owned();
    declare(
        &rmq.rabbitmq,
        &queue,
        quorum(&[("x-delivery-limit", AMQPValue::LongLongInt(2))]),
    )
    .await
    .unwrap();
    let bus = bus();
    let err = rmq.rabbitmq.declare_topology(&bus).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, eda_core::Error::Topology { .. }), "{err:?}");
    assert!(text.contains(&format!("queue `{queue}`")), "{text}");
    assert!(text.contains("x-delivery-limit"), "{text}");
    assert!(text.contains("EDA_DELIVERY_LIMIT"), "{text}");

    let running = spawn_consumer(&rmq.rabbitmq, &bus);
    let outcome = tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("the consumer gives up at once")
        .unwrap();
    assert!(
        matches!(outcome, Err(eda_core::Error::Topology { .. })),
        "{outcome:?}"
    );
    assert_eq!(running.metrics.reconnects(), 0);
    rmq.cleanup().await;
}

/// A message delivered and never settled (its consumer died with it, each
/// time) counts those deliveries as failed attempts: with 3 attempts and 3
/// such deliveries before, it is dead-lettered with the reason, not handled
/// again; one with a single such delivery is handled.
#[tokio::test]
async fn deliveries_never_settled_spend_the_attempts() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.max_attempts(3).delivery_limit(5)).await else {
        return;
    };
    let c = rmq.options().consumer().clone();
    let bus = bus();
    rmq.rabbitmq.declare_topology(&bus).await.unwrap();
    let channel = client(&rmq.rabbitmq).await;

    send_touch(&channel, c.queue_name()).await;
    return_unsettled(&channel, c.queue_name(), 3).await;
    let running = consume(&rmq.rabbitmq, &bus).await;
    wait_until("it is dead-lettered", || {
        running.metrics.dead_lettered() == 1
    })
    .await;
    assert_eq!(calls(&bus), 0, "not handled again");
    let dead = take(&channel, &c.dead_letter_queue()).await;
    let reason = header_string(&dead.delivery.properties, ERROR_HEADER).unwrap();
    assert!(reason.contains("delivered 3 times"), "{reason}");
    assert!(reason.contains("never settled"), "{reason}");
    running.stop().await;

    send_touch(&channel, c.queue_name()).await;
    return_unsettled(&channel, c.queue_name(), 1).await;
    let running = consume(&rmq.rabbitmq, &bus).await;
    wait_until("it is handled", || running.metrics.handled() == 1).await;
    assert_eq!(calls(&bus), 1);
    running.stop().await;
    assert_eq!(queue_len(&channel, &c.dead_letter_queue()).await, 0);
    rmq.cleanup().await;
}

/// Past the delivery limit (no consumer of eda's to count: here, a client
/// that returns it 6 times with a limit of 5) the broker dead-letters the
/// message into the service's dead-letter queue: it is never dropped.
#[tokio::test]
async fn past_the_delivery_limit_the_broker_dead_letters_it() {
    let Some(rmq) = TestRabbitMq::start_with(|o| o.max_attempts(3).delivery_limit(5)).await else {
        return;
    };
    let c = rmq.options().consumer().clone();
    rmq.rabbitmq.declare_topology(&bus()).await.unwrap();
    let channel = client(&rmq.rabbitmq).await;
    send_touch(&channel, c.queue_name()).await;
    return_unsettled(&channel, c.queue_name(), 6).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue_len(&channel, &c.dead_letter_queue()).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue_len(&channel, c.queue_name()).await, 0);
    let dead = take(&channel, &c.dead_letter_queue()).await;
    let death = header_string(&dead.delivery.properties, "x-first-death-reason");
    assert_eq!(death.as_deref(), Some("delivery_limit"));
    rmq.cleanup().await;
}

/// Several nodes in the URL: the first does not answer (nothing listens on
/// its port), the connection goes to the next, and the service consumes.
#[tokio::test]
async fn a_node_that_does_not_answer_is_skipped() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nodes = format!("amqp://guest:guest@127.0.0.1:{port}/%2f,{}", amqp_url());
    let Some(rmq) = TestRabbitMq::start_with(|o| {
        RabbitMqOptions::from_consumer(nodes.clone(), o.consumer().clone())
    })
    .await
    else {
        return;
    };
    let bus = bus();
    let running = consume(&rmq.rabbitmq, &bus).await;
    let channel = client(&rmq.rabbitmq).await;
    send_touch(&channel, rmq.options().consumer().queue_name()).await;
    wait_until("the message is handled", || running.metrics.handled() == 1).await;
    running.stop().await;

    // None answers: the error names each, passwords hidden.
    let options = RabbitMqOptions::new(
        format!("amqp://guest:s3cr3t@127.0.0.1:{port}/%2f,amqp://guest:s3cr3t@127.0.0.1:{port}/x"),
        "nowhere",
    );
    let err = RabbitMq::connect(options).await.unwrap_err().to_string();
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(
        err.matches(&format!("127.0.0.1:{port}")).count() >= 2,
        "{err}"
    );
    rmq.cleanup().await;
}
