//! `relay`: the outbox relay's publish rate, against raw lapin publishing
//! the same messages with confirms (issue 4's relay goal: ≥ 0.8×).
//!
//! - eda: `n` rows committed to the Postgres outbox beforehand (untimed);
//!   an [`OutboxRelay`] (eda's Postgres store, eda's RabbitMQ publisher,
//!   default options) is started, and the run lasts until the broker has
//!   confirmed the last one. The relay's work includes reading the rows and
//!   marking them sent.
//! - baseline: lapin by hand, on a confirm channel, the same messages with
//!   the same properties, as a competent user would publish a backlog:
//!   windows of 256 (the relay's batch), each message's send awaited, then
//!   the window's confirms.
//!
//! A queue bound to the messages' routing key receives them (so they are
//! routable), and must hold exactly `n` after each run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_core::adapters::rabbitmq::properties;
use eda_core::sqlx;
use eda_core::testing::{TestPostgres, TestRabbitMq};
use eda_core::{ExternalMessage, Metadata, OutboxRelay, RelayOptions};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};

use super::stock::err;
use crate::Args;
use crate::report::{Row, median, process_peak_rss_mb};

const NAME: &str = "bench.relayed";
const WINDOW: usize = 256;

struct Bench {
    pg: TestPostgres,
    rmq: TestRabbitMq,
    channel: Channel,
    observer: String,
}

impl Bench {
    async fn received(&self) -> Result<u32, String> {
        let queue = self
            .channel
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
        Ok(queue.message_count())
    }

    async fn check_and_purge(&self, n: u64, who: &str) -> Result<(), String> {
        // Confirmed means stored: the count is exact once every confirm came.
        let received = self.received().await?;
        if u64::from(received) != n {
            return Err(format!("{who}: {received} messages arrived, expected {n}"));
        }
        self.channel
            .queue_purge(self.observer.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Commits `n` outbox rows, then times the relay until all are confirmed.
    async fn eda(&self, n: u64) -> Result<f64, String> {
        sqlx::query(
            "INSERT INTO eda_outbox (message_id, name, payload, correlation_id, created_at) \
             SELECT gen_random_uuid(), $1, '{\"seq\":' || i || '}', gen_random_uuid(), now() \
             FROM generate_series(1, $2) AS i",
        )
        .bind(NAME)
        .bind(n as i64)
        .execute(self.pg.pool())
        .await
        .map_err(err)?;
        let start = Instant::now();
        let relay = OutboxRelay::spawn(
            Arc::new(self.pg.db.clone()),
            self.rmq.rabbitmq.publisher(),
            RelayOptions::default(),
        );
        let deadline = start + Duration::from_secs(120);
        while relay.metrics().published() < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "the relay published {} of {n}",
                    relay.metrics().published()
                ));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let elapsed = start.elapsed();
        relay.shutdown().await;
        self.check_and_purge(n, "eda").await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// Publishes the same messages by hand, with confirms.
    async fn baseline(&self, messages: &[ExternalMessage]) -> Result<f64, String> {
        let exchange = self.rmq.options().consumer().exchange_name();
        let start = Instant::now();
        for window in messages.chunks(WINDOW) {
            let mut confirms = Vec::with_capacity(window.len());
            for m in window {
                let confirm = self
                    .channel
                    .basic_publish(
                        exchange.into(),
                        m.name.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &m.payload,
                        properties(m),
                    )
                    .await
                    .map_err(err)?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                match confirm.await.map_err(err)? {
                    Confirmation::Ack(None) => {}
                    other => return Err(format!("baseline: not confirmed: {other:?}")),
                }
            }
        }
        let elapsed = start.elapsed();
        self.check_and_purge(messages.len() as u64, "baseline")
            .await?;
        Ok(messages.len() as f64 / elapsed.as_secs_f64())
    }
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(20_000);
    let rounds = args.rounds.unwrap_or(2);
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    let Some(rmq) = TestRabbitMq::start().await else {
        return Err("RabbitMQ is not reachable (see AMQP_URL)".into());
    };
    let channel = rmq.rabbitmq.channel().await.map_err(err)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err)?;
    let observer = format!("{}.observer", rmq.options().consumer().queue_name());
    channel
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
    channel
        .queue_bind(
            observer.as_str().into(),
            rmq.options().consumer().exchange_name().into(),
            NAME.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let bench = Bench {
        pg,
        rmq,
        channel,
        observer,
    };
    let messages: Vec<ExternalMessage> = (1..=n)
        .map(|i| ExternalMessage {
            name: NAME.into(),
            metadata: Metadata::new(),
            payload: format!("{{\"seq\":{i}}}").into_bytes(),
            trace: Default::default(),
        })
        .collect();

    let warm = (n / 10).clamp(100, 2000);
    bench.baseline(&messages[..warm as usize]).await?;
    bench.eda(warm).await?;
    let (mut edas, mut baselines) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprint!("\r\x1b[2Krelay: round {round}/{rounds}");
        baselines.push(bench.baseline(&messages).await?);
        edas.push(bench.eda(n).await?);
    }
    eprint!("\r\x1b[2K");

    let Bench {
        pg,
        rmq,
        channel,
        observer,
    } = bench;
    let _ = channel
        .queue_delete(observer.as_str().into(), Default::default())
        .await;
    rmq.cleanup().await;
    pg.drop_schema().await;

    let (eda, baseline) = (median(&edas), median(&baselines));
    Ok(vec![Row {
        scenario: "relay".into(),
        n,
        concurrency: 1,
        eda_per_sec: eda,
        baseline_per_sec: baseline,
        ratio_vs_baseline: eda / baseline,
        peak_rss_mb: process_peak_rss_mb(),
        note: format!(
            "eda: OutboxRelay draining {n} committed Postgres outbox rows (reads, publishes, marks \
             sent); baseline: lapin on a confirm channel, the same messages and properties, windows \
             of {WINDOW} (each send awaited, then the window's confirms); median of {rounds} \
             interleaved rounds"
        ),
        ..Row::default()
    }])
}
