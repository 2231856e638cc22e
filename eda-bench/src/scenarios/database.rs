//! `database`: allocate-like commands on Postgres, no broker (see
//! [`super::stock`]).
//!
//! - eda: `bus.handle(Reserve { sku, seq })`; the handler loads the stock
//!   through its repository, changes it, raises `Reserved`, commits (the
//!   unit of work updates the row with a version check and writes the
//!   outbox row in the same transaction).
//! - baseline (issue 3's): the same two statements by hand in one sqlx
//!   transaction: `UPDATE … SET qty = qty - 1` and the outbox `INSERT`.
//! - baseline, read-modify-write: what eda does, by hand: `SELECT` the
//!   row, `UPDATE … WHERE version = $expected`, `INSERT` the outbox row.
//! - baseline, read-modify-write on kept connections (`database/kept`): the
//!   same, on connections kept by hand between transactions, as eda's
//!   Postgres adapter keeps them (sqlx pings a connection given back to its
//!   pool: one more round trip).
//! - eda on a document (`database/document`): the same command on the stock
//!   kept by eda's aggregate store (its JSON and version, no repository),
//!   against the read-modify-write baseline.
//!
//! The variants run in interleaved rounds; the median of each is kept.

use std::sync::Arc;

use eda_core::prelude::*;
use eda_core::sqlx::{self, PgPool};
use eda_core::testing::TestPostgres;

use super::stock::{self, err};
use crate::Args;
use crate::cpu::{self, Usage};
use crate::drive;
use crate::report::{Row, median, peak_rss_mb, process_peak_rss_mb, reset_peak_rss};

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(5000);
    let concurrency = args.concurrency.unwrap_or(8);
    let rounds = args.rounds.unwrap_or(2);
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    stock::setup(pg.pool()).await?;
    let bus = MessageBus::builder()
        .scope(stock::SCOPE)
        .adapter(pg.db.clone())
        .build()
        .map_err(err)?;
    let pool = pg.pool().clone();

    let eda = |bus: MessageBus| {
        move |i: u64| {
            let bus = bus.clone();
            async move { bus.handle(stock::command(i)).await.map(|_| ()).map_err(err) }
        }
    };
    let two = |pool: PgPool| {
        move |i| {
            let pool = pool.clone();
            async move { stock::two_statements(&pool, i).await.map(|_| ()) }
        }
    };
    let document = |bus: MessageBus| {
        move |i: u64| {
            let bus = bus.clone();
            async move {
                bus.handle(stock::document_command(i))
                    .await
                    .map(|_| ())
                    .map_err(err)
            }
        }
    };
    let rmw = |pool: PgPool| {
        move |i| {
            let pool = pool.clone();
            async move { stock::read_modify_write(&pool, i).await }
        }
    };
    let kept_by_hand = Arc::new(stock::KeptByHand::new(pool.clone()));
    let kept = |kept: Arc<stock::KeptByHand>| {
        move |i| {
            let kept = kept.clone();
            async move { kept.read_modify_write(i).await }
        }
    };

    // Warm up the pool, the caches and the statement caches.
    let warm = (n / 10).clamp(100, 1000);
    drive::run("warm-up eda", warm, concurrency, None, eda(bus.clone())).await?;
    drive::run(
        "warm-up baseline",
        warm,
        concurrency,
        None,
        two(pool.clone()),
    )
    .await?;
    drive::run("warm-up rmw", warm, concurrency, None, rmw(pool.clone())).await?;
    drive::run(
        "warm-up kept",
        warm,
        concurrency,
        None,
        kept(kept_by_hand.clone()),
    )
    .await?;
    kept_by_hand.release();
    drive::run(
        "warm-up document",
        warm,
        concurrency,
        None,
        document(bus.clone()),
    )
    .await?;

    let (mut eda_runs, mut two_runs, mut rmw_runs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut eda_cpu, mut two_cpu, mut rmw_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut document_runs, mut document_cpu) = (Vec::new(), Vec::new());
    let (mut kept_runs, mut kept_cpu) = (Vec::new(), Vec::new());
    let mut eda_rss: f64 = 0.0;
    for round in 1..=rounds {
        let label = |what: &str| format!("{what} {round}/{rounds}");
        let before = cpu::sample();
        two_runs
            .push(drive::run(&label("baseline"), n, concurrency, None, two(pool.clone())).await?);
        two_cpu.push(cpu::sample().since(&before, n));
        let before = cpu::sample();
        rmw_runs.push(
            drive::run(
                &label("baseline rmw"),
                n,
                concurrency,
                None,
                rmw(pool.clone()),
            )
            .await?,
        );
        rmw_cpu.push(cpu::sample().since(&before, n));
        let before = cpu::sample();
        kept_runs.push(
            drive::run(
                &label("baseline kept"),
                n,
                concurrency,
                None,
                kept(kept_by_hand.clone()),
            )
            .await?,
        );
        kept_cpu.push(cpu::sample().since(&before, n));
        kept_by_hand.release();
        reset_peak_rss();
        let before = cpu::sample();
        eda_runs.push(drive::run(&label("eda"), n, concurrency, None, eda(bus.clone())).await?);
        eda_cpu.push(cpu::sample().since(&before, n));
        eda_rss = eda_rss.max(peak_rss_mb());
        let before = cpu::sample();
        document_runs.push(
            drive::run(
                &label("eda document"),
                n,
                concurrency,
                None,
                document(bus.clone()),
            )
            .await?,
        );
        document_cpu.push(cpu::sample().since(&before, n));
    }

    // The work was really done: every command's event is in an outbox, and
    // every command took its unit of stock.
    let done = 4 * warm + 4 * rounds * n;
    let eda_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_outbox")
        .fetch_one(&pool)
        .await
        .map_err(err)?;
    let baseline_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_outbox")
        .fetch_one(&pool)
        .await
        .map_err(err)?;
    let taken = stock::units_taken(&pool).await?;
    let taken_from_documents = stock::document_units_taken(&pool).await?;
    if eda_rows as u64 != 2 * (warm + rounds * n)
        || baseline_rows as u64 != 3 * (warm + rounds * n)
        || taken as u64 != done
        || taken_from_documents as u64 != warm + rounds * n
    {
        return Err(format!(
            "work missing: {eda_rows} eda outbox rows (expected {}), {baseline_rows} baseline \
             outbox rows (expected {}), {taken} units taken (expected {done}), \
             {taken_from_documents} from documents (expected {})",
            2 * (warm + rounds * n),
            3 * (warm + rounds * n),
            warm + rounds * n
        ));
    }
    pg.drop_schema().await;

    let per_sec =
        |runs: &[drive::Run]| median(&runs.iter().map(|r| r.per_sec()).collect::<Vec<_>>());
    let latencies = |runs: &[drive::Run], p: f64| {
        median(&runs.iter().map(|r| r.percentile_ms(p)).collect::<Vec<_>>())
    };
    let row = |scenario: &str,
               eda_runs: &[drive::Run],
               eda_cpu: &[Usage],
               baseline: &[drive::Run],
               cpu: &[Usage],
               note: &str| Row {
        scenario: scenario.into(),
        n,
        concurrency,
        eda_per_sec: per_sec(eda_runs),
        baseline_per_sec: per_sec(baseline),
        ratio_vs_baseline: per_sec(eda_runs) / per_sec(baseline),
        p50_ms: Some(latencies(eda_runs, 0.50)),
        p99_ms: Some(latencies(eda_runs, 0.99)),
        baseline_p50_ms: Some(latencies(baseline, 0.50)),
        baseline_p99_ms: Some(latencies(baseline, 0.99)),
        peak_rss_mb: process_peak_rss_mb(),
        eda_peak_rss_mb: Some(eda_rss),
        note: format!(
            "{note}; latency: bus.handle to commit; median of {rounds} interleaved rounds. \
             CPU: baseline {}; eda {}",
            Usage::mean(cpu).brief(),
            Usage::mean(eda_cpu).brief()
        ),
        ..Row::default()
    };
    Ok(vec![
        row(
            "database",
            &eda_runs,
            &eda_cpu,
            &two_runs,
            &two_cpu,
            "baseline: UPDATE … qty = qty - 1 + outbox INSERT in one sqlx transaction (no read)",
        ),
        row(
            "database/rmw",
            &eda_runs,
            &eda_cpu,
            &rmw_runs,
            &rmw_cpu,
            "baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand (eda's work)",
        ),
        row(
            "database/kept",
            &eda_runs,
            &eda_cpu,
            &kept_runs,
            &kept_cpu,
            "baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand, on connections \
             kept by hand between transactions (no ping of the pool's, as eda's adapter)",
        ),
        row(
            "database/document",
            &document_runs,
            &document_cpu,
            &rmw_runs,
            &rmw_cpu,
            "eda: the stock as a document in eda's store (JSON + version, no repository); \
             baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand",
        ),
    ])
}
