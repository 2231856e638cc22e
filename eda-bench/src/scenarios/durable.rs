//! `durable`: allocate-like commands (see [`super::stock`]) on
//! Postgres, each of whose events must reach RabbitMQ, confirmed by the
//! broker. A run is measured from its first command until the broker
//! confirmed the last event.
//!
//! - eda: `bus.handle(Reserve { sku, seq })` on `C` workers (the handler:
//!   `SELECT` the stock, change it, raise `Reserved`; commit: `UPDATE …
//!   WHERE version`, outbox `INSERT`, `COMMIT`), and the [`OutboxRelay`]
//!   (default options) publishing the outbox to a topic exchange through
//!   [`RabbitMq::publisher`](eda_core::adapters::rabbitmq::RabbitMq::publisher):
//!   persistent messages, mandatory, publisher confirms.
//! - baseline: per command, by hand, the same two statements as the
//!   `database` baseline in one sqlx transaction (`UPDATE … qty = qty - 1
//!   RETURNING qty`, outbox `INSERT`, `COMMIT`), then a lapin
//!   `basic_publish` of the event (persistent, mandatory, the same
//!   properties but the eda headers) on one confirm channel shared by the
//!   workers, awaiting its confirm.
//! - limit: the baseline's transactions and nothing else (Postgres alone).
//!
//! Every message goes to the same durable queue, bound to `bench.reserved`
//! (checked, then purged, after each run).
//!
//! **When was an event confirmed?** The relay is given a [`Publisher`] that
//! wraps eda's and notes, for each message of a batch, the instant the
//! wrapped `publish` returned: when the broker had confirmed that message
//! and every one before it in the batch (they are pipelined, so each
//! message's own confirm came between the batch's start and that instant).
//! A message's latency so measured overstates the truth by at most its
//! batch's publishing time; the note gives that bound, and the p99 that one
//! gets by taking the batch's start instead (a lower bound). Outbox rows are
//! matched to commands by the `seq` in their payload, after the run. The
//! wrapper costs one `Instant::now()` and a copy of the message ids per
//! batch. (Counting arrivals at a consumer instead would time the broker's
//! delivery, which can come before its confirm.)
//!
//! After the closed-loop rounds, eda runs again paced at half its measured
//! rate (`--rate` to choose), and so does the baseline, latencies counted
//! from when each command was due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda_core::adapters::postgres::PostgresDatabase;
use eda_core::backend::{BoxFuture, OutboxStore, Publisher};
use eda_core::backend::{Delivery, OutboxEntry};
use eda_core::prelude::*;
use eda_core::sqlx::{self, PgPool};
use eda_core::testing::{TestPostgres, TestRabbitMq, amqp_url};
use eda_core::{Error, ExternalMessage, OutboxRelay, RelayOptions};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use uuid::Uuid;

use super::stock::{self, RESERVED, err};
use crate::Args;
use crate::cpu::{self, Usage};
use crate::drive::{self, Run};
use crate::report::{Row, median, peak_rss_mb, percentile_ms, process_peak_rss_mb, reset_peak_rss};

/// One batch the relay published.
#[derive(Clone, Copy, Debug)]
struct Batch {
    start: Instant,
    end: Instant,
    /// Messages confirmed.
    size: usize,
}

/// The relay's publisher, noting when each message was confirmed.
struct Confirms {
    inner: Arc<dyn Publisher>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Messages the broker could not route, and failed batches: there
    /// should be none.
    unroutable: u64,
    failures: u64,
    batches: Vec<Batch>,
    /// A message, and the batch it was confirmed in.
    messages: Vec<(Uuid, usize)>,
}

impl Publisher for Confirms {
    fn publish<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, (Vec<Delivery>, Option<Error>)> {
        Box::pin(async move {
            let start = Instant::now();
            let (deliveries, error) = self.inner.publish(messages).await;
            let end = Instant::now();
            let mut seen = self.seen.lock().expect("not poisoned");
            let batch = seen.batches.len();
            seen.batches.push(Batch {
                start,
                end,
                size: deliveries.len(),
            });
            seen.failures += u64::from(error.is_some());
            seen.unroutable += deliveries
                .iter()
                .filter(|d| **d == Delivery::Unroutable)
                .count() as u64;
            seen.messages.extend(
                messages[..deliveries.len()]
                    .iter()
                    .map(|m| (m.metadata.message_id.as_uuid(), batch)),
            );
            (deliveries, error)
        })
    }
}

impl Confirms {
    /// Why the relay's publishing went wrong, if it did.
    fn problem(&self) -> Option<String> {
        let seen = self.seen.lock().expect("not poisoned");
        (seen.unroutable + seen.failures > 0).then(|| {
            format!(
                "the relay's publishing failed {} time(s); {} message(s) unroutable",
                seen.failures, seen.unroutable
            )
        })
    }

    /// Where the records stand now: (batches, messages).
    fn mark(&self) -> (usize, usize) {
        let seen = self.seen.lock().expect("not poisoned");
        (seen.batches.len(), seen.messages.len())
    }
}

/// The outbox the relay reads (eda's, on Postgres), timing its reads and
/// its marks.
struct TimedStore {
    inner: PostgresDatabase,
    times: Mutex<StoreTimes>,
}

/// What the relay's reads of the outbox and marks of sent rows took, so far.
#[derive(Clone, Copy, Debug, Default)]
struct StoreTimes {
    reads: u64,
    reading: Duration,
    marks: u64,
    marking: Duration,
}

impl StoreTimes {
    /// (mean read, mean mark) in ms since `earlier`.
    fn means_since(&self, earlier: &StoreTimes) -> (f64, f64) {
        let mean = |total: Duration, before: Duration, n: u64| {
            (total - before).as_secs_f64() * 1000.0 / n.max(1) as f64
        };
        (
            mean(self.reading, earlier.reading, self.reads - earlier.reads),
            mean(self.marking, earlier.marking, self.marks - earlier.marks),
        )
    }
}

impl TimedStore {
    fn times(&self) -> StoreTimes {
        *self.times.lock().expect("not poisoned")
    }
}

impl OutboxStore for TimedStore {
    fn lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>> {
        self.inner.lease(holder, ttl)
    }

    fn release<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.release(holder)
    }

    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, Error>> {
        Box::pin(async move {
            let start = Instant::now();
            let rows = self.inner.unsent(limit).await;
            let mut times = self.times.lock().expect("not poisoned");
            times.reads += 1;
            times.reading += start.elapsed();
            rows
        })
    }

    fn mark_sent<'a>(&'a self, positions: &'a [i64]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let start = Instant::now();
            let marked = self.inner.mark_sent(positions).await;
            let mut times = self.times.lock().expect("not poisoned");
            times.marks += 1;
            times.marking += start.elapsed();
            marked
        })
    }

    fn defer<'a>(&'a self, rows: &'a [(i64, Duration)]) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.defer(rows)
    }

    fn committed(&self) -> Arc<tokio::sync::Notify> {
        self.inner.committed()
    }
}

/// Everything a round needs.
struct Bench {
    pool: PgPool,
    bus: MessageBus,
    store: Arc<TimedStore>,
    /// eda's relay, and the recording publisher it was given.
    relay: OutboxRelay,
    confirms: Arc<Confirms>,
    /// The baseline's confirm channel (its own connection).
    channel: Channel,
    /// Checks and purges the observer queue.
    admin: Channel,
    exchange: String,
    observer: String,
    concurrency: usize,
    /// The next command's sequence number.
    next_seq: u64,
}

/// A run and, for eda, what the broker's confirms say about it.
struct Measured {
    per_sec: f64,
    /// Sorted.
    latencies: Vec<Duration>,
    /// Sorted: each message's latency had it been confirmed when its batch
    /// started publishing (eda only).
    optimistic: Vec<Duration>,
    /// How the relay's batches went (eda only).
    batches: BatchStats,
    /// The CPU one command cost, everywhere.
    cpu: Usage,
    /// How fast the commands committed (for eda: before their events were
    /// all confirmed).
    committed_per_sec: f64,
    /// From the last commit to the last confirm (eda only).
    drain: Duration,
}

/// What the relay's batches of one run looked like.
#[derive(Debug, Default, Clone, Copy)]
struct BatchStats {
    count: usize,
    mean_size: f64,
    /// The longest a batch took to publish and be confirmed: the bound on
    /// the error of a message's confirm time.
    longest: Duration,
    /// Publishing time against batch size, least squares: per message, and
    /// fixed per batch, in ms.
    per_message_ms: f64,
    per_batch_ms: f64,
    /// Between the end of a batch and the start of the next: marking it
    /// sent, the lease, reading the next (and waiting for commits, if idle).
    mean_gap_ms: f64,
    /// Of which reading the outbox, and marking a batch sent, on average.
    mean_read_ms: f64,
    mean_mark_ms: f64,
}

impl BatchStats {
    fn of(batches: &[Batch]) -> Self {
        if batches.is_empty() {
            return BatchStats::default();
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let points: Vec<(f64, f64)> = batches
            .iter()
            .map(|b| (b.size as f64, ms(b.end - b.start)))
            .collect();
        let (per_message_ms, per_batch_ms) = fit(&points);
        let gaps: Vec<f64> = batches
            .windows(2)
            .map(|w| ms(w[1].start.saturating_duration_since(w[0].end)))
            .collect();
        BatchStats {
            count: batches.len(),
            mean_size: batches.iter().map(|b| b.size).sum::<usize>() as f64 / batches.len() as f64,
            longest: batches
                .iter()
                .map(|b| b.end - b.start)
                .max()
                .unwrap_or_default(),
            per_message_ms,
            per_batch_ms,
            mean_gap_ms: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
            mean_read_ms: 0.0,
            mean_mark_ms: 0.0,
        }
    }
}

/// The least-squares line through `(x, y)` points: `(slope, intercept)`;
/// a flat line through the mean when the x do not vary.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.is_empty() {
        return (0.0, 0.0);
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        return (0.0, my);
    }
    let slope = sxy / sxx;
    (slope, my - slope * mx)
}

impl Measured {
    fn from_run(run: &Run, cpu: Usage) -> Self {
        let mut latencies = run.latencies.clone();
        latencies.sort_unstable();
        Measured {
            per_sec: run.per_sec(),
            latencies,
            optimistic: Vec::new(),
            batches: BatchStats::default(),
            cpu,
            committed_per_sec: run.per_sec(),
            drain: Duration::ZERO,
        }
    }

    fn p(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }
}

fn properties(message_id: Uuid) -> BasicProperties {
    let id = message_id.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    BasicProperties::default()
        .with_message_id(id.clone().into())
        .with_type(RESERVED.into())
        .with_content_type("application/json".into())
        .with_correlation_id(id.into())
        .with_timestamp(now.as_secs())
        .with_delivery_mode(2)
}

/// The baseline: commit, then publish and await the confirm.
async fn commit_then_publish(
    pool: &PgPool,
    channel: &Channel,
    exchange: &str,
    seq: u64,
) -> Result<(), String> {
    let written = stock::two_statements(pool, seq).await?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            RESERVED.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &written.payload,
            properties(written.message_id),
        )
        .await
        .map_err(err)?
        .await
        .map_err(err)?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("the broker did not take the message: {other:?}")),
    }
}

impl Bench {
    fn seqs(&mut self, n: u64) -> u64 {
        let first = self.next_seq;
        self.next_seq += n;
        first
    }

    /// Events the relay published so far.
    fn published(&self) -> u64 {
        self.relay.metrics().published()
    }

    /// The observer queue holds `n` messages (then it is emptied).
    async fn check_observer(&self, label: &str, n: u64) -> Result<(), String> {
        let queue = self
            .admin
            .queue_declare(
                self.observer.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        if u64::from(queue.message_count()) != n {
            return Err(format!(
                "{label}: {} messages reached the broker, expected {n}",
                queue.message_count()
            ));
        }
        self.admin
            .queue_purge(self.observer.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn limit(&mut self, label: &str, n: u64, pace: Option<f64>) -> Result<Measured, String> {
        let first = self.seqs(n);
        let pool = self.pool.clone();
        let before = cpu::sample();
        let run = drive::run(label, n, self.concurrency, pace, move |i| {
            let pool = pool.clone();
            async move { stock::two_statements(&pool, first + i).await.map(|_| ()) }
        })
        .await?;
        Ok(Measured::from_run(&run, cpu::sample().since(&before, n)))
    }

    async fn baseline(
        &mut self,
        label: &str,
        n: u64,
        pace: Option<f64>,
    ) -> Result<Measured, String> {
        let first = self.seqs(n);
        let (pool, channel) = (self.pool.clone(), self.channel.clone());
        let exchange = Arc::new(self.exchange.clone());
        let before = cpu::sample();
        let run = drive::run(label, n, self.concurrency, pace, move |i| {
            let (pool, channel, exchange) = (pool.clone(), channel.clone(), exchange.clone());
            async move { commit_then_publish(&pool, &channel, &exchange, first + i).await }
        })
        .await?;
        let cpu = cpu::sample().since(&before, n);
        self.check_observer(label, n).await?;
        Ok(Measured::from_run(&run, cpu))
    }

    async fn eda(&mut self, label: &str, n: u64, pace: Option<f64>) -> Result<Measured, String> {
        let first = self.seqs(n);
        let confirms = self.confirms.clone();
        let published = self.published();
        let (batches_before, messages_before) = confirms.mark();
        let store_before = self.store.times();
        let bus = self.bus.clone();
        let before = cpu::sample();
        let run = drive::run(label, n, self.concurrency, pace, move |i| {
            let bus = bus.clone();
            async move {
                bus.handle(stock::command(first + i))
                    .await
                    .map(|_| ())
                    .map_err(err)
            }
        })
        .await?;
        // Until the broker confirmed every event, and the relay marked it.
        let (confirmed, problems) = (confirms.clone(), confirms.clone());
        drive::wait_for(
            &format!("{label}: confirms"),
            messages_before as u64 + n,
            Duration::from_secs(120),
            move || confirmed.seen.lock().expect("not poisoned").messages.len() as u64,
            move || problems.problem(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.published() < published + n {
            if Instant::now() > deadline {
                return Err(format!("{label}: the relay did not mark its rows sent"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let cpu = cpu::sample().since(&before, n);
        self.check_observer(label, n).await?;
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM eda_outbox WHERE sent_at IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
        if unsent != 0 {
            return Err(format!("{label}: {unsent} outbox rows not marked sent"));
        }

        // Which command each confirmed message came from.
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT message_id, (payload::jsonb->>'seq')::int8 AS seq FROM eda_outbox \
             WHERE (payload::jsonb->>'seq')::int8 BETWEEN $1 AND $2",
        )
        .bind(first as i64)
        .bind((first + n - 1) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let seq_of: HashMap<Uuid, u64> = rows.into_iter().map(|(id, s)| (id, s as u64)).collect();
        let seen = confirms.seen.lock().expect("not poisoned");
        let batches = &seen.batches[batches_before..];
        let mut confirmed: Vec<Option<Batch>> = vec![None; n as usize];
        for (id, batch) in &seen.messages[messages_before..] {
            if let Some(seq) = seq_of.get(id) {
                confirmed[(seq - first) as usize] = Some(seen.batches[*batch]);
            }
        }
        let mut latencies = Vec::with_capacity(n as usize);
        let mut optimistic = Vec::with_capacity(n as usize);
        let mut end = run.start;
        for (i, batch) in confirmed.iter().enumerate() {
            let batch = batch.ok_or(format!("{label}: no confirm seen for command {i}"))?;
            let from = run.start + run.starts[i];
            latencies.push(batch.end.saturating_duration_since(from));
            optimistic.push(batch.start.saturating_duration_since(from));
            end = end.max(batch.end);
        }
        latencies.sort_unstable();
        optimistic.sort_unstable();
        Ok(Measured {
            per_sec: n as f64 / (end - run.start).as_secs_f64(),
            latencies,
            optimistic,
            batches: {
                let (mean_read_ms, mean_mark_ms) = self.store.times().means_since(&store_before);
                BatchStats {
                    mean_read_ms,
                    mean_mark_ms,
                    ..BatchStats::of(batches)
                }
            },
            cpu,
            committed_per_sec: run.per_sec(),
            drain: end.saturating_duration_since(run.start + run.elapsed),
        })
    }
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(5000);
    let concurrency = args.concurrency.unwrap_or(8);
    let rounds = args.rounds.unwrap_or(2);
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    let Some(rmq) = TestRabbitMq::start().await else {
        return Err("RabbitMQ is not reachable (see AMQP_URL)".into());
    };
    stock::setup(pg.pool()).await?;
    let bus = MessageBus::builder()
        .scope(stock::SCOPE)
        .adapter(pg.db.clone())
        .build()
        .map_err(err)?;

    let exchange = rmq.options().consumer().exchange_name().to_owned();
    let observer = format!("{}.observer", rmq.options().consumer().queue_name());
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .map_err(err)?;
    let admin = connection.create_channel().await.map_err(err)?;
    admin
        .queue_declare(
            observer.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    admin
        .queue_bind(
            observer.as_str().into(),
            exchange.as_str().into(),
            RESERVED.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let channel = connection.create_channel().await.map_err(err)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err)?;

    let store = Arc::new(TimedStore {
        inner: pg.db.clone(),
        times: Mutex::new(StoreTimes::default()),
    });
    let confirms = Arc::new(Confirms {
        inner: rmq.rabbitmq.publisher(),
        seen: Mutex::new(Seen::default()),
    });
    let relay = OutboxRelay::spawn(store.clone(), confirms.clone(), RelayOptions::default());

    let mut bench = Bench {
        pool: pg.pool().clone(),
        bus,
        store,
        relay,
        confirms,
        channel,
        admin,
        exchange,
        observer,
        concurrency,
        next_seq: 0,
    };

    let warm = (n / 10).clamp(100, 1000);
    bench.limit("warm-up limit", warm, None).await?;
    bench.baseline("warm-up baseline", warm, None).await?;
    bench.eda("warm-up eda", warm, None).await?;

    let (mut limits, mut baselines, mut edas) = (Vec::new(), Vec::new(), Vec::new());
    let mut eda_rss: f64 = 0.0;
    for round in 1..=rounds {
        let label = |what: &str| format!("{what} {round}/{rounds}");
        limits.push(bench.limit(&label("limit"), n, None).await?);
        baselines.push(bench.baseline(&label("baseline"), n, None).await?);
        reset_peak_rss();
        edas.push(bench.eda(&label("eda"), n, None).await?);
        eda_rss = eda_rss.max(peak_rss_mb());
    }
    let per_sec = |m: &[Measured]| median(&m.iter().map(|m| m.per_sec).collect::<Vec<_>>());
    let p = |m: &[Measured], p: f64| median(&m.iter().map(|m| m.p(p)).collect::<Vec<_>>());

    let eda_max = per_sec(&edas);
    let rate = args.rate.unwrap_or(eda_max / 2.0);
    let paced_baseline = bench.baseline("paced baseline", n, Some(rate)).await?;
    reset_peak_rss();
    let paced = bench.eda("paced eda", n, Some(rate)).await?;
    eda_rss = eda_rss.max(peak_rss_mb());

    // Every command took its unit of stock; every eda event was confirmed.
    let commands = bench.next_seq;
    let taken = stock::units_taken(&bench.pool).await?;
    let published = bench.published();
    let eda_commands = warm + rounds * n + n;
    if taken as u64 != commands || published != eda_commands {
        return Err(format!(
            "work missing: {taken} units taken (expected {commands}), {published} events \
             published by the relay (expected {eda_commands})"
        ));
    }
    let Bench {
        relay,
        admin,
        observer,
        ..
    } = bench;
    relay.shutdown().await;
    let _ = admin
        .queue_delete(observer.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    rmq.cleanup().await;
    pg.drop_schema().await;

    let bounds = |m: &Measured| {
        let b = &m.batches;
        format!(
            "{} relay batches of {:.0} on average; publishing one took {:.2} ms + {:.3} ms per \
             message (least squares), {:.2} ms between batches on average (reading the \
             outbox {:.2} ms, marking a batch sent {:.2} ms); the longest took {:.1} ms: the \
             bound on the error; p99 if each message was confirmed when its batch started: \
             {:.2} ms",
            b.count,
            b.mean_size,
            b.per_batch_ms,
            b.per_message_ms,
            b.mean_gap_ms,
            b.mean_read_ms,
            b.mean_mark_ms,
            b.longest.as_secs_f64() * 1000.0,
            percentile_ms(&m.optimistic, 0.99),
        )
    };
    let limit_per_sec = per_sec(&limits);
    let cpu_of = |m: &[Measured]| Usage::mean(&m.iter().map(|m| m.cpu).collect::<Vec<_>>());
    let last = edas.last().expect("at least one round");
    Ok(vec![
        Row {
            scenario: "durable".into(),
            n,
            concurrency,
            eda_per_sec: eda_max,
            baseline_per_sec: per_sec(&baselines),
            ratio_vs_baseline: eda_max / per_sec(&baselines),
            limit_per_sec: Some(limit_per_sec),
            ratio_vs_limit: Some(eda_max / limit_per_sec),
            p50_ms: Some(p(&edas, 0.50)),
            p99_ms: Some(p(&edas, 0.99)),
            baseline_p50_ms: Some(p(&baselines, 0.50)),
            baseline_p99_ms: Some(p(&baselines, 0.99)),
            peak_rss_mb: process_peak_rss_mb(),
            eda_peak_rss_mb: Some(eda_rss),
            note: format!(
                "until the broker confirmed every event; baseline: UPDATE + outbox INSERT, \
                 commit, then lapin publish + await confirm, per command; limit: the same \
                 transactions, no publishing (p50 {:.2} ms, p99 {:.2} ms); latency: bus.handle \
                 (baseline: the transaction's begin) to the broker's confirm; median of \
                 {rounds} interleaved rounds. eda committed at {:.0}/s, its last event was \
                 confirmed {:.0} ms after its last commit. CPU: limit {}; baseline {}; eda {}. \
                 Last eda round: {}",
                p(&limits, 0.50),
                p(&limits, 0.99),
                median(&edas.iter().map(|m| m.committed_per_sec).collect::<Vec<_>>()),
                median(
                    &edas
                        .iter()
                        .map(|m| m.drain.as_secs_f64() * 1000.0)
                        .collect::<Vec<_>>()
                ),
                cpu_of(&limits).brief(),
                cpu_of(&baselines).brief(),
                cpu_of(&edas).brief(),
                bounds(last)
            ),
        },
        Row {
            scenario: "durable/paced".into(),
            n,
            concurrency,
            eda_per_sec: paced.per_sec,
            baseline_per_sec: paced_baseline.per_sec,
            ratio_vs_baseline: paced.per_sec / paced_baseline.per_sec,
            p50_ms: Some(paced.p(0.50)),
            p99_ms: Some(paced.p(0.99)),
            baseline_p50_ms: Some(paced_baseline.p(0.50)),
            baseline_p99_ms: Some(paced_baseline.p(0.99)),
            peak_rss_mb: process_peak_rss_mb(),
            eda_peak_rss_mb: Some(eda_rss),
            note: format!(
                "both paced at {rate:.0}/s{}; latency from when the command was due to the \
                 broker's confirm. CPU: baseline {}; eda {}. {}",
                if args.rate.is_some() {
                    ""
                } else {
                    " (half eda's rate)"
                },
                paced_baseline.cpu.brief(),
                paced.cpu.brief(),
                bounds(&paced)
            ),
            ..Row::default()
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_a_line() {
        let (slope, intercept) = fit(&[(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]);
        assert!((slope - 2.0).abs() < 1e-9 && (intercept - 1.0).abs() < 1e-9);
        assert_eq!(fit(&[(5.0, 2.0), (5.0, 4.0)]), (0.0, 3.0));
        assert_eq!(fit(&[]), (0.0, 0.0));
    }

    #[test]
    fn batch_statistics() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let batches = [
            Batch {
                start: t,
                end: t + ms(3),
                size: 1,
            },
            Batch {
                start: t + ms(5),
                end: t + ms(10),
                size: 2,
            },
        ];
        let s = BatchStats::of(&batches);
        assert_eq!(s.count, 2);
        assert_eq!(s.mean_size, 1.5);
        assert_eq!(s.longest, ms(5));
        assert!((s.per_message_ms - 2.0).abs() < 1e-6, "{s:?}");
        assert!((s.per_batch_ms - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s.mean_gap_ms - 2.0).abs() < 1e-6, "{s:?}");
    }
}
