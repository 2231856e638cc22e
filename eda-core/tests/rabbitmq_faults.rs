//! Connection faults against the real broker: the service's connections
//! are closed by force (`rabbitmqctl close_connection`, only this test's:
//! they are named after its queue) in the middle of a stream of messages,
//! and nothing is lost, on the consuming side and on the publishing side.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use eda_core::prelude::*;
use eda_core::testing::TestRabbitMq;
use eda_core::{OutboxRelay, RelayOptions};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};

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
#[command(name = "faults.deposit")]
pub struct Deposit {
    pub account: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "faults.deposited", external)]
pub struct Deposited {
    pub account: String,
    pub amount: i64,
}

#[command_handler]
async fn deposit(cmd: Deposit, uow: &mut Bank) -> Result<(), CommandError<BoxError>> {
    // Slow enough that the fault lands in the middle of the stream.
    tokio::time::sleep(Duration::from_millis(2)).await;
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

fn bus(db: &InMemoryDatabase) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .accept::<Deposit>()
        .adapter(db.clone())
        .build()
        .expect("wiring")
}

/// One fault at a time (they act on the broker).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes the connections named `name` (the service's); returns how many.
/// (RabbitMQ 3.10 lists the name among the client properties:
/// `{"connection_name","<name>"}`.)
fn close_connections_named(name: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "--quiet",
        "--no-table-headers",
    ]);
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| line.split('\t').next())
        .map(str::trim)
        .collect();
    if pids.is_empty() {
        eprintln!("no connection named {name} in:\n{listing}");
    }
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "eda fault test"]);
    }
    pids.len()
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_reconnect(
    o: eda_core::adapters::rabbitmq::RabbitMqOptions,
) -> eda_core::adapters::rabbitmq::RabbitMqOptions {
    o.reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .prefetch(10)
        .concurrency(4)
}

/// A client of its own (another service's), not named like ours.
async fn other_client() -> Channel {
    let connection = lapin::Connection::connect(
        &eda_core::testing::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // The connection lives as long as the channel needs it.
    std::mem::forget(connection);
    channel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_survives_its_connection_closed_by_force_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(rmq) = TestRabbitMq::start_with(fast_reconnect).await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db);
    rmq.rabbitmq.declare_topology(&bus).await.unwrap();
    let client = other_client().await;
    let total = 400;
    for i in 0..total {
        let body = serde_json::to_vec(&Deposit {
            account: format!("a{}", i % 10),
            amount: 1,
        })
        .unwrap();
        let properties = BasicProperties::default()
            .with_message_id(eda_core::MessageId::new().to_string().into())
            .with_type("faults.deposit".into());
        client
            .basic_publish(
                rmq.options().consumer().exchange_name().into(),
                "faults.deposit".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = rmq.rabbitmq.consumer(bus.clone());
    let metrics = consumer.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    let sum = || {
        let db = db.clone();
        async move {
            (0..10)
                .map(|i| db.get::<Account>(format!("a{i}")).map_or(0, |a| a.balance))
                .sum::<i64>()
        }
    };
    wait_until("a part of the stream is handled", || async {
        sum().await >= 100
    })
    .await;
    let closed = close_connections_named(rmq.options().consumer().queue_name());
    assert!(closed >= 1, "the service's connection was found and closed");
    wait_until("the whole stream is handled", || async {
        sum().await == total
    })
    .await;
    assert!(metrics.reconnects() >= 1, "it reconnected");
    // Messages handled but not acknowledged before the fault came back:
    // the inbox made them harmless (the balances are exact).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sum().await, total, "no deposit applied twice");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let queue = client
        .queue_declare(
            rmq.options().consumer().queue_name().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0, "nothing left in the queue");
    rmq.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_survives_its_connection_closed_by_force_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(rmq) = TestRabbitMq::start_with(fast_reconnect).await else {
        return;
    };
    let db = InMemoryDatabase::new();
    let bus = bus(&db);
    let total = 3000;
    let client = other_client().await;
    let observer = format!("{}.observer", rmq.options().consumer().queue_name());
    client
        .queue_declare(
            observer.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    client
        .queue_bind(
            observer.as_str().into(),
            rmq.options().consumer().exchange_name().into(),
            "faults.deposited".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let options = RelayOptions {
        batch: 50,
        poll: Duration::from_millis(20),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..RelayOptions::default()
    };
    let relay = OutboxRelay::spawn(Arc::new(db.clone()), rmq.rabbitmq.publisher(), options);
    // A stream of commits while the relay publishes.
    let producer = tokio::spawn({
        let bus = bus.clone();
        async move {
            for i in 0..total {
                bus.handle(Deposit {
                    account: format!("a{}", i % 10),
                    amount: 1,
                })
                .await
                .unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
    wait_until("a part of the stream is published", || async {
        relay.metrics().published() >= 500
    })
    .await;
    let closed = close_connections_named(rmq.options().consumer().queue_name());
    assert!(closed >= 1, "the relay's connection was found and closed");
    let committed_at_fault = db.outbox().len();
    producer.await.unwrap();
    assert!(
        committed_at_fault < total as usize,
        "the fault landed mid-stream"
    );
    wait_until("the whole outbox is published", || async {
        relay.metrics().published() >= total as u64
    })
    .await;
    relay.shutdown().await;
    // Every event arrived; a published-but-unconfirmed one may have been
    // published again (a duplicate, by id), never lost.
    let mut ids = Vec::new();
    while let Some(m) = client
        .basic_get(observer.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        ids.push(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
    }
    let unique: HashSet<&String> = ids.iter().collect();
    let expected: HashSet<String> = db
        .outbox()
        .iter()
        .map(|m| m.metadata.message_id.to_string())
        .collect();
    assert_eq!(unique.len(), expected.len(), "every event arrived");
    assert!(unique.iter().all(|id| expected.contains(*id)));
    eprintln!(
        "relay fault: {} events, {} deliveries, {} duplicates",
        expected.len(),
        ids.len(),
        ids.len() - unique.len()
    );
    let _ = client
        .queue_delete(observer.as_str().into(), Default::default())
        .await;
    rmq.cleanup().await;
}
