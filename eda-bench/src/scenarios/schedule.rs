//! `schedule`: scheduled messages on Postgres (issue 15's goals), in two
//! schemas of the same database: one with no scheduled message pending, one
//! with [`PENDING`] (commands due in an hour, scheduled beforehand by
//! handlers, 1000 a unit of work, so never due during the run).
//!
//! - `schedule/relay, 100k pending`: the outbox relay's rate, eda's
//!   [`OutboxRelay`] draining `2n` committed outbox rows to a publisher that
//!   confirms and discards them ([`Discard`]), with the bus's scheduler
//!   running beside it (default options: a round every 250 ms), as in a
//!   service. "eda" is the schema with [`PENDING`] scheduled messages,
//!   "baseline" the one with none: the ratio is what they cost the relay.
//! - `schedule/idle round`: one round of the scheduler when nothing is due
//!   (`bus.deliver_due` returning 0), [`CALLS`] calls a round, with
//!   [`PENDING`] pending ("eda") and none ("baseline"); the rates are rounds
//!   per second, the latencies each call's. (On the empty table a
//!   connection caches a generic plan of the claim; against 100,000 rows'
//!   statistics Postgres keeps planning it afresh, a custom plan each call:
//!   that planning is most of the difference.) The note also times the
//!   host's gauge of the schedule (`Database::scheduled_rows`, which counts
//!   up to a million rows).
//! - `schedule/lateness` (and `…, 100k pending`): `bus.scheduler` with the
//!   default options delivering [`TICKS`] commands due over
//!   [`TICKS_SPREAD`]; each carries its due time, and its handler notes how
//!   long after it it ran. No baseline: what is measured is the latency.
//! - `schedule/deliver`: `n` commands due at once, each handled with a unit
//!   of work (so recorded in the inbox), delivered by one
//!   `bus.deliver_due`. Baseline: the same by hand with sqlx, on a copy of
//!   eda's table: claim 256 due rows (`UPDATE … RETURNING` of the ids a
//!   `SELECT … FOR UPDATE SKIP LOCKED` put in an `ARRAY(…)`), each one
//!   decoded and handled in a transaction that records it in an inbox, then
//!   the batch deleted. Before the burst, both polled their empty table as
//!   often (the idle rounds), on the same pool.
//!
//! The claim's form, `… WHERE message_id = ANY(ARRAY(SELECT … LIMIT 256
//! FOR UPDATE SKIP LOCKED))`, eda's and the baseline's: this scenario found
//! that eda's first form, `… WHERE message_id IN (SELECT …)`, went wrong on
//! a connection that had run it on an empty table (a schedule idle most of
//! the time, its statistics those of an empty table): the generic plan it
//! keeps joins the table to the subquery with a nested loop, running the
//! subquery again for every row, so that once many were due each claim
//! took seconds and more rows than its batch (eda at 0.43–0.52 of the
//! baseline). The `ARRAY(…)` subquery runs once whatever the plan
//! (`eda-core/tests/schedule.rs` checks a claim's limit after idle polls).
//!
//! Both schemas' tables are analyzed once filled (`pending`'s with its
//! 100,000 rows, `none`'s empty), as autovacuum would have in a service, and
//! autovacuum is then turned off for them, so that every run plans with the
//! same statistics. The relay and idle-round variants run in
//! `2R + 1` interleaved rounds (they are short), eda and its baseline for
//! `schedule/deliver` in `R` (default 2), which of them goes first
//! alternating; the median of each is kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eda_core::backend::{BoxFuture, Database, Delivery, Publisher};
use eda_core::prelude::*;
use eda_core::sqlx::{self, PgPool};
use eda_core::testing::TestPostgres;
use eda_core::{Error, ExternalMessage, OutboxRelay, RelayOptions, SchedulerOptions};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::stock::err;
use crate::Args;
use crate::cpu::{self, Usage};
use crate::drive;
use crate::report::{Row, median, peak_rss_mb, percentile_ms, process_peak_rss_mb, reset_peak_rss};

/// Scheduled messages pending in the second schema.
const PENDING: u64 = 100_000;
/// Messages one unit of work schedules when filling the schedule.
const PER_UOW: u64 = 1000;
/// Idle scheduler rounds timed per round of the benchmark.
const CALLS: usize = 200;
/// Commands whose lateness is measured, and the time their due times span.
const TICKS: u64 = 200;
const TICKS_SPREAD: Duration = Duration::from_secs(3);
/// The name of the relayed rows (no handler here: only the relay reads them).
const RELAYED: &str = "bench.schedule.relayed";
/// The baseline's batch and lease: eda's defaults.
const BATCH: usize = 256;
const LEASE_MS: i64 = 30_000;

/// Schedules `count` messages, numbered from `first`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.schedule.batch")]
pub(crate) struct ScheduleBatch {
    first: u64,
    count: u64,
    what: What,
}

/// What a [`ScheduleBatch`] schedules.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum What {
    /// [`Later`]s, due in an hour.
    Later,
    /// [`Fire`]s, due now.
    Fire,
    /// [`Tick`]s, due evenly from `from_ms` (milliseconds since the epoch)
    /// over `spread_ms`.
    Ticks { from_ms: u64, spread_ms: u64 },
}

/// A command that stays pending for the whole run.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.schedule.later")]
pub(crate) struct Later {
    seq: u64,
}

/// A command due at once, handled with a unit of work.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.schedule.fire")]
pub(crate) struct Fire {
    seq: u64,
}

/// A command that knows when it was due.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.schedule.tick")]
pub(crate) struct Tick {
    due_ms: u64,
}

/// A unit of work with nothing but its transaction: its commit writes what
/// it scheduled, or (for a command delivered by the scheduler) its inbox
/// row.
#[derive(UnitOfWork)]
pub(crate) struct PlainUow {
    tx: UowTransaction,
}

/// [`Later`]s delivered: there must be none.
static LATER: AtomicU64 = AtomicU64::new(0);
/// [`Fire`]s handled by eda, and by the baseline.
static FIRED: AtomicU64 = AtomicU64::new(0);
static BASELINE_FIRED: AtomicU64 = AtomicU64::new(0);
/// How late each [`Tick`] ran.
static LATENESS: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

/// Schedules what the [`ScheduleBatch`] says, in one unit of work.
#[command_handler]
async fn schedule_batch(cmd: ScheduleBatch, uow: &mut PlainUow) -> Result<(), BoxError> {
    for seq in cmd.first..cmd.first + cmd.count {
        match cmd.what {
            What::Later => uow.schedule(Later { seq }, Duration::from_secs(3600))?,
            What::Fire => uow.schedule(Fire { seq }, Duration::ZERO)?,
            What::Ticks { from_ms, spread_ms } => {
                let due_ms = from_ms + spread_ms * (seq - cmd.first) / cmd.count.max(1);
                uow.schedule_at(Tick { due_ms }, UNIX_EPOCH + Duration::from_millis(due_ms))?
            }
        };
    }
    uow.commit().await?;
    Ok(())
}

/// Never called: a [`Later`] is due after the run.
#[command_handler]
async fn later(cmd: Later) -> Result<(), BoxError> {
    std::hint::black_box(cmd.seq);
    LATER.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// What handling a [`Fire`] does, in eda and in the baseline.
fn handle_fire(fire: &Fire, handled: &AtomicU64) {
    std::hint::black_box(fire.seq);
    handled.fetch_add(1, Ordering::Relaxed);
}

/// eda's handler of a [`Fire`]: [`handle_fire`], and the commit (which
/// writes the inbox row).
#[command_handler]
async fn fire(cmd: Fire, uow: &mut PlainUow) -> Result<(), BoxError> {
    handle_fire(&cmd, &FIRED);
    uow.commit().await?;
    Ok(())
}

/// Notes how late the [`Tick`] is.
#[command_handler]
async fn tick(cmd: Tick) -> Result<(), BoxError> {
    let due = UNIX_EPOCH + Duration::from_millis(cmd.due_ms);
    // Never early (a claim takes what is due by the same clock): 0 if so.
    let late = SystemTime::now().duration_since(due).unwrap_or_default();
    LATENESS.lock().expect("not poisoned").push(late);
    Ok(())
}

/// A broker that confirms every message at once and keeps none: what is
/// left is the relay's own work (reading the rows, marking them sent).
#[derive(Debug, Default)]
struct Discard {
    received: AtomicU64,
}

impl Publisher for Discard {
    fn publish<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, (Vec<Delivery>, Option<Error>)> {
        self.received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Box::pin(std::future::ready((
            vec![Delivery::Confirmed; messages.len()],
            None,
        )))
    }
}

/// One schema, its bus, and its scheduler when one runs.
struct Schema {
    pg: TestPostgres,
    bus: MessageBus,
    scheduler: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Schema {
    /// A fresh schema, and a bus on it with this module's handlers.
    async fn start() -> Result<Self, String> {
        let Some(pg) = TestPostgres::start().await else {
            return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
        };
        let bus = MessageBus::builder()
            .scope(module_path!())
            .adapter(pg.db.clone())
            .build()
            .map_err(err)?;
        Ok(Schema {
            pg,
            bus,
            scheduler: None,
        })
    }

    /// Its pool.
    fn pool(&self) -> &PgPool {
        self.pg.pool()
    }

    /// Scheduled rows, counted up to a million.
    async fn pending(&self) -> Result<u64, String> {
        Ok(self
            .pg
            .db
            .scheduled_rows(1_000_000)
            .await
            .map_err(err)?
            .pending)
    }

    /// Schedules `count` messages, [`PER_UOW`] a unit of work, 4 at a time.
    async fn schedule(
        &self,
        label: &str,
        first: u64,
        count: u64,
        what: What,
    ) -> Result<(), String> {
        let bus = self.bus.clone();
        drive::run(label, count.div_ceil(PER_UOW), 4, None, move |i| {
            let bus = bus.clone();
            let from = first + i * PER_UOW;
            let n = PER_UOW.min(first + count - from);
            async move {
                bus.handle(ScheduleBatch {
                    first: from,
                    count: n,
                    what,
                })
                .await
                .map_err(err)
            }
        })
        .await
        .map(|_| ())
    }

    /// Starts `bus.scheduler` with the default options.
    fn start_scheduler(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.bus.scheduler(SchedulerOptions::default(), async {
            let _ = stopped.await;
        }));
        self.scheduler = Some((stop, task));
    }

    /// Stops the scheduler, if one runs, and waits for it.
    async fn stop_scheduler(&mut self) -> Result<(), String> {
        if let Some((stop, task)) = self.scheduler.take() {
            let _ = stop.send(());
            task.await.map_err(err)?;
        }
        Ok(())
    }

    /// Commits `n` outbox rows, then times the relay until it published
    /// them all: messages per second.
    async fn relay(&self, label: &str, n: u64) -> Result<f64, String> {
        sqlx::query(
            "INSERT INTO eda_outbox (message_id, name, payload, correlation_id, created_at) \
             SELECT gen_random_uuid(), $1, '{\"seq\":' || i || '}', gen_random_uuid(), now() \
             FROM generate_series(1, $2) AS i",
        )
        .bind(RELAYED)
        .bind(n as i64)
        .execute(self.pool())
        .await
        .map_err(err)?;
        let publisher = Arc::new(Discard::default());
        let start = Instant::now();
        let relay = OutboxRelay::spawn(
            Arc::new(self.pg.db.clone()),
            publisher.clone(),
            RelayOptions::default(),
        );
        let metrics = relay.metrics();
        let failures = relay.metrics();
        let end = drive::wait_for(
            label,
            n,
            Duration::from_secs(120),
            move || metrics.published(),
            move || (failures.failures() > 0).then(|| "the relay failed".to_owned()),
        )
        .await?;
        relay.shutdown().await;
        let received = publisher.received.load(Ordering::Relaxed);
        if received != n {
            return Err(format!(
                "{label}: {received} messages published, expected {n}"
            ));
        }
        Ok(n as f64 / (end - start).as_secs_f64())
    }

    /// [`CALLS`] scheduler rounds with nothing due, each timed.
    async fn idle_rounds(&self) -> Result<Vec<Duration>, String> {
        let options = SchedulerOptions::default();
        let mut times = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let start = Instant::now();
            let delivered = self.bus.deliver_due(&options).await.map_err(err)?;
            times.push(start.elapsed());
            if delivered != 0 {
                return Err(format!("an idle round delivered {delivered} messages"));
            }
        }
        Ok(times)
    }

    /// The scheduler delivering [`TICKS`] commands due over
    /// [`TICKS_SPREAD`]: how late each ran, sorted.
    async fn lateness(&mut self, label: &str) -> Result<Vec<Duration>, String> {
        LATENESS.lock().expect("not poisoned").clear();
        let from = SystemTime::now() + Duration::from_millis(500);
        let from_ms = from.duration_since(UNIX_EPOCH).map_err(err)?.as_millis() as u64;
        self.bus
            .handle(ScheduleBatch {
                first: 0,
                count: TICKS,
                what: What::Ticks {
                    from_ms,
                    spread_ms: TICKS_SPREAD.as_millis() as u64,
                },
            })
            .await
            .map_err(err)?;
        self.start_scheduler();
        drive::wait_for(
            label,
            TICKS,
            TICKS_SPREAD + Duration::from_secs(30),
            || LATENESS.lock().expect("not poisoned").len() as u64,
            || None,
        )
        .await?;
        self.stop_scheduler().await?;
        let mut late = std::mem::take(&mut *LATENESS.lock().expect("not poisoned"));
        if late.len() as u64 != TICKS {
            return Err(format!(
                "{label}: {} ticks ran, expected {TICKS}",
                late.len()
            ));
        }
        late.sort_unstable();
        Ok(late)
    }

    /// `n` [`Fire`]s due now, numbered from `first`; then one
    /// `deliver_due`, timed: messages per second.
    async fn deliver(&self, first: u64, n: u64) -> Result<f64, String> {
        self.schedule("schedule: fires", first, n, What::Fire)
            .await?;
        let before = FIRED.load(Ordering::Relaxed);
        let progress = drive::Progress::start("schedule: eda delivers", n, move || {
            FIRED.load(Ordering::Relaxed) - before
        });
        let start = Instant::now();
        let delivered = self
            .bus
            .deliver_due(&SchedulerOptions::default())
            .await
            .map_err(err)?;
        let elapsed = start.elapsed();
        drop(progress);
        let handled = FIRED.load(Ordering::Relaxed) - before;
        if delivered as u64 != n || handled != n {
            return Err(format!(
                "eda delivered {delivered} and handled {handled} of {n}"
            ));
        }
        Ok(n as f64 / elapsed.as_secs_f64())
    }
}

// ---- the same delivery, by hand ----

/// A copy of eda's table of scheduled messages (and its index), and an inbox.
async fn baseline_setup(pool: &PgPool) -> Result<(), String> {
    for sql in [
        "CREATE TABLE bench_scheduled (LIKE eda_scheduled INCLUDING ALL)",
        "CREATE TABLE bench_inbox (LIKE eda_inbox INCLUDING ALL)",
    ] {
        sqlx::query(sql).execute(pool).await.map_err(err)?;
    }
    Ok(())
}

/// Now, in milliseconds since the epoch (the unit of eda's columns).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `n` rows as eda writes a [`Fire`] due now, numbered from `first`.
async fn baseline_schedule(pool: &PgPool, first: u64, n: u64) -> Result<(), String> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO bench_scheduled (message_id, name, payload, correlation_id, created_at, \
         due_at, next_at) \
         SELECT gen_random_uuid(), 'bench.schedule.fire', '{\"seq\":' || i || '}', \
         gen_random_uuid(), $3, $3, $3 FROM generate_series($1, $2) AS i",
    )
    .bind(first as i64)
    .bind((first + n - 1) as i64)
    .bind(now)
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// The baseline's claim: the due rows' ids taken in an `ARRAY(…)`
/// subquery (an init plan, run once per statement), then updated by id.
const CLAIM: &str = "UPDATE bench_scheduled SET next_at = $2, attempts = attempts + 1 \
                     WHERE message_id = ANY(ARRAY(SELECT message_id FROM bench_scheduled \
                     WHERE next_at <= $1 ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED)) \
                     RETURNING message_id, name, payload";

/// Claims due rows a batch at a time; handles each in a transaction that
/// records it in the inbox first (a redelivery is skipped); deletes the
/// batch. Returns how many it delivered.
async fn baseline_deliver(pool: &PgPool) -> Result<u64, String> {
    let mut delivered = 0;
    loop {
        let now = now_ms();
        let claimed: Vec<(Uuid, String, String)> = sqlx::query_as(CLAIM)
            .bind(now)
            .bind(now + LEASE_MS)
            .bind(BATCH as i64)
            .fetch_all(pool)
            .await
            .map_err(err)?;
        let mut done = Vec::with_capacity(claimed.len());
        for (id, name, payload) in &claimed {
            if name != "bench.schedule.fire" {
                return Err(format!("baseline: unexpected message {name}"));
            }
            let fire: Fire = serde_json::from_str(payload).map_err(err)?;
            let mut tx = pool.begin().await.map_err(err)?;
            let fresh = sqlx::query(
                "INSERT INTO bench_inbox (message_id, handler) VALUES ($1, 'fire') \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected()
                == 1;
            if fresh {
                handle_fire(&fire, &BASELINE_FIRED);
            }
            tx.commit().await.map_err(err)?;
            done.push(*id);
        }
        sqlx::query("DELETE FROM bench_scheduled WHERE message_id = ANY($1)")
            .bind(&done)
            .execute(pool)
            .await
            .map_err(err)?;
        delivered += done.len() as u64;
        if claimed.len() < BATCH {
            return Ok(delivered);
        }
    }
}

/// The baseline's scheduler polling its empty schedule, as eda's idle
/// rounds do: [`CALLS`] claims that find nothing (so that the two have the
/// same history of plans when many fall due).
async fn baseline_idle(pool: &PgPool) -> Result<(), String> {
    for _ in 0..CALLS {
        let delivered = baseline_deliver(pool).await?;
        if delivered != 0 {
            return Err(format!("an idle baseline round delivered {delivered}"));
        }
    }
    Ok(())
}

/// [`baseline_schedule`], then [`baseline_deliver`] timed: messages per
/// second.
async fn baseline(pool: &PgPool, first: u64, n: u64) -> Result<f64, String> {
    baseline_schedule(pool, first, n).await?;
    let before = BASELINE_FIRED.load(Ordering::Relaxed);
    let progress = drive::Progress::start("schedule: baseline delivers", n, move || {
        BASELINE_FIRED.load(Ordering::Relaxed) - before
    });
    let start = Instant::now();
    let delivered = baseline_deliver(pool).await?;
    let elapsed = start.elapsed();
    drop(progress);
    let handled = BASELINE_FIRED.load(Ordering::Relaxed) - before;
    if delivered != n || handled != n {
        return Err(format!(
            "the baseline delivered {delivered} and handled {handled} of {n}"
        ));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// The mean of `times`, in microseconds.
fn mean_us(times: &[Duration]) -> f64 {
    times.iter().sum::<Duration>().as_secs_f64() * 1e6 / times.len().max(1) as f64
}

/// Runs the scenario in two fresh schemas, dropped at the end whatever
/// happened.
pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let mut none = Schema::start().await?;
    let mut pending = match Schema::start().await {
        Ok(schema) => schema,
        Err(e) => {
            none.pg.drop_schema().await;
            return Err(e);
        }
    };
    let rows = measure(args, &mut none, &mut pending).await;
    let _ = none.stop_scheduler().await;
    let _ = pending.stop_scheduler().await;
    none.pg.drop_schema().await;
    pending.pg.drop_schema().await;
    rows
}

/// The scenario itself: `none` has no scheduled message pending,
/// `pending` gets [`PENDING`].
async fn measure(args: &Args, none: &mut Schema, pending: &mut Schema) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(10_000);
    let rounds = args.rounds.unwrap_or(2);
    // The relay's and the idle rounds' runs are short: more of them.
    let cheap_rounds = 2 * rounds + 1;
    let relay_rows = 2 * n;
    baseline_setup(none.pool()).await?;

    let start = Instant::now();
    pending
        .schedule("schedule: 100k pending", 0, PENDING, What::Later)
        .await?;
    let filled = start.elapsed();
    if pending.pending().await? != PENDING || none.pending().await? != 0 {
        return Err("the schedules are not as set up".into());
    }
    // The statistics autovacuum would have gathered in a service whose
    // schedule grew to this size, or emptied (a run is shorter than its
    // first look); then no autovacuum, so that every run plans the claims
    // with the same statistics.
    for (schema, tables) in [
        (&*none, &["eda_scheduled", "bench_scheduled"][..]),
        (&*pending, &["eda_scheduled"][..]),
    ] {
        for table in tables {
            for sql in [
                format!("ALTER TABLE {table} SET (autovacuum_enabled = false)"),
                format!("ANALYZE {table}"),
            ] {
                sqlx::query(&sql)
                    .execute(schema.pool())
                    .await
                    .map_err(err)?;
            }
        }
    }

    // Warm up the pools, the statement caches and the relay's path.
    let warm = (n / 10).clamp(100, 1000);
    for schema in [&*none, &*pending] {
        schema.relay("warm-up relay", warm).await?;
        schema.idle_rounds().await?;
    }
    baseline_idle(none.pool()).await?;

    // Goal 1: the relay with the scheduler beside it, and idle rounds;
    // which schema goes first alternates.
    let (mut relay_none, mut relay_pending) = (Vec::new(), Vec::new());
    let (mut idle_none, mut idle_pending) = (Vec::new(), Vec::new());
    let (mut idle_all_none, mut idle_all_pending) = (Vec::new(), Vec::new());
    for round in 1..=cheap_rounds {
        eprint!("\r\x1b[2Kschedule: relay and idle rounds {round}/{cheap_rounds}");
        for schema in [&mut *none, &mut *pending] {
            schema.start_scheduler();
        }
        let none_first = round % 2 == 1;
        if none_first {
            relay_none.push(none.relay("relay, none pending", relay_rows).await?);
        }
        relay_pending.push(pending.relay("relay, 100k pending", relay_rows).await?);
        if !none_first {
            relay_none.push(none.relay("relay, none pending", relay_rows).await?);
        }
        for schema in [&mut *none, &mut *pending] {
            schema.stop_scheduler().await?;
        }
        if none_first {
            let times = none.idle_rounds().await?;
            idle_none.push(mean_us(&times));
            idle_all_none.extend(times);
        }
        let times = pending.idle_rounds().await?;
        idle_pending.push(mean_us(&times));
        idle_all_pending.extend(times);
        if !none_first {
            let times = none.idle_rounds().await?;
            idle_none.push(mean_us(&times));
            idle_all_none.extend(times);
        }
        baseline_idle(none.pool()).await?;
    }
    eprint!("\r\x1b[2K");
    idle_all_none.sort_unstable();
    idle_all_pending.sort_unstable();
    // What the host's gauge costs: it counts the schedule every 5 s.
    let mut count_ms = [0.0; 2];
    for (i, schema) in [&*none, &*pending].into_iter().enumerate() {
        let start = Instant::now();
        for _ in 0..10 {
            schema.pending().await?;
        }
        count_ms[i] = start.elapsed().as_secs_f64() * 1000.0 / 10.0;
    }

    // Goal 2: how late the scheduler delivers, at light load.
    let late_none = none.lateness("lateness, none pending").await?;
    let late_pending = pending.lateness("lateness, 100k pending").await?;

    // Goal 3: many due at once, against the same by hand.
    let (mut edas, mut baselines) = (Vec::new(), Vec::new());
    let (mut eda_cpu, mut baseline_cpu) = (Vec::new(), Vec::new());
    let mut eda_rss: f64 = 0.0;
    none.deliver(0, warm).await?;
    baseline(none.pool(), 0, warm).await?;
    for round in 0..rounds {
        let first = warm + round * n;
        // Which goes first alternates.
        for eda_now in [round % 2 == 1, round % 2 == 0] {
            let before = cpu::sample();
            if eda_now {
                reset_peak_rss();
                edas.push(none.deliver(first, n).await?);
                eda_cpu.push(cpu::sample().since(&before, n));
                eda_rss = eda_rss.max(peak_rss_mb());
            } else {
                baselines.push(baseline(none.pool(), first, n).await?);
                baseline_cpu.push(cpu::sample().since(&before, n));
            }
        }
    }

    // The work was done: every fire in an inbox, nothing left scheduled but
    // the pending ones, and none of those delivered.
    let fires = warm + rounds * n;
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_inbox")
        .fetch_one(none.pool())
        .await
        .map_err(err)?;
    let baseline_inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_inbox")
        .fetch_one(none.pool())
        .await
        .map_err(err)?;
    let left = none.pending().await?;
    let still_pending = pending.pending().await?;
    let later = LATER.load(Ordering::Relaxed);
    if inbox as u64 != fires
        || baseline_inbox as u64 != fires
        || left != 0
        || still_pending != PENDING
        || later != 0
    {
        return Err(format!(
            "work missing: {inbox} eda inbox rows and {baseline_inbox} baseline ones (expected \
             {fires}); {left} scheduled rows left (expected 0), {still_pending} pending (expected \
             {PENDING}), {later} of them delivered (expected 0)"
        ));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (relay_p, relay_0) = (median(&relay_pending), median(&relay_none));
    // The rate drifts from round to round more than it differs between the
    // schemas: each round's own ratio cancels the drift.
    let paired: Vec<f64> = relay_pending
        .iter()
        .zip(&relay_none)
        .map(|(p, n)| p / n)
        .collect();
    let spread = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        format!("{:.0}–{:.0}k/s", min / 1000.0, max / 1000.0)
    };
    let (idle_p, idle_0) = (median(&idle_pending), median(&idle_none));
    let lateness = |scenario: &str, late: &[Duration], which: &str| Row {
        scenario: scenario.into(),
        n: TICKS,
        concurrency: 1,
        p50_ms: Some(percentile_ms(late, 0.50)),
        p99_ms: Some(percentile_ms(late, 0.99)),
        peak_rss_mb: process_peak_rss_mb(),
        note: format!(
            "max {:.1} ms; lateness (handler start − due time) of {TICKS} commands due over \
             {:.0} s, delivered by bus.scheduler (default options: poll 250 ms), {which}; \
             no throughput and no baseline: a latency row",
            late.last().copied().map_or(0.0, ms),
            TICKS_SPREAD.as_secs_f64(),
        ),
        ..Row::default()
    };
    let (eda, base) = (median(&edas), median(&baselines));
    Ok(vec![
        Row {
            scenario: "schedule/relay, 100k pending".into(),
            n: relay_rows,
            concurrency: 1,
            eda_per_sec: relay_p,
            baseline_per_sec: relay_0,
            ratio_vs_baseline: relay_p / relay_0,
            peak_rss_mb: process_peak_rss_mb(),
            note: format!(
                "eda: OutboxRelay draining {relay_rows} committed outbox rows to a publisher \
                 that confirms and discards, the bus's scheduler running beside it (poll 250 \
                 ms), with {PENDING} scheduled messages pending (due in 1 h; scheduled \
                 {PER_UOW} a unit of work in {:.1} s); baseline: the same, none pending; median \
                 of {cheap_rounds} interleaved rounds (eda {}, baseline {}; the median of each \
                 round's own ratio: {:.2})",
                filled.as_secs_f64(),
                spread(&relay_pending),
                spread(&relay_none),
                median(&paired),
            ),
            ..Row::default()
        },
        Row {
            scenario: "schedule/idle round".into(),
            n: CALLS as u64,
            concurrency: 1,
            eda_per_sec: 1e6 / idle_p,
            baseline_per_sec: 1e6 / idle_0,
            ratio_vs_baseline: idle_0 / idle_p,
            p50_ms: Some(percentile_ms(&idle_all_pending, 0.50)),
            p99_ms: Some(percentile_ms(&idle_all_pending, 0.99)),
            baseline_p50_ms: Some(percentile_ms(&idle_all_none, 0.50)),
            baseline_p99_ms: Some(percentile_ms(&idle_all_none, 0.99)),
            peak_rss_mb: process_peak_rss_mb(),
            note: format!(
                "bus.deliver_due with nothing due (returns 0): mean {idle_p:.0} µs a round \
                 with {PENDING} pending, {idle_0:.0} µs with none ({:.2}× the time); rates in \
                 rounds/s; {CALLS} calls a round, median of {cheap_rounds} interleaved rounds' \
                 means. The host's gauge (scheduled_rows(1M), every 5 s): {:.1} ms with \
                 {PENDING} pending, {:.1} ms with none",
                idle_p / idle_0,
                count_ms[1],
                count_ms[0],
            ),
            ..Row::default()
        },
        lateness("schedule/lateness", &late_none, "none other pending"),
        lateness(
            "schedule/lateness, 100k pending",
            &late_pending,
            &format!("{PENDING} others pending"),
        ),
        Row {
            scenario: "schedule/deliver".into(),
            n,
            concurrency: 1,
            eda_per_sec: eda,
            baseline_per_sec: base,
            ratio_vs_baseline: eda / base,
            peak_rss_mb: process_peak_rss_mb(),
            eda_peak_rss_mb: Some(eda_rss),
            note: format!(
                "eda: {n} commands due at once, one bus.deliver_due (batches of {BATCH}), each \
                 handled with a unit of work (inbox row, commit), then removed from the \
                 schedule; baseline: the same by hand with sqlx: UPDATE … WHERE message_id = \
                 ANY(ARRAY(SELECT … FOR UPDATE SKIP LOCKED)) RETURNING ({BATCH} a batch), each \
                 decoded and handled in a transaction with its inbox row, the batch deleted. \
                 Both polled their empty, analyzed table before (a generic plan cached on the \
                 empty table: see the module's doc). Median of {rounds} interleaved rounds. \
                 CPU: baseline {}; eda {}",
                Usage::mean(&baseline_cpu).brief(),
                Usage::mean(&eda_cpu).brief()
            ),
            ..Row::default()
        },
    ])
}
