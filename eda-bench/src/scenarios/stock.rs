//! The allocate-like service of the `database` and `durable` scenarios, and
//! the same work written by hand with sqlx.
//!
//! Each command takes one unit of stock from one aggregate and raises one
//! external event (`bench.reserved`), so each commit saves the aggregate and
//! writes one outbox row. The event carries the command's sequence number,
//! so that a scenario can find which command an outbox row (or a message at
//! the broker) came from.
//!
//! Rows are spread over [`SKUS`] SKUs so that concurrent commands do not
//! conflict.

use std::sync::Mutex;

use eda_core::adapters::sql::RowExt;
use eda_core::prelude::*;
use eda_core::sqlx::pool::PoolConnection;
use eda_core::sqlx::{self, Connection, PgConnection, PgPool, Postgres};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many stock rows the commands are spread over.
pub(crate) const SKUS: u64 = 1000;

/// The bus scope of this service (its document variant, [`document`],
/// included).
pub(crate) const SCOPE: &str = module_path!();

pub(crate) mod document;

/// The name of the event, which is also its routing key.
pub(crate) const RESERVED: &str = "bench.reserved";

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
    pub(crate) sku: String,
    pub(crate) seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.reserved", external)]
pub(crate) struct Reserved {
    pub(crate) sku: String,
    pub(crate) qty: i64,
    pub(crate) seq: u64,
}

#[derive(UnitOfWork)]
pub(crate) struct StockUow {
    tx: UowTransaction,
    stock: IdentityMap<Stock>,
}

#[command_handler]
async fn reserve(cmd: Reserve, uow: &mut StockUow) -> Result<i64, CommandError<BoxError>> {
    let stock = uow.stock().get(&cmd.sku).await?.ok_or("no such sku")?;
    stock.qty -= 1;
    let qty = stock.qty;
    stock.events.raise(Reserved {
        sku: cmd.sku,
        qty,
        seq: cmd.seq,
    });
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

/// The SKU command `seq` works on.
pub(crate) fn sku(seq: u64) -> String {
    format!("sku-{}", seq % SKUS)
}

/// The command with sequence number `seq`.
pub(crate) fn command(seq: u64) -> Reserve {
    Reserve { sku: sku(seq), seq }
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The stock rows, and the baselines' outbox (the same table as eda's).
pub(crate) async fn setup(pool: &PgPool) -> Result<(), String> {
    for sql in [
        "CREATE TABLE bench_stock (sku TEXT PRIMARY KEY, qty BIGINT NOT NULL, version BIGINT NOT NULL)",
        "CREATE TABLE bench_outbox (LIKE eda_outbox INCLUDING ALL)",
    ] {
        sqlx::query(sql).execute(pool).await.map_err(err)?;
    }
    sqlx::query("INSERT INTO bench_stock SELECT 'sku-' || i, 1000000000, 0 FROM generate_series(0, $1 - 1) AS i")
        .bind(SKUS as i64)
        .execute(pool)
        .await
        .map_err(err)?;
    // The same stock as documents, as eda writes them.
    sqlx::query(
        "INSERT INTO eda_aggregates (aggregate, id, version, body) \
         SELECT 'BenchStockDocument', 'sku-' || i, 0, \
         json_build_object('sku', 'sku-' || i, 'qty', 1000000000, 'version', 0, 'events', NULL)::text \
         FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(SKUS as i64)
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// How many units the commands on documents took so far.
pub(crate) async fn document_units_taken(pool: &PgPool) -> Result<i64, String> {
    sqlx::query_scalar(
        "SELECT (count(*) * 1000000000 - sum((body::json->>'qty')::int8))::int8 \
         FROM eda_aggregates WHERE aggregate = 'BenchStockDocument'",
    )
    .fetch_one(pool)
    .await
    .map_err(err)
}

/// How many units all the commands took so far, summed over the stock:
/// each committed command takes exactly one.
pub(crate) async fn units_taken(pool: &PgPool) -> Result<i64, String> {
    sqlx::query_scalar("SELECT (count(*) * 1000000000 - sum(qty))::int8 FROM bench_stock")
        .fetch_one(pool)
        .await
        .map_err(err)
}

const OUTBOX_INSERT: &str = "INSERT INTO bench_outbox (message_id, name, payload, correlation_id, created_at) \
                             VALUES ($1, 'bench.reserved', $2, $1, now())";

/// What the hand-written transaction leaves for the publisher.
pub(crate) struct Written {
    pub(crate) message_id: Uuid,
    pub(crate) payload: Vec<u8>,
}

/// The baseline: `UPDATE … qty = qty - 1` and the outbox `INSERT`,
/// by hand, in one sqlx transaction.
pub(crate) async fn two_statements(pool: &PgPool, seq: u64) -> Result<Written, String> {
    let sku = sku(seq);
    let mut tx = pool.begin().await.map_err(err)?;
    let qty: i64 = sqlx::query_scalar(
        "UPDATE bench_stock SET qty = qty - 1, version = version + 1 WHERE sku = $1 RETURNING qty",
    )
    .bind(&sku)
    .fetch_one(&mut *tx)
    .await
    .map_err(err)?;
    let payload = serde_json::to_string(&Reserved { sku, qty, seq }).map_err(err)?;
    let message_id = Uuid::now_v7();
    sqlx::query(OUTBOX_INSERT)
        .bind(message_id)
        .bind(&payload)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(Written {
        message_id,
        payload: payload.into_bytes(),
    })
}

/// What eda does, by hand: read, update with a version check, outbox.
pub(crate) async fn read_modify_write(pool: &PgPool, seq: u64) -> Result<(), String> {
    let mut tx = pool.begin().await.map_err(err)?;
    read_modify_write_in(&mut tx, seq).await?;
    tx.commit().await.map_err(err)
}

/// [`read_modify_write`], on a connection kept by hand; the connection is
/// kept again if the transaction committed.
pub(crate) async fn read_modify_write_kept(
    kept: &KeptByHand<Postgres>,
    seq: u64,
) -> Result<(), String> {
    let mut conn = kept.take().await?;
    let mut tx = conn.begin().await.map_err(err)?;
    read_modify_write_in(&mut tx, seq).await?;
    tx.commit().await.map_err(err)?;
    kept.keep(conn)
}

/// Connections kept by hand between transactions, as eda's adapters keep
/// them: sqlx pings a connection given back to its pool (one more round
/// trip), so code that wants to skip that keeps its own.
pub(crate) struct KeptByHand<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    idle: Mutex<Vec<PoolConnection<DB>>>,
}

impl<DB: sqlx::Database> KeptByHand<DB> {
    pub(crate) fn new(pool: sqlx::Pool<DB>) -> Self {
        KeptByHand {
            pool,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A kept connection, or one of the pool if none is kept.
    pub(crate) async fn take(&self) -> Result<PoolConnection<DB>, String> {
        let kept = self.idle.lock().map_err(err)?.pop();
        match kept {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await.map_err(err),
        }
    }

    /// Keeps a connection a transaction ended on.
    pub(crate) fn keep(&self, conn: PoolConnection<DB>) -> Result<(), String> {
        self.idle.lock().map_err(err)?.push(conn);
        Ok(())
    }

    /// Gives the kept connections back to the pool (between runs, so that
    /// the other variants have the whole pool).
    pub(crate) fn release(&self) {
        let kept = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(kept);
    }
}

async fn read_modify_write_in(tx: &mut PgConnection, seq: u64) -> Result<(), String> {
    let sku = sku(seq);
    let (qty, version): (i64, i64) =
        sqlx::query_as("SELECT qty, version FROM bench_stock WHERE sku = $1")
            .bind(&sku)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
    let done = sqlx::query(
        "UPDATE bench_stock SET qty = $2, version = $3 WHERE sku = $1 AND version = $4",
    )
    .bind(&sku)
    .bind(qty - 1)
    .bind(version + 1)
    .bind(version)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    if done.rows_affected() != 1 {
        return Err("conflict in the baseline".into());
    }
    let payload = serde_json::to_string(&Reserved {
        sku,
        qty: qty - 1,
        seq,
    })
    .map_err(err)?;
    sqlx::query(OUTBOX_INSERT)
        .bind(Uuid::now_v7())
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    Ok(())
}
