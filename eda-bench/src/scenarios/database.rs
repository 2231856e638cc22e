//! `database`: allocate-like commands on Postgres, no broker. Each command
//! takes one unit of stock from one aggregate and raises one external event,
//! so each commit saves the aggregate and writes one outbox row.
//!
//! - eda: `bus.handle(Reserve { sku })`; the handler loads the stock
//!   through its repository, changes it, raises `Reserved`, commits (the
//!   unit of work updates the row with a version check and writes the
//!   outbox row in the same transaction).
//! - baseline (issue 3's): the same two statements by hand in one sqlx
//!   transaction: `UPDATE … SET qty = qty - 1` and the outbox `INSERT`.
//! - baseline, read-modify-write: what eda does, by hand: `SELECT` the
//!   row, `UPDATE … WHERE version = $expected`, `INSERT` the outbox row.
//!
//! Rows are spread over 1,000 SKUs so that the concurrent workers do not
//! conflict; each variant runs twice, interleaved, and the mean is kept.

use eda_core::adapters::sql::RowExt;
use eda_core::prelude::*;
use eda_core::sqlx::{self, PgConnection, PgPool};
use eda_core::testing::TestPostgres;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Args;
use crate::drive::{self, Run};
use crate::report::{Row, peak_rss_mb};

const SKUS: u64 = 1000;

#[derive(Debug, Clone, Aggregate)]
pub(crate) struct Stock {
    #[aggregate(id)]
    sku: String,
    qty: i64,
    version: u64,
    events: Events,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.reserve", output = i64)]
pub(crate) struct Reserve {
    sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.reserved", external)]
pub(crate) struct Reserved {
    sku: String,
    qty: i64,
}

#[derive(UnitOfWork)]
pub(crate) struct StockUow {
    tx: Transaction,
    stock: IdentityMap<Stock>,
}

#[command_handler]
async fn reserve(cmd: Reserve, uow: &mut StockUow) -> Result<i64, CommandError<BoxError>> {
    let stock = uow.stock().get(&cmd.sku).await?.ok_or("no such sku")?;
    stock.qty -= 1;
    let qty = stock.qty;
    stock.events.raise(Reserved { sku: cmd.sku, qty });
    uow.commit().await?;
    Ok(qty)
}

pub(crate) struct PgStock;

#[repository]
impl Repository for PgStock {
    type Aggregate = Stock;
    type Connection = PgConnection;

    async fn get(conn: &mut PgConnection, sku: &String) -> Result<Option<Stock>, RepositoryError> {
        let row = sqlx::query("SELECT qty, version FROM bench_stock WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|row| {
            Ok(Stock {
                sku: sku.clone(),
                qty: row.decode("bench_stock", "qty")?,
                version: row.decode::<i64>("bench_stock", "version")? as u64,
                events: Events::new(),
            })
        })
        .transpose()
    }

    async fn add(conn: &mut PgConnection, s: &Stock) -> Result<(), RepositoryError> {
        sqlx::query("INSERT INTO bench_stock (sku, qty, version) VALUES ($1, $2, $3)")
            .bind(&s.sku)
            .bind(s.qty)
            .bind(s.version as i64)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn update(
        conn: &mut PgConnection,
        s: &Stock,
        expected: u64,
    ) -> Result<bool, RepositoryError> {
        let done = sqlx::query(
            "UPDATE bench_stock SET qty = $2, version = $3 WHERE sku = $1 AND version = $4",
        )
        .bind(&s.sku)
        .bind(s.qty)
        .bind(s.version as i64)
        .bind(expected as i64)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn sku(i: u64) -> String {
    format!("sku-{}", i % SKUS)
}

async fn setup(pool: &PgPool) -> Result<(), String> {
    for sql in [
        "CREATE TABLE bench_stock (sku TEXT PRIMARY KEY, qty BIGINT NOT NULL, version BIGINT NOT NULL)",
        // The baselines' outbox: the same table as eda's.
        "CREATE TABLE bench_outbox (LIKE eda_outbox INCLUDING ALL)",
    ] {
        sqlx::query(sql)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    sqlx::query("INSERT INTO bench_stock SELECT 'sku-' || i, 1000000000, 0 FROM generate_series(0, $1 - 1) AS i")
        .bind(SKUS as i64)
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

const OUTBOX_INSERT: &str = "INSERT INTO bench_outbox (message_id, name, payload, correlation_id, created_at) \
                             VALUES ($1, 'bench.reserved', $2, $1, now())";

/// The baseline: the two statements, by hand.
async fn baseline_two_statements(pool: &PgPool, i: u64) -> Result<(), String> {
    let sku = sku(i);
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let qty: i64 = sqlx::query_scalar(
        "UPDATE bench_stock SET qty = qty - 1, version = version + 1 WHERE sku = $1 RETURNING qty",
    )
    .bind(&sku)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    let payload = serde_json::to_string(&Reserved { sku, qty }).map_err(|e| e.to_string())?;
    sqlx::query(OUTBOX_INSERT)
        .bind(Uuid::now_v7())
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// What eda does, by hand: read, update with a version check, outbox.
async fn baseline_read_modify_write(pool: &PgPool, i: u64) -> Result<(), String> {
    let sku = sku(i);
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let (qty, version): (i64, i64) =
        sqlx::query_as("SELECT qty, version FROM bench_stock WHERE sku = $1")
            .bind(&sku)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
    let done = sqlx::query(
        "UPDATE bench_stock SET qty = $2, version = $3 WHERE sku = $1 AND version = $4",
    )
    .bind(&sku)
    .bind(qty - 1)
    .bind(version + 1)
    .bind(version)
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    if done.rows_affected() != 1 {
        return Err("conflict in the baseline".into());
    }
    let payload =
        serde_json::to_string(&Reserved { sku, qty: qty - 1 }).map_err(|e| e.to_string())?;
    sqlx::query(OUTBOX_INSERT)
        .bind(Uuid::now_v7())
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

fn mean(runs: &[Run]) -> f64 {
    runs.iter().map(|r| r.per_sec).sum::<f64>() / runs.len() as f64
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(5000);
    let concurrency = args.concurrency.unwrap_or(8);
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    setup(pg.pool()).await?;
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(pg.db.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let pool = pg.pool().clone();

    let eda = |bus: MessageBus| {
        move |i: u64| {
            let bus = bus.clone();
            async move {
                bus.handle(Reserve { sku: sku(i) })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    };
    let two = |pool: PgPool| {
        move |i| {
            let pool = pool.clone();
            async move { baseline_two_statements(&pool, i).await }
        }
    };
    let rmw = |pool: PgPool| {
        move |i| {
            let pool = pool.clone();
            async move { baseline_read_modify_write(&pool, i).await }
        }
    };

    // Warm up the pool, the caches and the statement caches.
    let warm = (n / 10).clamp(100, 1000);
    drive::run("warm-up eda", warm, concurrency, eda(bus.clone())).await?;
    drive::run("warm-up baseline", warm, concurrency, two(pool.clone())).await?;
    drive::run("warm-up rmw", warm, concurrency, rmw(pool.clone())).await?;

    let (mut eda_runs, mut two_runs, mut rmw_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=2 {
        two_runs.push(
            drive::run(
                &format!("baseline {round}/2"),
                n,
                concurrency,
                two(pool.clone()),
            )
            .await?,
        );
        rmw_runs.push(
            drive::run(
                &format!("baseline rmw {round}/2"),
                n,
                concurrency,
                rmw(pool.clone()),
            )
            .await?,
        );
        eda_runs
            .push(drive::run(&format!("eda {round}/2"), n, concurrency, eda(bus.clone())).await?);
    }

    // Every command's event is in the outbox: the work was really done.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_outbox")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    if rows as u64 != warm + 2 * n {
        return Err(format!(
            "expected {} outbox rows, found {rows}",
            warm + 2 * n
        ));
    }
    pg.drop_schema().await;

    let eda_per_sec = mean(&eda_runs);
    let last = eda_runs.last().expect("two rounds");
    let row = |scenario: &str, baseline: f64, note: &str| Row {
        scenario: scenario.into(),
        n,
        concurrency,
        eda_per_sec,
        baseline_per_sec: baseline,
        ratio_vs_baseline: eda_per_sec / baseline,
        p50_ms: Some(last.percentile_ms(0.50)),
        p99_ms: Some(last.percentile_ms(0.99)),
        peak_rss_mb: peak_rss_mb(),
        note: note.into(),
        ..Row::default()
    };
    Ok(vec![
        row(
            "database",
            mean(&two_runs),
            "baseline: UPDATE … qty = qty - 1 + outbox INSERT in one sqlx transaction (no read)",
        ),
        row(
            "database/rmw",
            mean(&rmw_runs),
            "baseline: SELECT, UPDATE … WHERE version, outbox INSERT by hand (eda's work)",
        ),
    ])
}
