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
//! Each side publishes to an exchange of its own, with one queue bound to
//! the messages' routing key (so that they are routable and stored), which
//! must hold exactly `n` after each run: eda's is the service queue eda
//! declares for a service that handles them (nothing consumes it here),
//! the baseline's a queue declared by hand.
//!
//! **Queue types.** All of it runs twice in each round, on classic queues
//! and on quorum ones (a confirm then waits for the quorum's write): eda's
//! queue declared with [`RabbitMqOptions::queue_type`], the baseline's with
//! `x-queue-type: quorum` or without it. Each type has its row
//! (`relay/classic`, `relay/quorum`: eda against the baseline on the same
//! type), and `relay/quorum vs classic` gives eda's rate on quorum queues
//! as a ratio of its rate on classic ones (the goal: ≥ 0.7). The rounds
//! alternate which type goes first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_core::adapters::rabbitmq::{QueueType, RabbitMqOptions, properties};
use eda_core::prelude::*;
use eda_core::sqlx;
use eda_core::testing::{TestPostgres, TestRabbitMq};
use eda_core::{ExternalMessage, MessageBus, Metadata, OutboxRelay, RelayOptions};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, ExchangeKind};
use serde::{Deserialize, Serialize};

use super::consume::{KINDS, lane_order, queue_arguments, queue_options, quorum_vs_classic};
use super::stock::err;
use crate::Args;
use crate::report::{Row, median, process_peak_rss_mb};

const NAME: &str = "bench.relayed";
const WINDOW: usize = 256;

/// What the relay publishes, as a service that receives it declares it.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.relayed", external)]
pub(crate) struct Relayed {
    seq: u64,
}

/// That service's handler: eda binds its queue to [`NAME`] for it. Nothing
/// consumes the queue here.
#[event_handler]
async fn receive_relayed(_: &Relayed) {}

/// The exchanges and queues of one type (of [`KINDS`], in order).
struct Lane {
    /// eda's exchange, and the service queue of [`receive_relayed`]'s
    /// service, bound to [`NAME`].
    rmq: TestRabbitMq,
    /// A confirm channel on `rmq`'s connection: the baseline publishes on
    /// it, and the queues are counted and purged on it.
    channel: Channel,
    baseline_exchange: String,
    baseline_queue: String,
}

impl Lane {
    fn eda_queue(&self) -> &str {
        self.rmq.options().consumer().queue_name()
    }

    async fn received(&self, queue: &str) -> Result<u32, String> {
        let queue = self
            .channel
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
        Ok(queue.message_count())
    }

    async fn check_and_purge(&self, queue: &str, n: u64, who: &str) -> Result<(), String> {
        // Confirmed means stored: the count is exact once every confirm came.
        let received = self.received(queue).await?;
        if u64::from(received) != n {
            return Err(format!("{who}: {received} messages arrived, expected {n}"));
        }
        self.channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Commits `n` outbox rows, then times the relay until all are confirmed.
    async fn eda(&self, pg: &TestPostgres, n: u64) -> Result<f64, String> {
        sqlx::query(
            "INSERT INTO eda_outbox (message_id, name, payload, correlation_id, created_at) \
             SELECT gen_random_uuid(), $1, '{\"seq\":' || i || '}', gen_random_uuid(), now() \
             FROM generate_series(1, $2) AS i",
        )
        .bind(NAME)
        .bind(n as i64)
        .execute(pg.pool())
        .await
        .map_err(err)?;
        let start = Instant::now();
        let relay = OutboxRelay::spawn(
            Arc::new(pg.db.clone()),
            self.rmq.rabbitmq.publisher(),
            RelayOptions::default(),
        );
        let deadline = start + Duration::from_secs(120);
        while relay.metrics().published() < n {
            if Instant::now() > deadline {
                let published = relay.metrics().published();
                relay.shutdown().await;
                return Err(format!("the relay published {published} of {n}"));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let elapsed = start.elapsed();
        relay.shutdown().await;
        self.check_and_purge(self.eda_queue(), n, "eda").await?;
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// Publishes the same messages by hand, with confirms.
    async fn baseline(&self, messages: &[ExternalMessage]) -> Result<f64, String> {
        let start = Instant::now();
        for window in messages.chunks(WINDOW) {
            let mut confirms = Vec::with_capacity(window.len());
            for m in window {
                let confirm = self
                    .channel
                    .basic_publish(
                        self.baseline_exchange.as_str().into(),
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
        self.check_and_purge(&self.baseline_queue, messages.len() as u64, "baseline")
            .await?;
        Ok(messages.len() as f64 / elapsed.as_secs_f64())
    }
}

/// A classic lane and a quorum lane: eda's topology declared for the
/// service that handles [`Relayed`], the baseline's exchange and queue. Pushed as they are
/// made, for the clean-up to find them whatever fails.
async fn declare_lanes(lanes: &mut Vec<Lane>, bus: &MessageBus) -> Result<(), String> {
    for kind in KINDS {
        let Some(rmq) = TestRabbitMq::start_with(|o: RabbitMqOptions| o.queue_type(kind)).await
        else {
            return Err("RabbitMQ is not reachable (see AMQP_URL)".into());
        };
        let channel = match rmq.rabbitmq.channel().await {
            Ok(channel) => channel,
            Err(e) => {
                rmq.cleanup().await;
                return Err(err(e));
            }
        };
        let queue = rmq.options().consumer().queue_name();
        lanes.push(Lane {
            baseline_exchange: format!("{queue}.baseline.events"),
            baseline_queue: format!("{queue}.baseline"),
            rmq,
            channel,
        });
        let lane = lanes.last().expect("just pushed");
        lane.rmq.rabbitmq.declare_topology(bus).await.map_err(err)?;
        let channel = &lane.channel;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        channel
            .exchange_declare(
                lane.baseline_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        channel
            .queue_declare(
                lane.baseline_queue.as_str().into(),
                queue_options(),
                queue_arguments(kind),
            )
            .await
            .map_err(err)?;
        channel
            .queue_bind(
                lane.baseline_queue.as_str().into(),
                lane.baseline_exchange.as_str().into(),
                NAME.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// Each type's rates, eda's and the baseline's, round by round.
type Rates = [(Vec<f64>, Vec<f64>); 2];

/// The warm-ups, then `rounds` rounds of baseline and eda on each type.
async fn measure(
    pg: &TestPostgres,
    lanes: &[Lane],
    messages: &[ExternalMessage],
    rounds: u64,
) -> Result<Rates, String> {
    let n = messages.len() as u64;
    let warm = (n / 10).clamp(100, 2000);
    for lane in lanes {
        lane.baseline(&messages[..warm as usize]).await?;
        lane.eda(pg, warm).await?;
    }
    let mut rates: Rates = Default::default();
    for round in 1..=rounds {
        for i in lane_order(round) {
            eprint!("\r\x1b[2Krelay: round {round}/{rounds}, {}", KINDS[i]);
            let (edas, baselines) = &mut rates[i];
            baselines.push(lanes[i].baseline(messages).await?);
            edas.push(lanes[i].eda(pg, n).await?);
        }
    }
    eprint!("\r\x1b[2K");
    Ok(rates)
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(20_000);
    let rounds = args.rounds.unwrap_or(2);
    let Some(pg) = TestPostgres::start().await else {
        return Err("PostgreSQL is not reachable (see DATABASE_URL)".into());
    };
    // The receiving service's: its queue is bound to `NAME`.
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(pg.db.clone())
        .build()
        .map_err(err)?;
    let messages: Vec<ExternalMessage> = (1..=n)
        .map(|i| ExternalMessage {
            name: NAME.into(),
            metadata: Metadata::new(),
            payload: format!("{{\"seq\":{i}}}").into_bytes(),
            trace: Default::default(),
        })
        .collect();

    let mut lanes = Vec::new();
    let measured = match declare_lanes(&mut lanes, &bus).await {
        Ok(()) => measure(&pg, &lanes, &messages, rounds).await,
        Err(e) => Err(e),
    };
    for lane in lanes {
        let _ = lane
            .channel
            .queue_delete(lane.baseline_queue.as_str().into(), Default::default())
            .await;
        let _ = lane
            .channel
            .exchange_delete(lane.baseline_exchange.as_str().into(), Default::default())
            .await;
        let _ = lane.channel.close(200, "done".into()).await;
        lane.rmq.cleanup().await;
    }
    pg.drop_schema().await;
    let [classic, quorum] = measured?;

    let mut rows: Vec<Row> = KINDS
        .iter()
        .zip([&classic, &quorum])
        .map(|(kind, (edas, baselines))| {
            let (eda, baseline) = (median(edas), median(baselines));
            Row {
                scenario: format!("relay/{kind}"),
                n,
                concurrency: 1,
                eda_per_sec: eda,
                baseline_per_sec: baseline,
                ratio_vs_baseline: eda / baseline,
                peak_rss_mb: process_peak_rss_mb(),
                note: format!(
                    "{kind} queues (eda: RabbitMqOptions::queue_type(QueueType::{kind:?}), its service \
                     queue; baseline: a queue declared {}); eda: OutboxRelay draining {n} \
                     committed Postgres outbox rows (reads, publishes, marks sent); baseline: \
                     lapin on a confirm channel, the same messages and properties, windows of \
                     {WINDOW} (each send awaited, then the window's confirms); median of \
                     {rounds} interleaved rounds",
                    if *kind == QueueType::Quorum {
                        "with x-queue-type: quorum"
                    } else {
                        "without x-queue-type"
                    },
                ),
                ..Row::default()
            }
        })
        .collect();
    rows.push(quorum_vs_classic(
        "relay",
        n,
        1,
        (&quorum.0, &classic.0),
        (&quorum.1, &classic.1),
        None,
    ));
    Ok(rows)
}
