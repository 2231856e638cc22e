//! `sqlite`: the `database` scenario on SQLite (a file in WAL mode, the
//! examples' default), one command at a time unless `--concurrency` says
//! otherwise (SQLite has one writer at a time).
//!
//! - eda: the `database/document` command ([`super::stock::document`]):
//!   the handler loads the stock, kept as a document by eda's aggregate
//!   store (no repository), takes one, raises `Reserved` (external),
//!   commits: the document is updated with a version check and the outbox
//!   row written in the same `BEGIN IMMEDIATE` transaction.
//! - baseline: the same by hand with sqlx, on `pool.begin_with("BEGIN
//!   IMMEDIATE")`: read the document, decode it, take one, encode it,
//!   `UPDATE … WHERE version = ?`, `INSERT` the outbox row, commit.
//! - baseline on kept connections (`sqlite/kept`): the same, on connections
//!   kept by hand between transactions, as eda's adapter keeps them (sqlx
//!   pings a connection given back to its pool).
//!
//! The variants run in interleaved rounds; the median of each is kept.

use std::sync::Arc;

use eda_core::prelude::*;
use eda_core::sqlx::{self, Connection, Sqlite, SqliteConnection, SqlitePool};
use eda_core::testing::TestSqlite;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::stock::{self, KeptByHand, Reserved, document, err, sku};
use crate::Args;
use crate::drive::{self, Variant};
use crate::report::{Row, peak_rss_mb, reset_peak_rss};

/// The baseline's document: what it reads, changes and writes back.
#[derive(Serialize, Deserialize)]
struct Document {
    sku: String,
    qty: i64,
}

/// The documents of both sides, and the baseline's outbox.
async fn setup(pool: &SqlitePool) -> Result<(), String> {
    for sql in [
        "CREATE TABLE bench_documents (id TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL)",
        "CREATE TABLE bench_outbox (position INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, \
         name TEXT NOT NULL, payload TEXT NOT NULL, correlation_id TEXT NOT NULL, created_at TEXT NOT NULL)",
    ] {
        sqlx::query(sql).execute(pool).await.map_err(err)?;
    }
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
         INSERT INTO bench_documents SELECT 'sku-' || i, 0, \
         json_object('sku', 'sku-' || i, 'qty', 1000000000) FROM n",
    )
    .bind(stock::SKUS as i64)
    .execute(pool)
    .await
    .map_err(err)?;
    // eda's documents, as its aggregate store writes them.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
         INSERT INTO eda_aggregates (aggregate, id, version, body) \
         SELECT ?2, 'sku-' || i, 0, \
         json_object('sku', 'sku-' || i, 'qty', 1000000000, 'version', 0, 'events', NULL) FROM n",
    )
    .bind(stock::SKUS as i64)
    .bind(document::AGGREGATE)
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// The baseline's transaction, on `tx`: read, change, write, outbox.
async fn take_by_hand(tx: &mut SqliteConnection, seq: u64) -> Result<(), String> {
    let sku = sku(seq);
    let (version, body): (i64, String) =
        sqlx::query_as("SELECT version, body FROM bench_documents WHERE id = ?1")
            .bind(&sku)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
    let mut document: Document = serde_json::from_str(&body).map_err(err)?;
    document.qty -= 1;
    let done = sqlx::query(
        "UPDATE bench_documents SET version = ?2, body = ?3 WHERE id = ?1 AND version = ?4",
    )
    .bind(&sku)
    .bind(version + 1)
    .bind(serde_json::to_string(&document).map_err(err)?)
    .bind(version)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    if done.rows_affected() != 1 {
        return Err("conflict in the baseline".into());
    }
    let payload = serde_json::to_string(&Reserved {
        sku,
        qty: document.qty,
        seq,
    })
    .map_err(err)?;
    let id = Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO bench_outbox (message_id, name, payload, correlation_id, created_at) \
         VALUES (?1, 'bench.reserved', ?2, ?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    )
    .bind(id)
    .bind(payload)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    Ok(())
}

/// [`take_by_hand`] on a connection kept by hand.
async fn take_kept(kept: &KeptByHand<Sqlite>, seq: u64) -> Result<(), String> {
    let mut conn = kept.take().await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    take_by_hand(&mut tx, seq).await?;
    tx.commit().await.map_err(err)?;
    kept.keep(conn)
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(5000);
    let concurrency = args.concurrency.unwrap_or(1);
    let rounds = args.rounds.unwrap_or(5);
    let file = TestSqlite::start().await;
    let pool = file.pool().clone();
    setup(&pool).await?;
    let bus = MessageBus::builder()
        .scope(document::SCOPE)
        .adapter(file.db.clone())
        .build()
        .map_err(err)?;
    let kept_by_hand = Arc::new(KeptByHand::new(pool.clone()));

    let eda_op = |bus: MessageBus| {
        move |seq: u64| {
            let bus = bus.clone();
            async move {
                bus.handle(document::command(seq))
                    .await
                    .map(|_| ())
                    .map_err(err)
            }
        }
    };
    let by_hand = |pool: SqlitePool| {
        move |seq: u64| {
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
                take_by_hand(&mut tx, seq).await?;
                tx.commit().await.map_err(err)
            }
        }
    };
    let kept = |kept: Arc<KeptByHand<Sqlite>>| {
        move |seq: u64| {
            let kept = kept.clone();
            async move { take_kept(&kept, seq).await }
        }
    };

    let warm = (n / 10).clamp(100, 1000);
    drive::run("warm-up eda", warm, concurrency, None, eda_op(bus.clone())).await?;
    drive::run(
        "warm-up baseline",
        warm,
        concurrency,
        None,
        by_hand(pool.clone()),
    )
    .await?;
    drive::run(
        "warm-up kept",
        warm,
        concurrency,
        None,
        kept(kept_by_hand.clone()),
    )
    .await?;
    kept_by_hand.release();

    let (mut eda, mut hand, mut kept_variant) =
        (Variant::default(), Variant::default(), Variant::default());
    let mut eda_rss: f64 = 0.0;
    for round in 1..=rounds {
        let label = |what: &str| format!("{what} {round}/{rounds}");
        hand.run(&label("baseline"), n, concurrency, by_hand(pool.clone()))
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
    }

    // The work was really done: each command took one unit and wrote one
    // outbox row, on each side.
    let per_side = warm + rounds * n;
    let eda_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_outbox")
        .fetch_one(&pool)
        .await
        .map_err(err)?;
    let baseline_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_outbox")
        .fetch_one(&pool)
        .await
        .map_err(err)?;
    let eda_taken: i64 = sqlx::query_scalar(
        "SELECT count(*) * 1000000000 - sum(json_extract(body, '$.qty')) FROM eda_aggregates \
         WHERE aggregate = ?1",
    )
    .bind(document::AGGREGATE)
    .fetch_one(&pool)
    .await
    .map_err(err)?;
    let baseline_taken: i64 = sqlx::query_scalar(
        "SELECT count(*) * 1000000000 - sum(json_extract(body, '$.qty')) FROM bench_documents",
    )
    .fetch_one(&pool)
    .await
    .map_err(err)?;
    if eda_rows as u64 != per_side
        || eda_taken as u64 != per_side
        || baseline_rows as u64 != 2 * per_side
        || baseline_taken as u64 != 2 * per_side
    {
        return Err(format!(
            "work missing: eda {eda_rows} outbox rows and {eda_taken} units taken (expected \
             {per_side} each); the baselines {baseline_rows} and {baseline_taken} (expected {} each)",
            2 * per_side
        ));
    }
    drop(file);

    let note = |note: &str| {
        format!(
            "eda: the stock as a document in eda's aggregate store, an outbox row per command; \
             {note}; latency: bus.handle to commit; median of {rounds} interleaved rounds."
        )
    };
    Ok(vec![
        drive::row(
            "sqlite",
            concurrency,
            &eda,
            eda_rss,
            &hand,
            &note(
                "baseline: the same by hand with sqlx (BEGIN IMMEDIATE, read, decode, encode, \
                 UPDATE … WHERE version, outbox INSERT, commit) on pool.begin_with",
            ),
        ),
        drive::row(
            "sqlite/kept",
            concurrency,
            &eda,
            eda_rss,
            &kept_variant,
            &note(
                "baseline: the same, on connections kept by hand between transactions (no ping \
                 of the pool's, as eda's adapter)",
            ),
        ),
    ])
}
