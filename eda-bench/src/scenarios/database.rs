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

use super::stock::{self, KeptByHand, err};
use crate::Args;
use crate::drive::{self, Variant};
use crate::report::{Row, peak_rss_mb, reset_peak_rss};

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

    let eda_op = |bus: MessageBus| {
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
                bus.handle(stock::document::command(i))
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
    let kept_by_hand = Arc::new(KeptByHand::new(pool.clone()));
    let kept = |kept: Arc<KeptByHand<_>>| {
        move |i| {
            let kept = kept.clone();
            async move { stock::read_modify_write_kept(&kept, i).await }
        }
    };

    // Warm up the pool, the caches and the statement caches.
    let warm = (n / 10).clamp(100, 1000);
    drive::run("warm-up eda", warm, concurrency, None, eda_op(bus.clone())).await?;
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

    let (mut eda, mut two_variant, mut rmw_variant) =
        (Variant::default(), Variant::default(), Variant::default());
    let (mut kept_variant, mut document_variant) = (Variant::default(), Variant::default());
    let mut eda_rss: f64 = 0.0;
    for round in 1..=rounds {
        let label = |what: &str| format!("{what} {round}/{rounds}");
        two_variant
            .run(&label("baseline"), n, concurrency, two(pool.clone()))
            .await?;
        rmw_variant
            .run(&label("baseline rmw"), n, concurrency, rmw(pool.clone()))
            .await?;
        kept_variant
            .run(
                &label("baseline kept"),
                n,
                concurrency,
                kept(kept_by_hand.clone()),
            )
            .await?;
        kept_by_hand.release();
        reset_peak_rss();
        eda.run(&label("eda"), n, concurrency, eda_op(bus.clone()))
            .await?;
        eda_rss = eda_rss.max(peak_rss_mb());
        document_variant
            .run(
                &label("eda document"),
                n,
                concurrency,
                document(bus.clone()),
            )
            .await?;
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

    let note = |note: &str| {
        format!("{note}; latency: bus.handle to commit; median of {rounds} interleaved rounds.")
    };
    Ok(vec![
        drive::row(
            "database",
            concurrency,
            &eda,
            eda_rss,
            &two_variant,
            &note(
                "baseline: UPDATE … qty = qty - 1 + outbox INSERT in one sqlx transaction (no read)",
            ),
        ),
        drive::row(
            "database/rmw",
            concurrency,
            &eda,
            eda_rss,
            &rmw_variant,
            &note("baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand (eda's work)"),
        ),
        drive::row(
            "database/kept",
            concurrency,
            &eda,
            eda_rss,
            &kept_variant,
            &note(
                "baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand, on connections \
                 kept by hand between transactions (no ping of the pool's, as eda's adapter)",
            ),
        ),
        drive::row(
            "database/document",
            concurrency,
            &document_variant,
            eda_rss,
            &rmw_variant,
            &note(
                "eda: the stock as a document in eda's store (JSON + version, no repository); \
                 baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand",
            ),
        ),
    ])
}
