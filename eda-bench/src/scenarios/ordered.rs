//! `ordered`: eda's consumer on messages with an ordering key (order per
//! key: the service's ordered partitions, one message at a time each)
//! against the same consumer on the same messages without one (the
//! service queue, `C` handlers at once), in the same run.
//!
//! - ordered: `bench.ordered.keyed`, a command that declares
//!   `key = key`; `n` of them over 50 keys, round-robin, published through
//!   eda's publisher ([`RabbitMq::publisher`](eda_core::adapters::rabbitmq::RabbitMq::publisher),
//!   batches of 500, every message confirmed), which routes each to its
//!   key's slot: they wait in the service's 8 ordered partitions
//!   `<queue>.ordered.<i>` (classic queues, by design), consumed one
//!   message after another each, in parallel;
//! - unordered: `bench.ordered.unkeyed`, the same fields and the same
//!   keys, no ordering key: published the same way, they wait in the
//!   service queue (quorum, the default), consumed with prefetch
//!   `max(32, C)` and concurrency `C` (default 8), as `consume` does.
//!
//! Each side is a service of its own (its own exchange and queues, its bus
//! accepting its command): the unordered one has no partitions. The
//! handler work is `consume`'s: the bus decodes the command, begins a
//! transaction, records the message in `eda_inbox`, the handler runs one
//! `INSERT`, commits; the consumer then acknowledges.
//!
//! As in `consume`, the messages are published before each run, untimed; a
//! run is timed from when its consumer consumes (after it declared its
//! topology) until the last message was handled. The rounds alternate
//! which side runs first. The row `consume/ordered 50 keys vs unordered`
//! gives the ordered rate (`eda/s`) against the unordered one
//! (`baseline/s`), the medians' ratio (the goal: ≥ 0.5), each round's
//! ratio in the note, and how the 50 keys fell on the partitions: the
//! busiest partition has to handle its share of the messages one at a
//! time, which bounds the ordered rate.

use std::sync::Arc;

use eda_core::adapters::rabbitmq::{QueueType, RabbitMqOptions};
use eda_core::backend::{Delivery, Publisher, ordering_slot};
use eda_core::prelude::*;
use eda_core::sqlx::{self, PgConnection, PgPool};
use eda_core::testing::{TestPostgres, TestRabbitMq};
use eda_core::{ExternalMessage, Metadata};
use lapin::{Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

use super::consume::{consume_n, queue_len};
use super::stock::err;
use crate::Args;
use crate::cpu::Usage;
use crate::report::{Row, median, peak_rss_mb, process_peak_rss_mb, reset_peak_rss};

/// The distinct ordering keys, round-robin over the messages.
pub(crate) const KEYS: u64 = 50;
/// The ordered partitions (eda's default).
const PARTITIONS: u32 = 8;

const KEYED: &str = "bench.ordered.keyed";
const UNKEYED: &str = "bench.ordered.unkeyed";

/// A step with an ordering key: handled in order per key.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.ordered.keyed", key = key)]
pub(crate) struct Keyed {
    seq: u64,
    key: String,
    qty: i64,
}

/// The same step without one.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.ordered.unkeyed")]
pub(crate) struct Unkeyed {
    seq: u64,
    key: String,
    qty: i64,
}

#[derive(UnitOfWork)]
pub(crate) struct StepUow {
    tx: UowTransaction,
}

const INSERT: &str = "INSERT INTO bench_steps (seq, key, qty) VALUES ($1, $2, $3)";

/// `consume`'s handler work: one `INSERT`, then commit.
async fn record(uow: &mut StepUow, seq: u64, key: &str, qty: i64) -> Result<(), BoxError> {
    let conn = uow
        .tx
        .connection::<PgConnection>()
        .ok_or("not on Postgres")?;
    sqlx::query(INSERT)
        .bind(seq as i64)
        .bind(key)
        .bind(qty)
        .execute(&mut *conn)
        .await?;
    uow.commit().await?;
    Ok(())
}

#[command_handler]
async fn record_keyed(cmd: Keyed, uow: &mut StepUow) -> Result<(), BoxError> {
    record(uow, cmd.seq, &cmd.key, cmd.qty).await
}

#[command_handler]
async fn record_unkeyed(cmd: Unkeyed, uow: &mut StepUow) -> Result<(), BoxError> {
    record(uow, cmd.seq, &cmd.key, cmd.qty).await
}

/// The key of message `seq`: 50 keys, round-robin.
pub(crate) fn key_of(seq: u64) -> String {
    format!("key-{}", seq % KEYS)
}

/// The messages `first..first + n` of one side, as the outbox holds them.
fn messages(name: &'static str, first: u64, n: u64) -> Result<Vec<ExternalMessage>, String> {
    (first..first + n)
        .map(|seq| {
            let (key, qty) = (key_of(seq), 1);
            let payload = if name == KEYED {
                serde_json::to_vec(&Keyed { seq, key, qty })
            } else {
                serde_json::to_vec(&Unkeyed { seq, key, qty })
            };
            Ok(ExternalMessage {
                name: name.into(),
                metadata: Metadata::new(),
                payload: payload.map_err(err)?,
                trace: Default::default(),
            })
        })
        .collect()
}

/// How many of `n` messages (from `first`) each partition holds.
pub(crate) fn partition_loads(first: u64, n: u64, partitions: u32) -> Vec<u64> {
    let mut loads = vec![0; partitions as usize];
    for seq in first..first + n {
        loads[(ordering_slot(&key_of(seq)) % partitions) as usize] += 1;
    }
    loads
}

/// One side: a service of its own, with its bus and its publisher.
struct Side {
    label: &'static str,
    name: &'static str,
    rmq: TestRabbitMq,
    bus: MessageBus,
    publisher: Arc<dyn Publisher>,
}

struct Bench {
    pool: PgPool,
    /// Ordered, then unordered.
    sides: Vec<Side>,
    /// Counts the queues' messages.
    admin: Channel,
    next_seq: u64,
}

impl Bench {
    /// Publishes `n` messages of side `side`, then times its consumer
    /// until it handled them all; checks the rows, the inbox and the
    /// queues after.
    async fn run(&mut self, side: usize, label: &str, n: u64) -> Result<(f64, Usage), String> {
        let first = self.next_seq;
        self.next_seq += n;
        let s = &self.sides[side];
        let batch = messages(s.name, first, n)?;
        for chunk in batch.chunks(500) {
            let (deliveries, error) = s.publisher.publish(chunk).await;
            if let Some(e) = error {
                return Err(format!("{label}: publishing: {e}"));
            }
            if deliveries.len() != chunk.len()
                || !deliveries.iter().all(|d| matches!(d, Delivery::Confirmed))
            {
                return Err(format!(
                    "{label}: not every message was routed: {deliveries:?}"
                ));
            }
        }
        if s.name == KEYED {
            // Each partition holds its keys' messages, as the note's bound
            // assumes (and none went to the service queue).
            let o = s.rmq.options().consumer();
            let expected = partition_loads(first, n, o.partition_queues().len() as u32);
            let mut held = Vec::new();
            for queue in o.partition_queues() {
                held.push(queue_len(&self.admin, &queue).await?);
            }
            let unkeyed = queue_len(&self.admin, o.queue_name()).await?;
            if held != expected || unkeyed != 0 {
                return Err(format!(
                    "{label}: the partitions hold {held:?}, expected {expected:?}; {unkeyed} in \
                     the service queue"
                ));
            }
        }
        let inbox_before = inbox_rows(&self.pool).await?;

        let (rate, cpu) = consume_n(&s.rmq.rabbitmq, s.bus.clone(), label, n).await?;

        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM bench_steps WHERE seq >= $1 AND seq < $2")
                .bind(first as i64)
                .bind((first + n) as i64)
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
        let inbox = inbox_rows(&self.pool).await? - inbox_before;
        let o = s.rmq.options();
        let mut queues = vec![
            o.consumer().queue_name().to_owned(),
            o.consumer().dead_letter_queue(),
        ];
        if s.name == KEYED {
            // (The unordered service declared none: a passive declare of
            // a missing queue would close the channel.)
            queues.extend(o.consumer().partition_queues());
        }
        let mut left = 0;
        for queue in &queues {
            left += queue_len(&self.admin, queue).await?;
        }
        if rows as u64 != n || inbox as u64 != n || left != 0 {
            return Err(format!(
                "{label}: {rows} rows and {inbox} inbox rows for {n} messages; {left} left in \
                 its queues (service, partitions, dead letters)"
            ));
        }
        Ok((rate, cpu))
    }
}

async fn inbox_rows(pool: &PgPool) -> Result<i64, String> {
    sqlx::query_scalar("SELECT count(*) FROM eda_inbox")
        .fetch_one(pool)
        .await
        .map_err(err)
}

/// Ordered first in odd rounds, unordered first in even ones.
pub(crate) fn side_order(round: u64) -> [usize; 2] {
    if round % 2 == 1 { [0, 1] } else { [1, 0] }
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(5000);
    let concurrency = args.concurrency.unwrap_or(8);
    let rounds = args.rounds.unwrap_or(3);
    let prefetch = concurrency.max(32).min(u16::MAX as usize) as u16;
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    sqlx::query(
        "CREATE TABLE bench_steps (seq BIGINT PRIMARY KEY, key TEXT NOT NULL, qty BIGINT NOT NULL)",
    )
    .execute(pg.pool())
    .await
    .map_err(err)?;
    let connection = match Connection::connect(
        &eda_core::testing::amqp_url(),
        ConnectionProperties::default(),
    )
    .await
    {
        Ok(connection) => connection,
        Err(e) => {
            pg.drop_schema().await;
            return Err(format!("RabbitMQ is not reachable (see AMQP_URL): {e}"));
        }
    };
    let mut bench = Bench {
        pool: pg.pool().clone(),
        sides: Vec::new(),
        admin: connection.create_channel().await.map_err(err)?,
        next_seq: 0,
    };
    let declared = declare_sides(&mut bench, &pg, prefetch, concurrency).await;
    let measured = match declared {
        Ok(()) => measure(&mut bench, n, rounds).await,
        Err(e) => Err(e),
    };

    let Bench { sides, admin, .. } = bench;
    for side in sides {
        // `TestRabbitMq::cleanup` does not know the partitions.
        for queue in side.rmq.options().consumer().partition_queues() {
            let _ = admin
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        side.rmq.cleanup().await;
    }
    let _ = connection.close(200, "done".into()).await;
    pg.drop_schema().await;
    let measured = measured?;

    let rates = |runs: &[(f64, Usage)]| runs.iter().map(|r| r.0).collect::<Vec<_>>();
    let cpu_of = |runs: &[(f64, Usage)]| Usage::mean(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
    let (ordered, unordered) = (rates(&measured.ordered), rates(&measured.unordered));
    let (o, u) = (median(&ordered), median(&unordered));
    let per_round = ordered
        .iter()
        .zip(&unordered)
        .map(|(o, u)| format!("{:.2}", o / u))
        .collect::<Vec<_>>()
        .join(", ");
    let loads = partition_loads(0, n, PARTITIONS);
    let busiest = loads.iter().copied().max().unwrap_or(n).max(1);
    let keys_per_partition = {
        let mut k = vec![0; PARTITIONS as usize];
        for key in 0..KEYS {
            k[(ordering_slot(&key_of(key)) % PARTITIONS) as usize] += 1;
        }
        k
    };
    Ok(vec![Row {
        scenario: format!("consume/ordered {KEYS} keys vs unordered"),
        n,
        concurrency,
        eda_per_sec: o,
        baseline_per_sec: u,
        ratio_vs_baseline: o / u,
        peak_rss_mb: process_peak_rss_mb(),
        eda_peak_rss_mb: Some(measured.eda_rss),
        note: format!(
            "eda's consumer on a command with `key = key` ({KEYS} keys, round-robin; eda/s) \
             against the same command without a key (baseline/s), both published through eda's \
             publisher before the run; the ratio of the medians (goal: ≥ 0.5); each round's \
             ratio: {per_round}. Ordered: {PARTITIONS} ordered partitions (classic), one message \
             at a time each; keys per partition {keys_per_partition:?}, so the busiest one holds \
             {busiest} of {n} messages: were a handler call's latency the limit (the same \
             on both sides), that would cap the ratio at {:.2} (n / ({PARTITIONS} × busiest)); \
             on a machine whose cores are saturated, the CPU per message is the limit instead. \
             Unordered: the service queue (quorum), \
             prefetch {prefetch}, {concurrency} handlers at once. Handler: inbox + one INSERT \
             in a transaction, then ack; median of {rounds} rounds, alternating which side goes \
             first. CPU: ordered {}; unordered {}",
            n as f64 / (f64::from(PARTITIONS) * busiest as f64),
            cpu_of(&measured.ordered).brief(),
            cpu_of(&measured.unordered).brief(),
        ),
        ..Row::default()
    }])
}

/// The two services (ordered, unordered), each with its topology declared;
/// pushed as they are made, for the clean-up to find them whatever fails.
async fn declare_sides(
    bench: &mut Bench,
    pg: &TestPostgres,
    prefetch: u16,
    concurrency: usize,
) -> Result<(), String> {
    for (label, name) in [("ordered", KEYED), ("unordered", UNKEYED)] {
        let Some(rmq) = TestRabbitMq::start_with(|o: RabbitMqOptions| {
            o.prefetch(prefetch)
                .concurrency(concurrency)
                .queue_type(QueueType::Quorum)
                .ordered_partitions(PARTITIONS)
        })
        .await
        else {
            return Err("RabbitMQ is not reachable (see AMQP_URL)".into());
        };
        let builder = MessageBus::builder()
            .scope(module_path!())
            .adapter(pg.db.clone());
        let builder = if name == KEYED {
            builder.accept::<Keyed>()
        } else {
            builder.accept::<Unkeyed>()
        };
        let bus = builder.build().map_err(err)?;
        let publisher = rmq.rabbitmq.publisher();
        bench.sides.push(Side {
            label,
            name,
            rmq,
            bus,
            publisher,
        });
        let side = bench.sides.last().expect("just pushed");
        side.rmq
            .rabbitmq
            .declare_topology(&side.bus)
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// What the rounds measured.
struct Measured {
    ordered: Vec<(f64, Usage)>,
    unordered: Vec<(f64, Usage)>,
    /// The peak RSS over the runs.
    eda_rss: f64,
}

/// A warm-up of each side, then `rounds` rounds of both.
async fn measure(bench: &mut Bench, n: u64, rounds: u64) -> Result<Measured, String> {
    let mut measured = Measured {
        ordered: Vec::new(),
        unordered: Vec::new(),
        eda_rss: 0.0,
    };
    let warm = (n / 10).clamp(100, 1000);
    for side in 0..2 {
        let label = bench.sides[side].label;
        bench.run(side, &format!("warm-up {label}"), warm).await?;
    }
    for round in 1..=rounds {
        for side in side_order(round) {
            let label = bench.sides[side].label;
            reset_peak_rss();
            let run = bench
                .run(side, &format!("{label} {round}/{rounds}"), n)
                .await?;
            measured.eda_rss = measured.eda_rss.max(peak_rss_mb());
            if side == 0 {
                measured.ordered.push(run);
            } else {
                measured.unordered.push(run);
            }
        }
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_keys_round_robin() {
        assert_eq!(key_of(0), "key-0");
        assert_eq!(key_of(49), "key-49");
        assert_eq!(key_of(50), "key-0");
        let loads = partition_loads(0, 5000, PARTITIONS);
        assert_eq!(loads.iter().sum::<u64>(), 5000);
        // Every key has 100 messages: each partition holds a multiple.
        assert!(loads.iter().all(|l| l % 100 == 0), "{loads:?}");
    }

    #[test]
    fn rounds_alternate_the_first_side() {
        assert_eq!(side_order(1), [0, 1]);
        assert_eq!(side_order(2), [1, 0]);
    }

    #[test]
    fn the_payloads_are_the_same() {
        let keyed = messages(KEYED, 7, 1).unwrap();
        let unkeyed = messages(UNKEYED, 7, 1).unwrap();
        assert_eq!(keyed[0].payload, unkeyed[0].payload);
        assert_eq!(keyed[0].name, KEYED);
        assert_eq!(unkeyed[0].name, UNKEYED);
    }
}
