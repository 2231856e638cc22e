//! `consume`: `n` events waiting in a queue, consumed, handled (one row
//! inserted) with the inbox, acknowledged.
//!
//! - eda: [`RabbitMq::consumer`](eda_core::adapters::rabbitmq::RabbitMq::consumer)
//!   on the service queue (prefetch `max(32, C)`, concurrency `C`); per
//!   message the bus decodes `Placed`, begins a transaction, records the
//!   message in `eda_inbox`, runs the handler (one `INSERT`), commits; the
//!   consumer then acknowledges.
//! - baseline: lapin by hand, with the same prefetch and concurrency
//!   (`basic_qos`, `basic_consume`, a semaphore of `C` permits, a task per
//!   delivery): parse the message id and the JSON body, begin,
//!   `INSERT … ON CONFLICT DO NOTHING` into an inbox table of the same shape,
//!   the same row `INSERT` if new, commit, `basic_ack`.
//!
//! Both queues are filled with the same messages (eda's properties: id,
//! type, timestamps) before each run, untimed. A run is timed from when its
//! consumer consumes (after eda's has declared its topology, and the
//! baseline's opened its channel) until the last message was acknowledged.
//!
//! **Queue types.** All of it runs twice in each round, on classic queues
//! and on quorum ones: eda with [`RabbitMqOptions::queue_type`] (its service,
//! retry and dead-letter queues of that type, with its arguments), the
//! baseline's queue declared with `x-queue-type: quorum` or without it.
//! Each type has its row (`consume/classic`, `consume/quorum`: eda against
//! the baseline on the same type), and `consume/quorum vs classic` gives
//! eda's rate on quorum queues as a ratio of its rate on classic ones
//! (the goal: ≥ 0.7). The rounds alternate which type goes first.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eda_core::adapters::rabbitmq::{QueueType, RabbitMq, RabbitMqOptions, properties};
use eda_core::prelude::*;
use eda_core::sqlx::{self, PgConnection, PgPool};
use eda_core::testing::{TestPostgres, TestRabbitMq, amqp_url};
use eda_core::{ExternalMessage, Metadata};
use futures_core::Stream;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};
use uuid::Uuid;

use super::stock::err;
use crate::Args;
use crate::cpu::{self, Usage};
use crate::drive;
use crate::report::{Row, median, peak_rss_mb, process_peak_rss_mb, reset_peak_rss};

const PLACED: &str = "bench.placed";

/// An event another service published; this one consumes it.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.placed", external)]
pub(crate) struct Placed {
    seq: u64,
    sku: String,
    qty: i64,
}

#[derive(UnitOfWork)]
pub(crate) struct PlacedUow {
    tx: UowTransaction,
}

const INSERT_EDA: &str = "INSERT INTO bench_placed (seq, sku, qty) VALUES ($1, $2, $3)";
const INSERT_BASELINE: &str =
    "INSERT INTO bench_placed_baseline (seq, sku, qty) VALUES ($1, $2, $3)";

#[event_handler]
async fn record_placed(event: &Placed, uow: &mut PlacedUow) -> Result<(), BoxError> {
    let conn = uow
        .tx
        .connection::<PgConnection>()
        .ok_or("not on Postgres")?;
    sqlx::query(INSERT_EDA)
        .bind(event.seq as i64)
        .bind(&event.sku)
        .bind(event.qty)
        .execute(&mut *conn)
        .await?;
    uow.commit().await?;
    Ok(())
}

/// The baseline's handling of one delivery.
async fn handle_by_hand(pool: &PgPool, delivery: Delivery) -> Result<(), String> {
    let id: Uuid = delivery
        .properties
        .message_id()
        .as_ref()
        .ok_or("no message id")?
        .as_str()
        .parse()
        .map_err(err)?;
    let event: Placed = serde_json::from_slice(&delivery.data).map_err(err)?;
    let mut tx = pool.begin().await.map_err(err)?;
    let fresh = sqlx::query(
        "INSERT INTO bench_inbox (message_id, handler) VALUES ($1, 'record_placed') \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(err)?
    .rows_affected()
        == 1;
    if fresh {
        sqlx::query(INSERT_BASELINE)
            .bind(event.seq as i64)
            .bind(&event.sku)
            .bind(event.qty)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(err)?;
    Ok(())
}

/// The baseline consumer: takes exactly `n` deliveries, `concurrency` at a
/// time.
async fn consume_by_hand(
    connection: Arc<Connection>,
    pool: PgPool,
    queue: String,
    n: u64,
    (prefetch, concurrency): (u16, usize),
    consuming: Arc<AtomicBool>,
    handled: Arc<AtomicU64>,
) -> Result<(), String> {
    let channel = connection.create_channel().await.map_err(err)?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(err)?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    consuming.store(true, Ordering::SeqCst);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await.map_err(err)?;
        let delivery = poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx))
            .await
            .ok_or("the broker cancelled the consumer")?
            .map_err(err)?;
        let (pool, handled) = (pool.clone(), handled.clone());
        tasks.spawn(async move {
            let done = handle_by_hand(&pool, delivery).await;
            drop(permit);
            if done.is_ok() {
                handled.fetch_add(1, Ordering::Relaxed);
            }
            done
        });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(err)??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(err)??;
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// Publishes `n` `Placed` events straight to `queue`, confirmed.
async fn fill(channel: &Channel, queue: &str, first: u64, n: u64) -> Result<(), String> {
    let mut pending = Vec::new();
    for seq in first..first + n {
        let event = Placed {
            seq,
            sku: format!("sku-{}", seq % 1000),
            qty: 1,
        };
        let message = ExternalMessage {
            name: PLACED.into(),
            metadata: Metadata::new(),
            payload: serde_json::to_vec(&event).map_err(err)?,
            trace: Default::default(),
        };
        pending.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &message.payload,
                    properties(&message),
                )
                .await
                .map_err(err)?,
        );
        if pending.len() == 500 || seq + 1 == first + n {
            for confirm in pending.drain(..) {
                match confirm.await.map_err(err)? {
                    Confirmation::Ack(None) => {}
                    other => return Err(format!("filling {queue}: {other:?}")),
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn queue_len(channel: &Channel, queue: &str) -> Result<u64, String> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    Ok(u64::from(q.message_count()))
}

async fn count(pool: &PgPool, sql: &str, first: u64, n: u64) -> Result<u64, String> {
    let c: i64 = sqlx::query_scalar(sql)
        .bind(first as i64)
        .bind((first + n) as i64)
        .fetch_one(pool)
        .await
        .map_err(err)?;
    Ok(c as u64)
}

/// The queues of one type (of [`KINDS`], in order): eda's (with its retry
/// and dead-letter queues) and the baseline's.
struct Lane {
    rmq: TestRabbitMq,
    baseline_queue: String,
}

/// The arguments a hand-written service declares its queue of `kind`
/// with: `x-queue-type: quorum`, or none (classic, the broker's default).
pub(crate) fn queue_arguments(kind: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if kind == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}

/// Quorum queues must be durable, non-exclusive and not auto-deleted: so
/// are both types here.
pub(crate) fn queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// The queue types measured, in the order of their lanes.
pub(crate) const KINDS: [QueueType; 2] = [QueueType::Classic, QueueType::Quorum];

/// Classic first in odd rounds, quorum first in even ones: a drift of the
/// machine over the run weighs on both types alike.
pub(crate) fn lane_order(round: u64) -> [usize; 2] {
    if round % 2 == 1 { [0, 1] } else { [1, 0] }
}

struct Bench {
    pool: PgPool,
    bus: MessageBus,
    /// Classic, then quorum.
    lanes: Vec<Lane>,
    connection: Arc<Connection>,
    /// Fills the queues (confirm mode) and counts their messages.
    admin: Channel,
    prefetch: u16,
    concurrency: usize,
    next_seq: u64,
}

impl Bench {
    async fn eda(&mut self, lane: usize, label: &str, n: u64) -> Result<(f64, Usage), String> {
        let first = self.next_seq;
        self.next_seq += n;
        let rmq = &self.lanes[lane].rmq;
        let queue = rmq.options().consumer().queue_name().to_owned();
        fill(&self.admin, &queue, first, n).await?;
        let inbox_before: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_inbox")
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;

        let (rate, cpu) = consume_n(&rmq.rabbitmq, self.bus.clone(), label, n).await?;

        let rows = count(
            &self.pool,
            "SELECT count(*) FROM bench_placed WHERE seq >= $1 AND seq < $2",
            first,
            n,
        )
        .await?;
        let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_inbox")
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        let left = queue_len(&self.admin, &queue).await?;
        let dead = queue_len(&self.admin, &rmq.options().consumer().dead_letter_queue()).await?;
        if rows != n || (inbox - inbox_before) as u64 != n || left != 0 || dead != 0 {
            return Err(format!(
                "{label}: {rows} rows and {} inbox rows for {n} messages; {left} left in the \
                 queue, {dead} dead-lettered",
                inbox - inbox_before
            ));
        }
        Ok((rate, cpu))
    }

    async fn baseline(&mut self, lane: usize, label: &str, n: u64) -> Result<(f64, Usage), String> {
        let first = self.next_seq;
        self.next_seq += n;
        let baseline_queue = &self.lanes[lane].baseline_queue;
        fill(&self.admin, baseline_queue, first, n).await?;
        let handled = Arc::new(AtomicU64::new(0));
        let consuming = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consume_by_hand(
            self.connection.clone(),
            self.pool.clone(),
            baseline_queue.clone(),
            n,
            (self.prefetch, self.concurrency),
            consuming.clone(),
            handled.clone(),
        ));
        let started = match started(move || consuming.load(Ordering::SeqCst)).await {
            Ok(started) => started,
            Err(e) => {
                task.abort();
                return Err(e);
            }
        };
        let before = cpu::sample();
        let progress = handled.clone();
        let end = drive::wait_for(
            label,
            n,
            Duration::from_secs(300),
            move || progress.load(Ordering::Relaxed),
            || None,
        )
        .await;
        let cpu = cpu::sample().since(&before, n);
        let consumed = task.await.map_err(err)?;
        let end = end?;
        consumed?;

        let rows = count(
            &self.pool,
            "SELECT count(*) FROM bench_placed_baseline WHERE seq >= $1 AND seq < $2",
            first,
            n,
        )
        .await?;
        let left = queue_len(&self.admin, baseline_queue).await?;
        if rows != n || left != 0 {
            return Err(format!(
                "{label}: {rows} rows for {n} messages; {left} left in the queue"
            ));
        }
        Ok((n as f64 / (end - started).as_secs_f64(), cpu))
    }
}

/// Runs eda's consumer on `bus` until it has handled `n` messages, then
/// stops it: the rate from the moment it consumed, and the CPU it took. An
/// error if a message is retried or dead-lettered, or after five minutes.
pub(crate) async fn consume_n(
    rabbitmq: &RabbitMq,
    bus: MessageBus,
    label: &str,
    n: u64,
) -> Result<(f64, Usage), String> {
    let consumer = rabbitmq.consumer(bus);
    let metrics = consumer.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    let consuming = metrics.clone();
    let started = started(move || consuming.consuming()).await?;
    let before = cpu::sample();
    let (handled, problems) = (metrics.clone(), metrics);
    let end = drive::wait_for(
        label,
        n,
        Duration::from_secs(300),
        move || handled.handled(),
        move || {
            (problems.retried() + problems.dead_lettered() > 0).then(|| {
                format!(
                    "{} retried, {} dead-lettered",
                    problems.retried(),
                    problems.dead_lettered()
                )
            })
        },
    )
    .await;
    let cpu = cpu::sample().since(&before, n);
    // Stopped whether the wait succeeded or not.
    let _ = stop.send(());
    task.await.map_err(err)?.map_err(err)?;
    Ok((n as f64 / (end? - started).as_secs_f64(), cpu))
}

/// When `consuming()` turned true (polled every millisecond): the timed
/// part of a run starts once a consumer consumes, after its set-up (eda's
/// declares its topology, the baseline only opens a channel).
pub(crate) async fn started(consuming: impl Fn() -> bool) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !consuming() {
        if Instant::now() > deadline {
            return Err("the consumer did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Instant::now())
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(5000);
    let concurrency = args.concurrency.unwrap_or(8);
    let rounds = args.rounds.unwrap_or(2);
    let prefetch = concurrency.max(32).min(u16::MAX as usize) as u16;
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    for sql in [
        "CREATE TABLE bench_placed (seq BIGINT PRIMARY KEY, sku TEXT NOT NULL, qty BIGINT NOT NULL)",
        "CREATE TABLE bench_placed_baseline (LIKE bench_placed INCLUDING ALL)",
        "CREATE TABLE bench_inbox (LIKE eda_inbox INCLUDING ALL)",
    ] {
        sqlx::query(sql).execute(pg.pool()).await.map_err(err)?;
    }
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(pg.db.clone())
        .build()
        .map_err(err)?;

    let connection = Arc::new(
        Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .map_err(err)?,
    );
    let admin = connection.create_channel().await.map_err(err)?;
    admin
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err)?;
    let mut bench = Bench {
        pool: pg.pool().clone(),
        bus,
        lanes: Vec::new(),
        connection,
        admin,
        prefetch,
        concurrency,
        next_seq: 0,
    };
    let declared = declare_lanes(&mut bench).await;
    let measured = match declared {
        Ok(()) => measure(&mut bench, n, rounds).await,
        Err(e) => Err(e),
    };

    let Bench {
        lanes,
        admin,
        connection,
        ..
    } = bench;
    for lane in lanes {
        let _ = admin
            .queue_delete(lane.baseline_queue.as_str().into(), Default::default())
            .await;
        lane.rmq.cleanup().await;
    }
    let _ = connection.close(200, "done".into()).await;
    pg.drop_schema().await;
    let [classic, quorum] = measured?;

    let rate = |runs: &[(f64, Usage)]| median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
    let cpu_of = |runs: &[(f64, Usage)]| Usage::mean(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
    let row = |m: &Measured| {
        let (eda, baseline) = (rate(&m.edas), rate(&m.baselines));
        Row {
            scenario: format!("consume/{}", m.kind),
            n,
            concurrency,
            eda_per_sec: eda,
            baseline_per_sec: baseline,
            ratio_vs_baseline: eda / baseline,
            peak_rss_mb: process_peak_rss_mb(),
            eda_peak_rss_mb: Some(m.eda_rss),
            note: format!(
                "{} queues (eda: RabbitMqOptions::queue_type(QueueType::{:?}); baseline: its queue declared \
                 {}); prefetch {prefetch}; baseline: lapin consume, a task per delivery \
                 ({concurrency} at a time), inbox INSERT … ON CONFLICT DO NOTHING + row INSERT \
                 in one sqlx transaction, then ack; median of {rounds} interleaved rounds. CPU: \
                 baseline {}; eda {}",
                m.kind,
                m.kind,
                if m.kind == QueueType::Quorum {
                    "with x-queue-type: quorum"
                } else {
                    "without x-queue-type"
                },
                cpu_of(&m.baselines).brief(),
                cpu_of(&m.edas).brief()
            ),
            ..Row::default()
        }
    };
    let rates = |runs: &[(f64, Usage)]| runs.iter().map(|r| r.0).collect::<Vec<_>>();
    Ok(vec![
        row(&classic),
        row(&quorum),
        quorum_vs_classic(
            "consume",
            n,
            concurrency,
            (&rates(&quorum.edas), &rates(&classic.edas)),
            (&rates(&quorum.baselines), &rates(&classic.baselines)),
            Some(classic.eda_rss.max(quorum.eda_rss)),
        ),
    ])
}

/// What one queue type's runs measured.
struct Measured {
    kind: QueueType,
    edas: Vec<(f64, Usage)>,
    baselines: Vec<(f64, Usage)>,
    /// The peak RSS over eda's runs.
    eda_rss: f64,
}

/// A classic lane and a quorum lane, each with eda's topology declared and
/// the baseline's queue; pushed as they are made, for the clean-up to find
/// them whatever fails.
async fn declare_lanes(bench: &mut Bench) -> Result<(), String> {
    let (prefetch, concurrency) = (bench.prefetch, bench.concurrency);
    for kind in KINDS {
        let Some(rmq) = TestRabbitMq::start_with(|o: RabbitMqOptions| {
            o.prefetch(prefetch)
                .concurrency(concurrency)
                .queue_type(kind)
        })
        .await
        else {
            return Err("RabbitMQ is not reachable (see AMQP_URL)".into());
        };
        let baseline_queue = format!("{}.baseline", rmq.options().consumer().queue_name());
        bench.lanes.push(Lane {
            rmq,
            baseline_queue: baseline_queue.clone(),
        });
        let rmq = &bench.lanes.last().expect("just pushed").rmq;
        rmq.rabbitmq
            .declare_topology(&bench.bus)
            .await
            .map_err(err)?;
        bench
            .admin
            .queue_declare(
                baseline_queue.as_str().into(),
                queue_options(),
                queue_arguments(kind),
            )
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// The warm-ups, then `rounds` rounds of baseline and eda on each type.
async fn measure(bench: &mut Bench, n: u64, rounds: u64) -> Result<[Measured; 2], String> {
    let mut measured = KINDS.map(|kind| Measured {
        kind,
        edas: Vec::new(),
        baselines: Vec::new(),
        eda_rss: 0.0,
    });
    let warm = (n / 10).clamp(100, 1000);
    for (lane, kind) in KINDS.into_iter().enumerate() {
        bench
            .baseline(lane, &format!("warm-up baseline ({kind})"), warm)
            .await?;
        bench
            .eda(lane, &format!("warm-up eda ({kind})"), warm)
            .await?;
    }
    for round in 1..=rounds {
        for lane in lane_order(round) {
            let m = &mut measured[lane];
            let kind = m.kind;
            m.baselines.push(
                bench
                    .baseline(lane, &format!("baseline {kind} {round}/{rounds}"), n)
                    .await?,
            );
            reset_peak_rss();
            m.edas.push(
                bench
                    .eda(lane, &format!("eda {kind} {round}/{rounds}"), n)
                    .await?,
            );
            m.eda_rss = m.eda_rss.max(peak_rss_mb());
        }
    }
    Ok(measured)
}

/// The row `<scenario>/quorum vs classic`: eda's rate on quorum queues
/// (`eda/s`) against its rate on classic ones (`baseline/s`), the medians'
/// ratio; each round's own ratio and the baseline's in the note. `eda` and
/// `baseline` are (quorum, classic) rates, round by round.
pub(crate) fn quorum_vs_classic(
    scenario: &str,
    n: u64,
    concurrency: usize,
    eda: (&[f64], &[f64]),
    baseline: (&[f64], &[f64]),
    eda_rss: Option<f64>,
) -> Row {
    let per_round = |(quorum, classic): (&[f64], &[f64])| {
        quorum
            .iter()
            .zip(classic)
            .map(|(q, c)| format!("{:.2}", q / c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (quorum, classic) = (median(eda.0), median(eda.1));
    let (b_quorum, b_classic) = (median(baseline.0), median(baseline.1));
    Row {
        scenario: format!("{scenario}/quorum vs classic"),
        n,
        concurrency,
        eda_per_sec: quorum,
        baseline_per_sec: classic,
        ratio_vs_baseline: quorum / classic,
        peak_rss_mb: process_peak_rss_mb(),
        eda_peak_rss_mb: eda_rss,
        note: format!(
            "eda on quorum queues (eda/s) against eda on classic ones (baseline/s), the ratio of \
             the medians (goal: ≥ 0.7); each round's ratio: {}. By hand, the same: quorum \
             {b_quorum:.0}/s, classic {b_classic:.0}/s, ratio {:.2} (rounds: {})",
            per_round(eda),
            b_quorum / b_classic,
            per_round(baseline),
        ),
        ..Row::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_declares_the_queue_type() {
        assert!(queue_arguments(QueueType::Classic).inner().is_empty());
        let quorum = queue_arguments(QueueType::Quorum);
        assert_eq!(
            quorum.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        let options = queue_options();
        assert!(options.durable && !options.exclusive && !options.auto_delete);
    }

    #[test]
    fn rounds_alternate_the_first_type() {
        assert_eq!(KINDS, [QueueType::Classic, QueueType::Quorum]);
        assert_eq!(lane_order(1), [0, 1]);
        assert_eq!(lane_order(2), [1, 0]);
        assert_eq!(lane_order(3), [0, 1]);
    }

    #[test]
    fn quorum_against_classic() {
        let row = quorum_vs_classic(
            "consume",
            10,
            8,
            (&[80.0, 90.0], &[100.0, 100.0]),
            (&[50.0, 70.0], &[100.0, 100.0]),
            Some(20.0),
        );
        assert_eq!(row.scenario, "consume/quorum vs classic");
        assert_eq!(row.eda_per_sec, 85.0);
        assert_eq!(row.baseline_per_sec, 100.0);
        assert!((row.ratio_vs_baseline - 0.85).abs() < 1e-9);
        assert!(row.note.contains("each round's ratio: 0.80, 0.90."));
        assert!(row.note.contains("ratio 0.60 (rounds: 0.50, 0.70)"));
    }
}
