//! Cross-crate integration and end-to-end tests of eda (see `tests/`), and
//! the harness they share: the real `allocation` binary started as a process
//! ([`Service`]), the services a test uses, isolated ([`World`]), a stream of
//! commands ([`HttpLoad`]) and the check that nothing was lost or doubled
//! ([`World::check_books`]).

pub mod cluster;
pub mod pair;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use eda_core::MessageId;
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

/// The binary of an example service (`allocation`, `orders`), as of the
/// sources: built once per test process (`cargo test --workspace` built
/// it already, and this is a no-op; `cargo test -p eda-tests` alone does
/// not build the examples' binaries, and would run stale ones).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/e2e-… → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT.lock().unwrap();
    if !built.contains(name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "-p", name, "--bin", name]);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().expect("cargo");
        assert!(status.success(), "cargo build -p {name}");
        built.insert(name.to_owned());
    }
    path
}

/// Where a second service of a [`World`] keeps its state: a schema and a
/// queue of its own, on the world's exchange.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// Its Postgres schema.
    pub schema: String,
    /// Its queue (and the prefix of its retry and dead-letter queues).
    pub queue: String,
}

/// Waits until `check` holds, failing the test with `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
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

/// The services a test uses, isolated: a Postgres schema, a RabbitMQ
/// exchange and service queue of its own. Its own broker connection comes
/// back by itself after the broker restarts or closes it.
pub struct World {
    /// A pool on the test's database (tables are in [`schema`](Self::schema)).
    pub pool: PgPool,
    /// The service's Postgres schema.
    pub schema: String,
    /// The service's exchange.
    pub exchange: String,
    /// The service's queue (and the prefix of its retry and dead-letter
    /// queues).
    pub queue: String,
    /// The broker's URL (a cluster's nodes, separated by commas).
    pub amqp: String,
    broker: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    observers: Mutex<Vec<String>>,
    neighbours: Mutex<Vec<Neighbour>>,
}

impl World {
    /// Connects to Postgres and RabbitMQ, or skips (`None`), or under
    /// `CI=true` fails naming the missing service.
    pub async fn new() -> Option<Self> {
        Self::on_broker(amqp_url()).await
    }

    /// The same on the RabbitMQ at `amqp` (a cluster's nodes, separated by
    /// commas): the services started in this world get it as `AMQP_URL`.
    pub async fn on_broker(amqp: String) -> Option<Self> {
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
        let broker = match connect(&amqp).await {
            Ok(broker) => broker,
            Err(e) => return service_missing("RabbitMQ", &amqp, &e, "rabbitmq-server -detached"),
        };
        let name = unique_name("e2e");
        Some(World {
            pool,
            schema: name.clone(),
            exchange: format!("{name}.events"),
            queue: name,
            amqp,
            broker: tokio::sync::Mutex::new(Some(broker)),
            observers: Mutex::new(Vec::new()),
            neighbours: Mutex::new(Vec::new()),
        })
    }

    /// A second service in this world (`orders` beside `allocation`): on
    /// the same exchange, with a schema and a queue of its own, removed by
    /// [`cleanup`](Self::cleanup).
    pub fn neighbour(&self, service: &str) -> Neighbour {
        let neighbour = Neighbour {
            schema: format!("{}_{service}", self.schema),
            queue: format!("{}.{service}", self.queue),
        };
        self.neighbours.lock().unwrap().push(neighbour.clone());
        neighbour
    }

    /// A schema-qualified name of one of the service's tables.
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }

    /// A channel (with publisher confirms) on a live connection: reconnects,
    /// for up to a minute, when the last one was closed.
    pub async fn channel(&self) -> Channel {
        let mut broker = self.broker.lock().await;
        if let Some((connection, channel)) = broker.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return channel.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match connect(&self.amqp).await {
                Ok((connection, channel)) => {
                    *broker = Some((connection, channel.clone()));
                    return channel;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "RabbitMQ did not come back: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// A durable queue bound to `routing_key` on the service's exchange, and
    /// to its ordering slots (`<routing_key>.*`: where a message whose type
    /// declares an ordering key is published), as another service would
    /// consume its events (it survives a broker restart, and a quorum
    /// queue, the loss of a cluster's node).
    pub async fn observe(&self, routing_key: &str) -> String {
        let queue = format!("{}.observer.{routing_key}", self.queue);
        let channel = self.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(queue.as_str().into(), durable, quorum)
            .await
            .unwrap();
        for pattern in [routing_key.to_owned(), format!("{routing_key}.*")] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.exchange.as_str().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        self.observers.lock().unwrap().push(queue.clone());
        queue
    }

    /// Publishes `body` as the message `name` to the service's exchange,
    /// persistent, with a fresh message id, and waits for the broker's
    /// confirm.
    pub async fn publish(&self, name: &str, body: &Value) {
        let properties = BasicProperties::default()
            .with_message_id(MessageId::new().to_string().into())
            .with_type(name.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.publish_raw(
            &self.exchange,
            name,
            body.to_string().as_bytes(),
            properties,
        )
        .await;
    }

    /// Publishes anything, anywhere (`""` is the default exchange, whose
    /// routing keys are queue names), and waits for the confirm.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.channel()
            .await
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next message in `queue`, taken (acknowledged) at once.
    pub async fn take(&self, queue: &str) -> Option<lapin::message::Delivery> {
        self.channel()
            .await
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| m.delivery)
    }

    /// Everything in `queue` now.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let mut messages = Vec::new();
        while let Some(m) = self.take(queue).await {
            messages.push(m);
        }
        messages
    }

    /// The order ids saved in the service's `allocations`, with how many
    /// lines each has.
    pub async fn saved_orders(&self) -> BTreeMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(&format!(
            "SELECT orderid, count(*) FROM {} GROUP BY orderid",
            self.table("allocations")
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }

    /// The order ids the read model lists.
    pub async fn viewed_orders(&self) -> HashSet<String> {
        sqlx::query_scalar(&format!(
            "SELECT orderid FROM {}",
            self.table("allocations_view")
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }

    /// Outbox rows not yet confirmed by the broker.
    pub async fn unsent(&self) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE sent_at IS NULL",
            self.table("eda_outbox")
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap_or(-1)
    }

    /// Checks the books after a stream of `Allocate` commands (one line of
    /// one unit per order): waits (up to `within`) until every acknowledged
    /// order is saved, the outbox is empty, and every saved order is in the
    /// read model and its `allocation.allocated` arrived in `observer`; then
    /// asserts that
    ///
    /// - every acknowledged order is saved (nothing lost);
    /// - nothing but the attempted orders is saved, each once (nothing
    ///   doubled, nothing else changed);
    /// - each saved order has exactly one event after dedupe by message id,
    ///   and no event names an order that is not saved;
    ///
    /// and counts the saved orders the read model misses
    /// ([`Books::not_in_read_model`]).
    pub async fn check_books(&self, observer: &str, load: &Outcome, within: Duration) -> Books {
        let mut events: HashMap<String, HashSet<String>> = HashMap::new();
        let mut deliveries = 0usize;
        let mut drain = async |events: &mut HashMap<String, HashSet<String>>| {
            for m in self.drain(observer).await {
                let body: Value = serde_json::from_slice(&m.data).unwrap();
                let id = m.properties.message_id().as_ref().unwrap().to_string();
                events
                    .entry(body["orderid"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(id);
                deliveries += 1;
            }
        };
        let deadline = Instant::now() + within;
        let saved = loop {
            drain(&mut events).await;
            let saved = self.saved_orders().await;
            let viewed = self.viewed_orders().await;
            let done = load.acknowledged.iter().all(|o| saved.contains_key(o))
                && saved
                    .keys()
                    .all(|o| events.contains_key(o) && viewed.contains(o))
                && self.unsent().await == 0;
            if done || Instant::now() > deadline {
                break saved;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Late duplicates (a publication confirmed twice) arrive too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drain(&mut events).await;

        let lost: Vec<&String> = load
            .acknowledged
            .iter()
            .filter(|o| !saved.contains_key(*o))
            .collect();
        assert!(lost.is_empty(), "acknowledged but not saved: {lost:?}");
        let strangers: Vec<&String> = saved
            .keys()
            .filter(|o| !load.attempted.contains(*o))
            .collect();
        assert!(strangers.is_empty(), "saved but never sent: {strangers:?}");
        let doubled: Vec<(&String, &i64)> = saved.iter().filter(|(_, n)| **n != 1).collect();
        assert!(doubled.is_empty(), "allocated more than once: {doubled:?}");
        let unpublished: Vec<&String> = saved.keys().filter(|o| !events.contains_key(*o)).collect();
        assert!(
            unpublished.is_empty(),
            "saved, but no allocation.allocated: {unpublished:?}"
        );
        let twice: Vec<(&String, &HashSet<String>)> =
            events.iter().filter(|(_, ids)| ids.len() != 1).collect();
        assert!(twice.is_empty(), "more than one event per order: {twice:?}");
        let ghosts: Vec<&String> = events.keys().filter(|o| !saved.contains_key(*o)).collect();
        assert!(ghosts.is_empty(), "published, but not saved: {ghosts:?}");
        assert_eq!(self.unsent().await, 0, "the outbox is empty");
        let viewed = self.viewed_orders().await;
        Books {
            lost: lost.len(),
            attempted: load.attempted.len(),
            acknowledged: load.acknowledged.len(),
            saved: saved.len(),
            events: deliveries,
            duplicates: deliveries - events.values().map(HashSet::len).sum::<usize>(),
            not_in_read_model: saved
                .keys()
                .filter(|o| !viewed.contains(*o))
                .cloned()
                .collect(),
        }
    }

    /// Drops the schemas and the broker objects of the test.
    pub async fn cleanup(self) {
        let neighbours = std::mem::take(&mut *self.neighbours.lock().unwrap());
        let services = std::iter::once((self.schema.clone(), self.queue.clone()))
            .chain(neighbours.into_iter().map(|n| (n.schema, n.queue)));
        let mut queues: Vec<String> = Vec::new();
        for (schema, queue) in services {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&self.pool)
                .await;
            queues.extend(
                [
                    "",
                    ".dlq",
                    ".bindings",
                    ".retry.1000ms",
                    ".retry.5000ms",
                    ".retry.30000ms",
                ]
                .iter()
                .map(|suffix| format!("{queue}{suffix}")),
            );
            // Its ordered partitions (the default count).
            queues.extend(eda_core::entrypoints::ConsumerOptions::new(queue).partition_queues());
        }
        let channel = self.channel().await;
        queues.extend(self.observers.lock().unwrap().iter().cloned());
        queues.push(format!("{}.unrouted", self.exchange));
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        let _ = channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}

/// A connection to the first node of `url` (nodes separated by commas)
/// that accepts one.
async fn connect(url: &str) -> Result<(Connection, Channel), lapin::Error> {
    let mut nodes = url.split(',').map(str::trim).peekable();
    let connection = loop {
        let node = nodes.next().expect("at least one URL");
        match Connection::connect(node, ConnectionProperties::default()).await {
            Ok(connection) => break connection,
            Err(e) if nodes.peek().is_none() => return Err(e),
            Err(_) => {}
        }
    };
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// What [`World::check_books`] counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Books {
    /// Commands sent.
    pub attempted: usize,
    /// Commands that got a success answer (201, or the broker's confirm).
    pub acknowledged: usize,
    /// Orders saved (acknowledged, and some whose answer was lost).
    pub saved: usize,
    /// Acknowledged orders not saved (the check fails unless it is 0).
    pub lost: usize,
    /// `allocation.allocated` messages received.
    pub events: usize,
    /// Of those, publications of an event already received (same message
    /// id), which a consumer's inbox removes.
    pub duplicates: usize,
    /// Saved orders that the read model (`GET /allocations/{orderid}`)
    /// does not list.
    pub not_in_read_model: Vec<String>,
}

impl Books {
    /// Asserts that the read model lists every saved order.
    pub fn assert_read_model(&self) {
        assert!(
            self.not_in_read_model.is_empty(),
            "saved, but not in the read model: {:?}",
            self.not_in_read_model
        );
    }
}

/// A running `allocation` process.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    http: reqwest::Client,
}

impl Service {
    /// Starts the service on the world's schema, exchange and queue.
    pub async fn start(world: &World) -> Service {
        Self::start_with(world, &[]).await
    }

    /// Starts the service with more environment variables.
    pub async fn start_with(world: &World, env: &[(&str, &str)]) -> Service {
        let names = Neighbour {
            schema: world.schema.clone(),
            queue: world.queue.clone(),
        };
        Self::launch("allocation", world, &names, env).await
    }

    /// Starts the example service `binary` (`orders`) as the world's
    /// neighbour `names`, with more environment variables.
    pub async fn start_neighbour(
        binary_name: &str,
        world: &World,
        names: &Neighbour,
        env: &[(&str, &str)],
    ) -> Service {
        Self::launch(binary_name, world, names, env).await
    }

    async fn launch(
        binary_name: &str,
        world: &World,
        names: &Neighbour,
        env: &[(&str, &str)],
    ) -> Service {
        let mut command = Command::new(binary(binary_name));
        command
            .env("DATABASE_URL", postgres_url())
            .env("DATABASE_SCHEMA", &names.schema)
            .env("AMQP_URL", &world.amqp)
            .env("EDA_EXCHANGE", &world.exchange)
            .env("EDA_QUEUE", &names.queue)
            .env("PORT", "0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("the {binary_name} binary starts: {e}"));
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
        // Keep reading stdout so the process never blocks on it; with
        // `EDA_TEST_LOGS` set, pass it on (prefixed with the binary's name).
        let echo = std::env::var_os("EDA_TEST_LOGS").is_some();
        let prefix = binary_name.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[{prefix}] {line}");
                }
            }
        });
        Service {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Stock enough for every order: `count` new skus with one batch of a
    /// million units each; their names.
    pub async fn stock(&self, count: usize) -> Vec<String> {
        let skus: Vec<String> = (0..count).map(|_| unique_name("sku")).collect();
        for sku in &skus {
            self.add_batch(&format!("{sku}-batch"), sku, 1_000_000, None)
                .await;
        }
        skus
    }

    /// POSTs JSON; the status and the JSON answer (`Null` if none).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
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

    /// GETs; the status and the JSON answer (`Null` if none).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get_text(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GETs; the status and the body as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Adds a batch, asserting the 201.
    pub async fn add_batch(&self, reference: &str, sku: &str, qty: u32, eta: Option<&str>) {
        let (status, body) = self
            .post(
                "/batches",
                json!({"ref": reference, "sku": sku, "qty": qty, "eta": eta}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// SIGTERM, and the exit code.
    pub async fn terminate(mut self) -> i32 {
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

    /// SIGKILL: the process dies where it stands.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

/// What a stream of commands did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Every order sent (answered or not).
    pub attempted: BTreeSet<String>,
    /// The orders that got a success answer.
    pub acknowledged: BTreeSet<String>,
    /// Answers other than success, by status (0: no answer at all).
    pub failed: BTreeMap<u16, usize>,
}

impl Outcome {
    /// Both streams together.
    pub fn merge(mut self, other: Outcome) -> Outcome {
        self.attempted.extend(other.attempted);
        self.acknowledged.extend(other.acknowledged);
        for (status, n) in other.failed {
            *self.failed.entry(status).or_default() += n;
        }
        self
    }
}

/// A stream of `POST`s, one per order, from `workers` clients at once, to
/// whichever address [`target`](Self::target) holds (a restarted service
/// listens elsewhere). An order is sent once: a request without an answer
/// is not repeated, since it may have been taken.
pub struct HttpLoad {
    target: Arc<RwLock<String>>,
    sent: Arc<AtomicUsize>,
    pause: Duration,
}

impl HttpLoad {
    /// Load on the service at `base`.
    pub fn new(base: &str) -> Self {
        HttpLoad {
            target: Arc::new(RwLock::new(base.to_owned())),
            sent: Arc::new(AtomicUsize::new(0)),
            pause: Duration::ZERO,
        }
    }

    /// Each client waits `pause` after each request: a stream long enough
    /// for a fault to land in its middle.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Sends the next requests to `base`.
    pub fn target(&self, base: &str) {
        *self.target.write().unwrap() = base.to_owned();
    }

    /// How many requests have been sent (or tried) so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// `POST /allocate` of one unit for each of `orders` (order id, sku),
    /// in a task of its own; what happened.
    pub fn run(
        &self,
        orders: Vec<(String, String)>,
        workers: usize,
    ) -> tokio::task::JoinHandle<Outcome> {
        let requests = orders
            .into_iter()
            .map(|(orderid, sku)| {
                let body = json!({"orderid": orderid, "sku": sku, "qty": 1});
                (orderid, body)
            })
            .collect();
        self.post("/allocate", requests, workers)
    }

    /// `POST <path>` of each (order id, body), in a task of its own; what
    /// happened (a `201` acknowledges the order).
    pub fn post(
        &self,
        path: &str,
        requests: Vec<(String, Value)>,
        workers: usize,
    ) -> tokio::task::JoinHandle<Outcome> {
        let requests = Arc::new(requests);
        let next = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (requests, next) = (requests.clone(), next.clone());
                let (target, sent) = (self.target.clone(), self.sent.clone());
                let path = path.to_owned();
                let pause = self.pause;
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let mut outcome = Outcome::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((orderid, body)) = requests.get(i) else {
                            break outcome;
                        };
                        let base = target.read().unwrap().clone();
                        outcome.attempted.insert(orderid.clone());
                        let answer = http.post(format!("{base}{path}")).json(body).send().await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        match answer {
                            Ok(r) if r.status().as_u16() == 201 => {
                                outcome.acknowledged.insert(orderid.clone());
                            }
                            Ok(r) => {
                                *outcome.failed.entry(r.status().as_u16()).or_default() += 1;
                            }
                            Err(_) => {
                                *outcome.failed.entry(0).or_default() += 1;
                                // The service is down: do not burn the
                                // orders faster than it comes back.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::spawn(async move {
            let mut all = Outcome::default();
            for task in tasks {
                all = all.merge(task.await.unwrap());
            }
            all
        })
    }

    /// Waits until `n` requests have been sent.
    pub async fn when_sent(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.sent() < n {
            assert!(
                Instant::now() < deadline,
                "the load stalled at {}",
                self.sent()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `count` orders named `<prefix>-<i>`, spread over `skus`.
pub fn orders(prefix: &str, count: usize, skus: &[String]) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("{prefix}-{i}"), skus[i % skus.len()].clone()))
        .collect()
}

/// Publishes an `allocation.allocate` for each order, confirmed one by one:
/// each is acknowledged once the broker has it.
pub async fn publish_allocations(world: &World, orders: &[(String, String)]) -> Outcome {
    let mut outcome = Outcome::default();
    for (orderid, sku) in orders {
        outcome.attempted.insert(orderid.clone());
        world
            .publish(
                "allocation.allocate",
                &json!({"orderid": orderid, "sku": sku, "qty": 1}),
            )
            .await;
        outcome.acknowledged.insert(orderid.clone());
    }
    outcome
}

/// A PostgreSQL server of a test's own, on a port of its own, that the
/// test may stop and start (the machine's server is shared: it is never
/// stopped). Made with the machine's `initdb` and `pg_ctl`, run as the
/// `postgres` user (they refuse to run as root); removed when dropped.
pub struct OwnPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// A fresh server, started; `None` (skipped, or a failure under
    /// `CI=true`) when the machine has no PostgreSQL server binaries.
    pub fn start() -> Option<OwnPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .flatten()
                    .map(|v| v.path().join("bin"))
                    .filter(|bin| bin.join("initdb").exists())
                    .max()
            });
        let Some(bin) = bin else {
            return eda_core::testing::service_missing(
                "PostgreSQL's server binaries (initdb, pg_ctl)",
                "/usr/lib/postgresql/<version>/bin",
                &"not found",
                "apt-get install postgresql",
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(unique_name("own-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let server = OwnPostgres { dir, bin, port };
        server.run(&["chown", "-R", "postgres", "."], false);
        server.run_as_postgres(
            "initdb",
            &["-D", "data", "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        server.start_again();
        Some(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: open connections are cut).
    pub fn stop(&self) {
        self.run_as_postgres("pg_ctl", &["-D", "data", "-m", "fast", "-w", "stop"]);
    }

    /// Starts it again, on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.display()
        );
        self.run_as_postgres(
            "pg_ctl",
            &["-D", "data", "-o", &options, "-l", "log", "-w", "start"],
        );
    }

    fn run_as_postgres(&self, tool: &str, args: &[&str]) {
        let tool = self.bin.join(tool);
        let mut all = vec![tool.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all, true);
    }

    /// Runs `args` in the server's directory, as `postgres` or as this
    /// process's user.
    fn run(&self, args: &[&str], as_postgres: bool) {
        let mut command = if !as_postgres {
            std::process::Command::new(args[0])
        } else {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", args[0]]);
            c
        };
        let out = command
            .args(&args[1..])
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let stop = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", "data", "-m", "immediate", "stop"])
            .current_dir(&self.dir)
            .output();
        let _ = stop;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
