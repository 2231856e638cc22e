//! The fault suite: the real `allocation` binary, the real Postgres and
//! RabbitMQ, a stream of commands, a fault in the middle of it, and then the
//! books ([`World::check_books`]): every acknowledged command saved, each
//! order allocated once and published once after dedupe by message id,
//! nothing else changed.
//!
//! Each scenario prints one `FIGURES {json}` line (`--nocapture` shows it);
//! `EDA_FAULT_SCALE=4` makes the streams four times longer;
//! RELIABILITY.md records a run. Faults of the whole broker (restart, closing
//! every connection) hold [`BROKER`] exclusively, the others share it, so
//! that the scenarios of this file can run in parallel.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use eda_core::MessageId;
use eda_core::adapters::rabbitmq::{ATTEMPTS_HEADER, ERROR_HEADER, header_string};
use eda_core::sqlx;
use eda_core::testing::{service_missing, unique_name};
use eda_tests::{HttpLoad, Outcome, Service, World, orders, publish_allocations};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tokio::sync::RwLock;

/// Shared by the scenarios; held exclusively by those that break the whole
/// broker.
static BROKER: RwLock<()> = RwLock::const_new(());

/// How much larger than in CI the streams are: `EDA_FAULT_SCALE=4` sends
/// 10,000 commands a scenario instead of 2,500 (the poison scenario keeps
/// its 1,000 + 1,000).
fn scale() -> usize {
    std::env::var("EDA_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1)
}

/// Runs `rabbitmqctl`; `false` when it is not installed here (and not
/// `CI=true`, where that fails the test).
fn rabbitmqctl(args: &[&str]) -> bool {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(e) => service_missing::<()>(
            "rabbitmqctl (the broker's control tool)",
            "rabbitmqctl",
            &e,
            "run the suite on the broker's machine",
        )
        .is_some(),
    }
}

fn figures(scenario: &str, fault: &str, books: &eda_tests::Books, extra: Value) {
    let mut line = json!({
        "scenario": scenario,
        "fault": fault,
        "attempted": books.attempted,
        "acknowledged": books.acknowledged,
        "saved": books.saved,
        "lost": books.lost,
        "events": books.events,
        "duplicate_publications": books.duplicates,
    });
    if let (Value::Object(line), Value::Object(extra)) = (&mut line, extra) {
        line.extend(extra);
    }
    println!("FIGURES {line}");
}

/// The books of a scenario, the read model included.
async fn check_books(world: &World, observer: &str, outcome: &Outcome) -> eda_tests::Books {
    let within = Duration::from_secs(90 * scale() as u64);
    let books = world.check_books(observer, outcome, within).await;
    books.assert_read_model();
    books
}

/// A stream of commands (`POST /allocate` from 8 clients, and
/// `allocation.allocate` waiting on RabbitMQ), `fault` in its middle (given
/// the service, it returns the one running afterwards and what it did, or
/// `None` to skip), then the books. `exclusive`: the fault breaks the whole
/// broker.
async fn mid_stream<F>(scenario: &str, exclusive: bool, fault: F)
where
    F: AsyncFnOnce(&World, &HttpLoad, Service) -> Option<(Service, String)>,
{
    let _shared = if exclusive {
        None
    } else {
        Some(BROKER.read().await)
    };
    let _exclusive = if exclusive {
        Some(BROKER.write().await)
    } else {
        None
    };
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let observer = world.observe("allocation.allocated").await;
    let skus = service.stock(16).await;
    let queued = publish_allocations(&world, &orders("amqp", 500 * scale(), &skus)).await;
    let load = HttpLoad::new(&service.base);
    let stream = load.run(orders("http", 2000 * scale(), &skus), 8);
    let Some((service, fault)) = fault(&world, &load, service).await else {
        return;
    };
    let outcome = stream.await.unwrap().merge(queued);
    let books = check_books(&world, &observer, &outcome).await;
    figures(scenario, &fault, &books, json!({"failed": outcome.failed}));
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

/// The read model is kept by an in-process handler of `Allocated`, run
/// after the command's commit: a process killed between the two leaves the
/// event undispatched in the journal, and the restarted service's recovery
/// handles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart() {
    mid_stream("sigkill", false, async |world, load, service| {
        load.when_sent(1000 * scale()).await;
        service.kill().await;
        let killed_at = load.sent();
        let service = Service::start(world).await;
        load.target(&service.base);
        Some((
            service,
            format!("SIGKILL after {killed_at} HTTP requests, then a restart"),
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_stream() {
    mid_stream("rabbitmq_restart", true, async |_, load, service| {
        load.when_sent(700 * scale()).await;
        if !rabbitmqctl(&["stop_app"]) {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        (rabbitmqctl(&["start_app"]) && rabbitmqctl(&["await_startup"]))
            .then(|| (service, "rabbitmqctl stop_app, 2 s down, start_app".into()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connections_closed_mid_stream() {
    mid_stream(
        "rabbitmq_close_connections",
        true,
        async |_, load, service| {
            load.when_sent(700 * scale()).await;
            for _ in 0..3 {
                if !rabbitmqctl(&["close_all_connections", "fault suite"]) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let fault = "rabbitmqctl close_all_connections, three times 300 ms apart";
            Some((service, fault.into()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_mid_stream() {
    mid_stream("postgres_terminate", false, async |world, load, service| {
        let mut terminated = 0i64;
        for at in [500, 1000, 1500] {
            load.when_sent(at * scale()).await;
            // Every connection of this service (its application_name is its
            // queue's name), in the middle of whatever it was doing.
            terminated += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()) t",
            )
            .bind(&world.queue)
            .fetch_one(&world.pool)
            .await
            .unwrap();
        }
        assert!(terminated > 0, "the service had connections to terminate");
        let fault = format!(
            "pg_terminate_backend of all the service's connections, 3 times ({terminated} in all)"
        );
        Some((service, fault))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_recovers_and_what_outlived_its_retries_is_dead_lettered() {
    let _shared = BROKER.read().await;
    let Some(world) = World::new().await else {
        return;
    };
    // The notifications go to a directory that is not there yet: the
    // out-of-stock handler fails until it is created.
    let dir = std::env::temp_dir().join(unique_name("eda-notify"));
    let file = dir.join("notifications.log");
    let file_env = file.to_string_lossy().into_owned();
    let service = Service::start_with(
        &world,
        &[
            ("NOTIFICATIONS_FILE", &file_env),
            ("EDA_RETRY_DELAYS_MS", "200"),
            ("EDA_MAX_ATTEMPTS", "4"),
        ],
    )
    .await;
    let observer = world.observe("allocation.allocated").await;
    let skus = service.stock(8).await;
    let load = HttpLoad::new(&service.base);
    let stream = load.run(orders("http", 1000, &skus), 4);

    // Another service reports products out of stock, one every 10 ms; the
    // notifier recovers once the first report has outlived its retries
    // (waited for, not timed: under load a retry takes longer), and the
    // reports go on for 1.5 s after.
    let start = Instant::now();
    let dlq = format!("{}.dlq", world.queue);
    let mut dead: BTreeMap<String, (u32, String)> = BTreeMap::new();
    let drain_dead = async |dead: &mut BTreeMap<String, (u32, String)>| {
        for m in world.drain(&dlq).await {
            let body: Value = serde_json::from_slice(&m.data).unwrap();
            let attempts = match m
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(ATTEMPTS_HEADER).cloned())
            {
                Some(AMQPValue::LongLongInt(n)) => n as u32,
                other => panic!("attempts header: {other:?}"),
            };
            let reason = header_string(&m.properties, ERROR_HEADER).unwrap();
            dead.insert(body["sku"].as_str().unwrap().to_owned(), (attempts, reason));
        }
    };
    let mut published: BTreeMap<String, Duration> = BTreeMap::new();
    let mut recovered_at = None;
    for i in 0.. {
        if i % 10 == 0 && recovered_at.is_none() {
            drain_dead(&mut dead).await;
            if !dead.is_empty() {
                std::fs::create_dir_all(&dir).unwrap();
                recovered_at = Some(start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no report outlived its retries in 30 s"
            );
        }
        if recovered_at.is_some_and(|at| start.elapsed() >= at + Duration::from_millis(1500)) {
            break;
        }
        let sku = format!("gone-{i}");
        world
            .publish("allocation.out_of_stock", &json!({"sku": sku}))
            .await;
        published.insert(sku, start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovered_at = recovered_at.expect("recovered above");

    // Each report ends notified or dead-lettered, with the reason.
    let mut notified: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while notified.len() + dead.len() < published.len() {
        assert!(
            Instant::now() < deadline,
            "{} notified and {} dead-lettered of {}",
            notified.len(),
            dead.len(),
            published.len()
        );
        drain_dead(&mut dead).await;
        notified.clear();
        for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let sku = line.rsplit(' ').next().unwrap().to_owned();
            *notified.entry(sku).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let both: Vec<&String> = dead.keys().filter(|s| notified.contains_key(*s)).collect();
    assert!(both.is_empty(), "notified and dead-lettered: {both:?}");
    let all: BTreeSet<&String> = dead.keys().chain(notified.keys()).collect();
    assert_eq!(
        all,
        published.keys().collect(),
        "every report accounted for"
    );
    for (sku, (attempts, reason)) in &dead {
        assert_eq!(*attempts, 4, "{sku} dead-lettered after every attempt");
        assert!(
            reason.contains("cannot send a notification to stock@made.com"),
            "{sku}: {reason}"
        );
        assert!(
            published[sku] < recovered_at,
            "{sku} was dead-lettered, but published after the recovery"
        );
    }
    // Published before the recovery, yet notified: a retry succeeded.
    let failed_then_notified = notified
        .keys()
        .filter(|s| published[*s] < recovered_at)
        .count();
    assert!(!dead.is_empty(), "the first reports outlived their retries");
    assert!(
        failed_then_notified > 0,
        "some reports published while failing were notified"
    );
    let twice = notified.values().filter(|n| **n > 1).count();

    let outcome = stream.await.unwrap();
    let books = check_books(&world, &observer, &outcome).await;
    figures(
        "failing_handler",
        "the notifier fails (its directory is missing) until a report outlived its 4 attempts, 200 ms apart; out-of-stock reports every 10 ms until 1.5 s after it recovered",
        &books,
        json!({
            "reports": published.len(),
            "recovered_after_ms": recovered_at.as_millis(),
            "dead_lettered": dead.len(),
            "failed_then_notified": failed_then_notified,
            "notified_first_time": notified.len() - failed_then_notified,
            "notified_twice": twice,
        }),
    );
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The kinds of poison, and the reason each must be dead-lettered with.
const POISON: [(&str, &str); 5] = [
    ("malformed_json", "malformed `allocation.allocate`"),
    ("unknown_name", "unknown message `billing.invoice`"),
    ("wrong_types", "malformed `allocation.allocate`"),
    ("huge_body", "message too large"),
    ("missing_message_id", "no message_id property"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_interleaved_with_good_messages() {
    let _shared = BROKER.read().await;
    let Some(world) = World::new().await else {
        return;
    };
    let limit = 64 * 1024;
    let service =
        Service::start_with(&world, &[("EDA_MAX_MESSAGE_BYTES", &limit.to_string())]).await;
    let observer = world.observe("allocation.allocated").await;
    let skus = service.stock(8).await;
    let good = orders("good", 1000, &skus);
    let mut outcome = Outcome::default();
    let huge = json!({"orderid": "huge", "sku": skus[0], "qty": 1, "pad": "x".repeat(limit)});
    for (i, (orderid, sku)) in good.iter().enumerate() {
        let (kind, _) = POISON[i % POISON.len()];
        let mut body = json!({"orderid": format!("poison-{i}"), "sku": sku, "qty": 1});
        let mut name = "allocation.allocate";
        let mut id = Some(MessageId::new().to_string());
        let bytes = match kind {
            "malformed_json" => b"{\"orderid\": \"poison".to_vec(),
            "unknown_name" => {
                name = "billing.invoice";
                body.to_string().into_bytes()
            }
            "wrong_types" => {
                body["qty"] = json!("one");
                body.to_string().into_bytes()
            }
            "huge_body" => huge.to_string().into_bytes(),
            _ => {
                id = None;
                body.to_string().into_bytes()
            }
        };
        let mut headers = FieldTable::default();
        headers.insert("x-poison".into(), AMQPValue::LongLongInt(i as i64));
        let mut properties = BasicProperties::default()
            .with_type(name.into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        // Straight into the service's queue: its bindings route only the
        // names it knows.
        world
            .publish_raw("", &world.queue, &bytes, properties)
            .await;
        let one = publish_allocations(&world, &[(orderid.clone(), sku.clone())]).await;
        outcome = outcome.merge(one);
    }
    let books = check_books(&world, &observer, &outcome).await;

    let dlq = format!("{}.dlq", world.queue);
    let mut dead: BTreeMap<i64, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < good.len() {
        assert!(
            Instant::now() < deadline,
            "{} poison in the DLQ",
            dead.len()
        );
        for m in world.drain(&dlq).await {
            let Some(AMQPValue::LongLongInt(i)) = m
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-poison").cloned())
            else {
                panic!("a good message was dead-lettered: {m:?}");
            };
            let reason = header_string(&m.properties, ERROR_HEADER).unwrap();
            assert!(
                dead.insert(i, reason).is_none(),
                "poison {i} dead-lettered twice"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, reason) in &dead {
        let (kind, expected) = POISON[*i as usize % POISON.len()];
        assert!(reason.contains(expected), "poison {i} ({kind}): {reason}");
        *by_kind.entry(kind).or_default() += 1;
    }
    let saved = world.saved_orders().await;
    assert!(
        saved.keys().all(|o| o.starts_with("good-")),
        "a poison message was handled"
    );
    figures(
        "poison",
        "1,000 poison messages interleaved one by one with 1,000 good commands",
        &books,
        json!({"poison": dead.len(), "dead_lettered_by_kind": by_kind}),
    );
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scarce_stock_is_never_oversold() {
    let _shared = BROKER.read().await;
    let Some(world) = World::new().await else {
        return;
    };
    let (first, second) = (Service::start(&world).await, Service::start(&world).await);
    let sku = unique_name("scarce");
    first.add_batch("scarce-1", &sku, 30, None).await;
    first
        .add_batch("scarce-2", &sku, 20, Some("2031-01-01"))
        .await;
    let (stock, demand) = (50, 400);
    // 400 orders of one unit, from 16 clients on two instances; a 503
    // (conflict outlived the retries) is asked again, a 409 is final.
    let bases = [first.base.clone(), second.base.clone()];
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (next, base, sku) = (next.clone(), bases[c % 2].clone(), sku.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
                let mut conflicts = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= demand {
                        break (answers, conflicts);
                    }
                    let body = json!({"orderid": format!("order-{i}"), "sku": sku, "qty": 1});
                    let status = loop {
                        let r = http
                            .post(format!("{base}/allocate"))
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        match r.status().as_u16() {
                            503 => conflicts += 1,
                            status => break status,
                        }
                    };
                    *answers.entry(status).or_default() += 1;
                }
            })
        })
        .collect();
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let mut conflicts = 0;
    for client in clients {
        let (a, c) = client.await.unwrap();
        for (status, n) in a {
            *answers.entry(status).or_default() += n;
        }
        conflicts += c;
    }
    let allocated: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT batchref, sum(qty)::BIGINT FROM {} GROUP BY batchref ORDER BY batchref",
        world.table("allocations")
    ))
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let units: i64 = allocated.iter().map(|(_, qty)| qty).sum();
    // Printed before the checks, so that a failure shows its figures too.
    println!(
        "FIGURES {}",
        json!({
            "scenario": "scarce_stock",
            "fault": "400 concurrent orders of 1 unit for 50 in stock, 16 clients on 2 instances",
            "allocated": units,
            "answers": answers,
            "conflicts_retried_by_clients": conflicts,
            "oversold": (units - stock as i64).max(0),
        })
    );
    assert_eq!(
        allocated,
        vec![("scarce-1".to_owned(), 30), ("scarce-2".to_owned(), 20)],
        "exactly the stock is allocated, never more"
    );
    assert_eq!(
        answers,
        BTreeMap::from([(201, stock), (409, demand - stock)]),
        "one success per unit, out of stock for the rest"
    );
    let saved = world.saved_orders().await;
    assert_eq!(saved.len(), stock);
    assert!(saved.values().all(|n| *n == 1));
    assert_eq!(first.terminate().await, 0);
    assert_eq!(second.terminate().await, 0);
    world.cleanup().await;
}

/// Polls `GET /health/ready` until it answers `status`; how long that took,
/// and the last body.
async fn ready_becomes(base: &str, status: u16, within: Duration) -> (Duration, Value) {
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        let response = http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .expect("the service answers");
        let now = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if now == status {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < within,
            "/health/ready still {now} after {within:?}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Readiness tells the truth about the database: `503`, naming it, while
/// the service's Postgres (a server of the test's own, on its own port) is
/// stopped, and `200` again once it is back; liveness stays `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    let _shared = BROKER.read().await;
    let Some(postgres) = eda_tests::OwnPostgres::start() else {
        return;
    };
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start_with(&world, &[("DATABASE_URL", &postgres.url())]).await;
    let (_, body) = ready_becomes(&service.base, 200, Duration::from_secs(30)).await;
    assert_eq!(body["checks"]["database"]["ok"], true, "{body}");

    postgres.stop();
    let (to_unready, body) = ready_becomes(&service.base, 503, Duration::from_secs(30)).await;
    assert_eq!(body["checks"]["database"]["ok"], false, "{body}");
    assert!(
        body["checks"]["database"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "readiness says what is wrong with the database: {body}"
    );
    assert_eq!(body["checks"]["broker"]["ok"], true, "{body}");
    let (live, _) = service.get("/health/live").await;
    assert_eq!(live, 200, "the process still serves");

    let back = Instant::now();
    postgres.start_again();
    ready_becomes(&service.base, 200, Duration::from_secs(60)).await;
    println!(
        "readiness: 503 {:.1} s after the database stopped, 200 {:.1} s after it started again",
        to_unready.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

/// What the service that only publishes does: a command, handled in
/// process, raises an event for other services. It accepts nothing from the
/// broker and handles no event: it consumes nothing.
pub mod publish_only {
    use eda_core::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "faults.ring", output = ())]
    pub struct Ring {
        pub who: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "faults.rang", external)]
    pub struct Rang {
        pub who: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
    pub struct Bell {
        #[aggregate(id)]
        pub who: String,
        pub version: u64,
        #[serde(skip)]
        pub events: Events,
    }

    #[derive(UnitOfWork)]
    pub struct BellUow {
        tx: UowTransaction,
        bells: IdentityMap<Bell>,
    }

    #[command_handler]
    async fn ring(cmd: Ring, uow: &mut BellUow) -> Result<(), BoxError> {
        let mut bell = Bell {
            who: cmd.who.clone(),
            version: 0,
            events: Events::new(),
        };
        bell.events.raise(Rang { who: cmd.who });
        uow.bells().add(bell)?;
        uow.commit().await?;
        Ok(())
    }
}

/// A service on eda's host that only publishes (it handles nothing, so it
/// consumes nothing), on the world's exchange: its address, and what stops
/// it.
struct PublishOnly {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<(), eda_core::host::HostError>>,
    dir: std::path::PathBuf,
}

impl PublishOnly {
    async fn start(world: &World) -> PublishOnly {
        use eda_core::host::{Host, HostConfig};
        let dir = std::env::temp_dir().join(unique_name("publish-only"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sqlite://{}", dir.join("publisher.db").display());
        let queue = unique_name("publisher");
        let config = HostConfig::from_lookup("publisher", 0, |name| match name {
            "DATABASE_URL" => Some(db.clone()),
            "AMQP_URL" => Some(eda_core::testing::amqp_url()),
            "EDA_EXCHANGE" => Some(world.exchange.clone()),
            "EDA_QUEUE" => Some(queue.clone()),
            _ => None,
        })
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let run = tokio::spawn(
            Host::new(config)
                // A scope with no handler: nothing to consume.
                .bus(|bus| bus.scope("faults::publish_only"))
                .router(|_| axum::Router::new())
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    move |address| {
                        let _ = address_tx.send(address);
                    },
                ),
        );
        let address = match tokio::time::timeout(Duration::from_secs(30), address_rx)
            .await
            .expect("the publisher starts")
        {
            Ok(address) => address,
            Err(_) => panic!("the publisher stopped: {:?}", run.await),
        };
        PublishOnly {
            base: format!("http://127.0.0.1:{}", address.port()),
            stop,
            run,
            dir,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Readiness tells the truth about the broker: `503`, naming it, while
/// RabbitMQ is stopped, and `200` again within seconds once it is back,
/// for a service that consumes and for one that only publishes; liveness
/// stays `200` throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker() {
    let _exclusive = BROKER.write().await;
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let publisher = PublishOnly::start(&world).await;
    let (_, body) = ready_becomes(&service.base, 200, Duration::from_secs(30)).await;
    assert_eq!(body["status"], "ready", "{body}");
    for check in ["database", "broker", "consumer", "outbox"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    let (_, body) = ready_becomes(&publisher.base, 200, Duration::from_secs(30)).await;
    assert_eq!(body["checks"]["broker"]["ok"], true, "{body}");

    if !rabbitmqctl(&["stop_app"]) {
        return;
    }
    let (to_unready, body) = ready_becomes(&service.base, 503, Duration::from_secs(30)).await;
    let (_, publisher_body) = ready_becomes(&publisher.base, 503, Duration::from_secs(30)).await;
    let (live, _) = service.get("/health/live").await;
    let back = Instant::now();
    let restarted = rabbitmqctl(&["start_app"]) && rabbitmqctl(&["await_startup"]);
    assert!(restarted, "the broker came back");
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(body["checks"]["broker"]["ok"], false, "{body}");
    assert!(
        body["checks"]["broker"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "readiness says what is wrong with the broker: {body}"
    );
    assert_eq!(body["checks"]["database"]["ok"], true, "{body}");
    assert_eq!(live, 200, "the process still serves");

    assert_eq!(
        publisher_body["checks"]["broker"]["ok"], false,
        "a service that only publishes: {publisher_body}"
    );

    let (_, body) = ready_becomes(&service.base, 200, Duration::from_secs(60)).await;
    assert_eq!(body["checks"]["consumer"]["state"], "consuming", "{body}");
    let (to_ready, _) = ready_becomes(&publisher.base, 200, Duration::from_secs(60)).await;
    println!(
        "readiness of a service that only publishes: 200 again {:.1} s after the consumer's",
        to_ready.as_secs_f64()
    );
    publisher.stop().await;
    println!(
        "readiness: 503 {:.1} s after the broker stopped, 200 {:.1} s after `start_app` (the broker itself took most of it)",
        to_unready.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    assert_eq!(service.terminate().await, 0);
}
