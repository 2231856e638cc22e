//! End to end: the real `allocation` binary started as a process, real HTTP,
//! real Postgres and RabbitMQ (each test with its own schema, exchange and
//! queue, so tests run in parallel and again). APwP's end-to-end scenarios,
//! and: poison on the queue, two instances sharing the work, SIGTERM under
//! load.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use eda_core::MessageId;
use eda_core::adapters::rabbitmq::{ERROR_HEADER, header_string};
use eda_core::sqlx::{self, PgPool};
use eda_core::testing::{amqp_url, postgres_url, service_missing, unique_name};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary, built by `cargo test --workspace` (or built here).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/e2e-… → target/<profile>/allocation
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join(format!("allocation{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "allocation"])
            .status()
            .expect("cargo");
        assert!(status.success(), "cargo build -p allocation");
    }
    path
}

/// The services this test uses, isolated.
struct World {
    pool: PgPool,
    schema: String,
    exchange: String,
    queue: String,
    channel: Channel,
    _connection: Connection,
}

impl World {
    async fn new() -> Option<Self> {
        let url = postgres_url();
        let pool = match PgPool::connect(&url).await {
            Ok(pool) => pool,
            Err(e) => {
                return service_missing(
                    "PostgreSQL",
                    &url,
                    &e,
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                );
            }
        };
        let amqp = amqp_url();
        let connection = match Connection::connect(&amqp, ConnectionProperties::default()).await {
            Ok(c) => c,
            Err(e) => return service_missing("RabbitMQ", &amqp, &e, "rabbitmq-server -detached"),
        };
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let name = unique_name("e2e");
        Some(World {
            pool,
            schema: name.clone(),
            exchange: format!("{name}.events"),
            queue: name,
            channel,
            _connection: connection,
        })
    }

    /// A queue bound to events of the service, as another service would
    /// consume them.
    async fn observe(&self, routing_key: &str) -> String {
        let queue = format!("{}.observer.{routing_key}", self.queue);
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                self.exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    async fn publish(&self, name: &str, body: &Value) {
        let properties = BasicProperties::default()
            .with_message_id(MessageId::new().to_string().into())
            .with_type(name.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                name.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn take(&self, queue: &str) -> Option<lapin::message::Delivery> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| m.delivery)
    }

    async fn cleanup(self) {
        let _ = sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ))
        .execute(&self.pool)
        .await;
        for suffix in [
            "",
            ".dlq",
            ".retry.1000ms",
            ".retry.5000ms",
            ".retry.30000ms",
            ".observer.allocation.allocated",
        ] {
            let _ = self
                .channel
                .queue_delete(
                    format!("{}{suffix}", self.queue).as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}

/// A running `allocation` process.
struct Service {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Service {
    async fn start(world: &World) -> Service {
        let mut child = Command::new(binary())
            .env("DATABASE_URL", postgres_url())
            .env("DATABASE_SCHEMA", &world.schema)
            .env("AMQP_URL", amqp_url())
            .env("EDA_EXCHANGE", &world.exchange)
            .env("EDA_QUEUE", &world.queue)
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the allocation binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .expect("the service started in time")
                .unwrap()
                .expect("the service printed where it listens");
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.replace("0.0.0.0", "127.0.0.1");
            }
        };
        // Keep reading stdout so the process never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Service {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// SIGTERM, and the exit code.
    async fn terminate(mut self) -> i32 {
        let pid = self.child.id().expect("running") as i32;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("it stops in time")
            .unwrap();
        exit.code().expect("an exit code, not a signal")
    }
}

async fn add_batch(service: &Service, reference: &str, sku: &str, qty: u32, eta: Option<&str>) {
    let (status, body) = service
        .post(
            "/batches",
            json!({"ref": reference, "sku": sku, "qty": qty, "eta": eta}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn happy_path_returns_201_and_allocated_batch() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let sku = unique_name("sku");
    add_batch(&service, "later", &sku, 100, Some("2011-01-02")).await;
    add_batch(&service, "earlier", &sku, 100, Some("2011-01-01")).await;
    add_batch(&service, "other", &unique_name("sku"), 100, None).await;
    let (status, body) = service
        .post("/allocate", json!({"orderid": "o1", "sku": sku, "qty": 3}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(body, json!({"batchref": "earlier"}));
    // The read model is kept by an event handler, after the command.
    eventually(
        "the allocation is readable",
        Duration::from_secs(5),
        || async {
            service.get("/allocations/o1").await
                == (200, json!([{"sku": sku, "batchref": "earlier"}]))
        },
    )
    .await;
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn unhappy_path_returns_400_and_error_message() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let (status, body) = service
        .post(
            "/allocate",
            json!({"orderid": "o2", "sku": "UNKNOWN-SKU", "qty": 20}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"message": "Invalid sku UNKNOWN-SKU"}));
    assert_eq!(service.get("/allocations/o2").await.0, 404);
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn change_batch_quantity_leads_to_reallocation() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let allocated = world.observe("allocation.allocated").await;
    let (orderid, sku) = (unique_name("order"), unique_name("sku"));
    let (earlier, later) = (unique_name("batch"), unique_name("batch"));
    add_batch(&service, &earlier, &sku, 10, Some("2011-01-01")).await;
    add_batch(&service, &later, &sku, 10, Some("2011-01-02")).await;
    let (status, body) = service
        .post(
            "/allocate",
            json!({"orderid": orderid, "sku": sku, "qty": 10}),
        )
        .await;
    assert_eq!((status, body), (201, json!({"batchref": earlier})));
    // The first allocation's event.
    eventually(
        "the first allocation is published",
        Duration::from_secs(3),
        || async { world.take(&allocated).await.is_some() },
    )
    .await;

    // Another service changes the batch quantity, over RabbitMQ.
    world
        .publish(
            "allocation.change_batch_quantity",
            &json!({"batchref": earlier, "qty": 5}),
        )
        .await;
    let start = Instant::now();
    let mut message = None;
    while message.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no reallocation within 3 s"
        );
        message = world.take(&allocated).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body: Value = serde_json::from_slice(&message.unwrap().data).unwrap();
    assert_eq!(
        body,
        json!({"orderid": orderid, "sku": sku, "qty": 10, "batchref": later})
    );
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dead_letter_queue_and_the_service_keeps_serving() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let sku = unique_name("sku");
    add_batch(&service, "b1", &sku, 10, None).await;
    // Malformed: not the fields of the command.
    world
        .publish(
            "allocation.change_batch_quantity",
            &json!({"batch": "b1", "quantity": "many"}),
        )
        .await;
    let dlq = format!("{}.dlq", world.queue);
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        if let Some(dead) = world.take(&dlq).await {
            break dead;
        }
        assert!(Instant::now() < deadline, "the poison is not dead-lettered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let reason = header_string(&dead.properties, ERROR_HEADER).unwrap();
    assert!(
        reason.contains("malformed `allocation.change_batch_quantity`"),
        "{reason}"
    );
    // Still serving, over HTTP and over RabbitMQ.
    let (status, _) = service
        .post("/allocate", json!({"orderid": "o1", "sku": sku, "qty": 4}))
        .await;
    assert_eq!(status, 201);
    world
        .publish(
            "allocation.change_batch_quantity",
            &json!({"batchref": "b1", "qty": 6}),
        )
        .await;
    eventually(
        "the good message is handled",
        Duration::from_secs(5),
        || async {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT purchased_quantity FROM \"{}\".batches WHERE reference = 'b1'",
                world.schema
            ))
            .fetch_one(&world.pool)
            .await
            .is_ok_and(|q| q == 6)
        },
    )
    .await;
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn two_instances_share_a_stream_of_commands_and_publish_every_event_once() {
    let Some(world) = World::new().await else {
        return;
    };
    let first = Service::start(&world).await;
    let second = Service::start(&world).await;
    let allocated = world.observe("allocation.allocated").await;
    let total = 100;
    let skus: Vec<String> = (0..10).map(|_| unique_name("sku")).collect();
    for (i, sku) in skus.iter().enumerate() {
        add_batch(&first, &format!("batch-{i}"), sku, 1000, None).await;
    }
    let orders: Vec<String> = (0..total).map(|i| format!("order-{i}")).collect();
    for (i, orderid) in orders.iter().enumerate() {
        world
            .publish(
                "allocation.allocate",
                &json!({"orderid": orderid, "sku": skus[i % skus.len()], "qty": 1}),
            )
            .await;
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM \"{}\".allocations",
            world.schema
        ))
        .fetch_one(&world.pool)
        .await
        .unwrap()
    };
    eventually(
        "every command is handled",
        Duration::from_secs(30),
        || async { count().await == total as i64 },
    )
    .await;
    // Both instances consumed from the queue.
    let consumers = world
        .channel
        .queue_declare(
            world.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .consumer_count();
    assert_eq!(consumers, 2);
    // Every event published once (one relay holds the outbox lease).
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} events published",
            ids.len()
        );
        while let Some(m) = world.take(&allocated).await {
            ids.push(m.properties.message_id().as_ref().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(m) = world.take(&allocated).await {
        ids.push(m.properties.message_id().as_ref().unwrap().to_string());
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (total, total),
        "each event exactly once"
    );
    assert_eq!(first.terminate().await, 0);
    assert_eq!(second.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn sigterm_during_load_loses_nothing() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let allocated = world.observe("allocation.allocated").await;
    let sku = unique_name("sku");
    add_batch(&service, "b1", &sku, 100_000, None).await;
    let base = service.base.clone();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut succeeded = Vec::new();
        for i in 0..5000 {
            let orderid = format!("order-{i}");
            let body = json!({"orderid": orderid, "sku": sku, "qty": 1});
            match http
                .post(format!("{base}/allocate"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() == 201 => succeeded.push(orderid),
                // Refused or cut off by the shutdown: not acknowledged, so
                // it may or may not have happened; it must not be half-done.
                _ => {}
            }
        }
        succeeded
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(service.terminate().await, 0, "a graceful exit");
    let succeeded = load.await.unwrap();
    assert!(!succeeded.is_empty(), "some load ran before the signal");
    // Every acknowledged allocation is saved, and its event was published
    // (the relay flushed the outbox before the process exited).
    let saved: HashSet<String> = sqlx::query_scalar::<_, String>(&format!(
        "SELECT orderid FROM \"{}\".allocations",
        world.schema
    ))
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for orderid in &succeeded {
        assert!(
            saved.contains(orderid),
            "{orderid} was acknowledged but not saved"
        );
    }
    let unsent: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".eda_outbox WHERE sent_at IS NULL",
        world.schema
    ))
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(unsent, 0, "the outbox was flushed");
    let mut published = HashSet::new();
    while let Some(m) = world.take(&allocated).await {
        let body: Value = serde_json::from_slice(&m.data).unwrap();
        published.insert(body["orderid"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        published, saved,
        "every saved allocation was published, nothing else"
    );
    world.cleanup().await;
}
