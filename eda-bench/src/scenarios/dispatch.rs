//! `dispatch`: the bus itself, in memory, no I/O.
//!
//! - `dispatch/command`: `bus.handle(Noop { n })`, one handler that takes an
//!   in-memory unit of work and commits it. Baseline: a hand-written
//!   dispatcher: a `HashMap<TypeId, Vec<Box<dyn Fn>>>` lookup, the handler
//!   called through its boxed future with a hand-written unit of work
//!   (commit: one atomic increment, like eda's in-memory database), the
//!   (empty) events it collected queued and dispatched.
//! - `dispatch/event_fanout_3`: `bus.publish(Envelope::new(Happened { n }))`,
//!   three no-op handlers. Baseline: the event boxed, queued and popped, its
//!   handlers looked up by `TypeId` and called one after the other, each
//!   through its boxed future, with a vector to collect the events they
//!   raise.
//!
//! What eda does and the baseline does not: a message id and timestamp per
//! message (`Envelope::new`), a report of the handlers that ran, tracing
//! spans that are disabled, the retry bookkeeping.
//!
//! A second baseline, "with ids", does the part of that work every service
//! between services must do: it makes each message's metadata (a UUID v7
//! and a timestamp, with eda's own `Metadata::new`, 30-odd ns) and hands
//! it to the handler with the message, as a hand-written dispatcher that
//! writes an outbox would. Both ratios are reported.
//!
//! Runs on the calling task (`--concurrency 1`, the default) or on `C`
//! tasks of the multi-threaded runtime; 21 interleaved rounds (each takes
//! milliseconds, and a few noisy ones would move a median of 5), median kept.
//! Each round's own ratio is reported too (median, lowest, highest): eda
//! and its baseline run next to each other in a round, so a machine that
//! slows down for a while moves both.

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Args;
use crate::report::{Row, median, peak_rss_mb, process_peak_rss_mb, reset_peak_rss};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.dispatch.noop", output = u64)]
pub(crate) struct Noop {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.dispatch.happened")]
pub(crate) struct Happened {
    n: u64,
}

#[derive(UnitOfWork)]
pub(crate) struct NoopUow {
    tx: UowTransaction,
}

#[command_handler]
async fn noop(cmd: &Noop, uow: &mut NoopUow) -> Result<u64, BoxError> {
    uow.commit().await?;
    Ok(black_box(cmd.n))
}

/// The parts of a command's cost: one without a unit of work.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.dispatch.bare", output = u64)]
pub(crate) struct Bare {
    n: u64,
}

#[command_handler]
async fn bare(cmd: &Bare) -> Result<u64, BoxError> {
    Ok(black_box(cmd.n))
}

/// The parts of an event's cost: one with a single handler.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.dispatch.single")]
pub(crate) struct Single {
    n: u64,
}

#[event_handler]
async fn only(event: &Single) {
    black_box(event.n);
}

#[event_handler]
async fn first(event: &Happened) {
    black_box(event.n);
}

#[event_handler]
async fn second(event: &Happened) {
    black_box(event.n);
}

#[event_handler]
async fn third(event: &Happened) {
    black_box(event.n);
}

// ---- the same work, by hand ----

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type AnyMessage = Box<dyn Any + Send + Sync>;

/// The hand-written in-memory database: it counts commits.
#[derive(Default)]
struct Database {
    commits: AtomicU64,
}

/// The hand-written unit of work: the events raised, kept on commit.
struct Uow<'a> {
    db: &'a Database,
    raised: Vec<AnyMessage>,
    committed: bool,
}

impl Uow<'_> {
    fn commit(&mut self) {
        self.db.commits.fetch_add(1, Ordering::SeqCst);
        self.committed = true;
    }
}

type CommandHandler = Box<
    dyn for<'a> Fn(&'a (dyn Any + Send + Sync), &'a mut Uow<'_>) -> BoxFuture<'a, u64>
        + Send
        + Sync,
>;
type EventHandler = Box<
    dyn for<'a> Fn(&'a (dyn Any + Send + Sync), &'a mut Vec<AnyMessage>) -> BoxFuture<'a, ()>
        + Send
        + Sync,
>;

struct Baseline {
    db: Database,
    commands: HashMap<TypeId, CommandHandler>,
    events: HashMap<TypeId, Vec<EventHandler>>,
}

impl Baseline {
    fn new() -> Self {
        let mut commands: HashMap<TypeId, CommandHandler> = HashMap::new();
        commands.insert(
            TypeId::of::<Noop>(),
            Box::new(|m, uow| {
                Box::pin(async move {
                    let cmd = m.downcast_ref::<Noop>().expect("a Noop");
                    uow.commit();
                    black_box(cmd.n)
                })
            }),
        );
        let fanout: Vec<EventHandler> = (0..3)
            .map(|_| -> EventHandler {
                Box::new(|m, _raised| {
                    Box::pin(async move {
                        black_box(m.downcast_ref::<Happened>().expect("a Happened").n);
                    })
                })
            })
            .collect();
        let single: EventHandler = Box::new(|m, _raised| {
            Box::pin(async move {
                black_box(m.downcast_ref::<Single>().expect("a Single").n);
            })
        });
        let mut events = HashMap::new();
        events.insert(TypeId::of::<Happened>(), fanout);
        events.insert(TypeId::of::<Single>(), vec![single]);
        Baseline {
            db: Database::default(),
            commands,
            events,
        }
    }

    /// The command with metadata made for it, as eda makes.
    async fn command_with_id<C: Any + Send + Sync>(&self, cmd: C) -> Option<u64> {
        let envelope = Envelope {
            metadata: black_box(Metadata::new()),
            message: cmd,
        };
        self.command_ref(&envelope.message).await
    }

    async fn command<C: Any + Send + Sync>(&self, cmd: C) -> Option<u64> {
        self.command_ref(&cmd).await
    }

    async fn command_ref<C: Any + Send + Sync>(&self, cmd: &C) -> Option<u64> {
        let handler = self.commands.get(&TypeId::of::<C>())?;
        let mut uow = Uow {
            db: &self.db,
            raised: Vec::new(),
            committed: false,
        };
        let out = handler(cmd, &mut uow).await;
        if uow.committed && !uow.raised.is_empty() {
            self.events(uow.raised.into()).await;
        }
        Some(out)
    }

    /// The event in an envelope with its metadata, as eda's callers make.
    async fn event_with_id<E: Any + Send + Sync>(&self, event: E) -> usize {
        self.event(black_box(Envelope::new(event)).message).await
    }

    /// Returns how many handlers ran.
    async fn event<E: Any + Send + Sync>(&self, event: E) -> usize {
        let mut queue = VecDeque::new();
        queue.push_back(Box::new(event) as AnyMessage);
        self.events(queue).await
    }

    async fn events(&self, mut queue: VecDeque<AnyMessage>) -> usize {
        let mut ran = 0;
        while let Some(event) = queue.pop_front() {
            let mut raised = Vec::new();
            if let Some(handlers) = self.events.get(&(*event).type_id()) {
                for handler in handlers {
                    handler(&*event, &mut raised).await;
                    ran += 1;
                }
            }
            queue.extend(raised);
        }
        ran
    }
}

/// Runs `op(i)` for `i` in `0..n` on `concurrency` tasks; returns the rate.
async fn timed<F, Fut>(n: u64, concurrency: usize, op: F) -> Result<f64, String>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let start = Instant::now();
    if concurrency <= 1 {
        for i in 0..n {
            op(i).await?;
        }
    } else {
        let op = Arc::new(op);
        let mut tasks = tokio::task::JoinSet::new();
        let each = n.div_ceil(concurrency as u64);
        for t in 0..concurrency as u64 {
            let op = op.clone();
            tasks.spawn(async move {
                for i in t * each..((t + 1) * each).min(n) {
                    op(i).await?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn run(args: &Args) -> Result<Vec<Row>, String> {
    let n = args.n.unwrap_or(200_000);
    let concurrency = args.concurrency.unwrap_or(1);
    let rounds = args.rounds.unwrap_or(21);
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(db.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let baseline = Arc::new(Baseline::new());

    let eda_command = |bus: MessageBus| {
        move |i: u64| {
            let bus = bus.clone();
            async move {
                match bus.handle(Noop { n: i }).await {
                    Ok(out) if out == i => Ok(()),
                    Ok(out) => Err(format!("eda: command {i} returned {out}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    let baseline_command = |b: Arc<Baseline>| {
        move |i: u64| {
            let b = b.clone();
            async move {
                match b.command(Noop { n: i }).await {
                    Some(out) if out == i => Ok(()),
                    other => Err(format!("baseline: command {i} returned {other:?}")),
                }
            }
        }
    };
    let eda_event = |bus: MessageBus| {
        move |i: u64| {
            let bus = bus.clone();
            async move {
                let report = bus.publish(Envelope::new(Happened { n: i })).await;
                if report.handled == 3 && report.is_ok() {
                    Ok(())
                } else {
                    Err(format!("eda: event {i}: {report:?}"))
                }
            }
        }
    };
    let baseline_event = |b: Arc<Baseline>| {
        move |i: u64| {
            let b = b.clone();
            async move {
                match b.event(Happened { n: i }).await {
                    3 => Ok(()),
                    ran => Err(format!("baseline: event {i}: {ran} handlers ran")),
                }
            }
        }
    };
    let baseline_command_ids = |b: Arc<Baseline>| {
        move |i: u64| {
            let b = b.clone();
            async move {
                match b.command_with_id(Noop { n: i }).await {
                    Some(out) if out == i => Ok(()),
                    other => Err(format!("baseline with ids: command {i} returned {other:?}")),
                }
            }
        }
    };
    let baseline_event_ids = |b: Arc<Baseline>| {
        move |i: u64| {
            let b = b.clone();
            async move {
                match b.event_with_id(Happened { n: i }).await {
                    3 => Ok(()),
                    ran => Err(format!("baseline with ids: event {i}: {ran} handlers ran")),
                }
            }
        }
    };

    // Warm up: lazy statics, tracing call sites, the allocator's caches.
    let warm = (n / 10).max(1000);
    timed(warm, concurrency, eda_command(bus.clone())).await?;
    timed(warm, concurrency, baseline_command(baseline.clone())).await?;
    timed(warm, concurrency, eda_event(bus.clone())).await?;
    timed(warm, concurrency, baseline_event(baseline.clone())).await?;
    timed(warm, concurrency, baseline_command_ids(baseline.clone())).await?;
    timed(warm, concurrency, baseline_event_ids(baseline.clone())).await?;

    let rounds_done = Arc::new(AtomicU64::new(0));
    let progress = crate::drive::Progress::start("dispatch rounds", rounds, {
        let done = rounds_done.clone();
        move || done.load(Ordering::Relaxed)
    });
    let (mut ec, mut bc, mut ee, mut be) = (vec![], vec![], vec![], vec![]);
    let (mut bci, mut bei) = (vec![], vec![]);
    let mut eda_rss: f64 = 0.0;
    for _ in 0..rounds {
        bc.push(timed(n, concurrency, baseline_command(baseline.clone())).await?);
        reset_peak_rss();
        ec.push(timed(n, concurrency, eda_command(bus.clone())).await?);
        eda_rss = eda_rss.max(peak_rss_mb());
        bci.push(timed(n, concurrency, baseline_command_ids(baseline.clone())).await?);
        be.push(timed(n, concurrency, baseline_event(baseline.clone())).await?);
        bei.push(timed(n, concurrency, baseline_event_ids(baseline.clone())).await?);
        reset_peak_rss();
        ee.push(timed(n, concurrency, eda_event(bus.clone())).await?);
        eda_rss = eda_rss.max(peak_rss_mb());
        rounds_done.fetch_add(1, Ordering::Relaxed);
    }
    drop(progress);

    // The parts of eda's costs, in ns per message (once, after the rounds).
    let ns = |per_sec: f64| 1e9 / per_sec;
    let metadata = {
        let start = Instant::now();
        for _ in 0..n {
            black_box(eda_core::Metadata::new());
        }
        start.elapsed().as_nanos() as f64 / n as f64
    };
    let bare_ns = ns(timed(n, concurrency, {
        let bus = bus.clone();
        move |i: u64| {
            let bus = bus.clone();
            async move {
                match bus.handle(Bare { n: i }).await {
                    Ok(out) if out == i => Ok(()),
                    other => Err(format!("eda: bare command {i}: {other:?}")),
                }
            }
        }
    })
    .await?);
    let single_ns = ns(timed(n, concurrency, {
        let bus = bus.clone();
        move |i: u64| {
            let bus = bus.clone();
            async move {
                match bus.publish(Envelope::new(Single { n: i })).await.handled {
                    1 => Ok(()),
                    ran => Err(format!("eda: single event {i}: {ran} handlers ran")),
                }
            }
        }
    })
    .await?);
    let baseline_single_ns = ns(timed(n, concurrency, {
        let b = baseline.clone();
        move |i: u64| {
            let b = b.clone();
            async move {
                match b.event(Single { n: i }).await {
                    1 => Ok(()),
                    ran => Err(format!("baseline: single event {i}: {ran} handlers ran")),
                }
            }
        }
    })
    .await?);
    let command_parts = format!(
        "eda {:.0} ns per command = Metadata::new {metadata:.0} + the rest of a command \
         without a unit of work {:.0} + the in-memory unit of work {:.0}; baseline {:.0} ns",
        ns(median(&ec)),
        bare_ns - metadata,
        ns(median(&ec)) - bare_ns,
        ns(median(&bc)),
    );
    let per_handler = |one: f64, three: f64| (three - one) / 2.0;
    let event_parts = format!(
        "eda {:.0} ns per event with 1 handler, {:.0} with 3: {:.0} per handler, {:.0} per \
         event of which Metadata::new {metadata:.0}; baseline {:.0} and {:.0}: {:.0} per handler, \
         {:.0} per event",
        single_ns,
        ns(median(&ee)),
        per_handler(single_ns, ns(median(&ee))),
        single_ns - per_handler(single_ns, ns(median(&ee))),
        baseline_single_ns,
        ns(median(&be)),
        per_handler(baseline_single_ns, ns(median(&be))),
        baseline_single_ns - per_handler(baseline_single_ns, ns(median(&be))),
    );

    // Every command committed its unit of work, in both.
    // (The baseline runs twice: without and with ids.)
    let commands = warm + rounds * n;
    if db.commits() != commands || baseline.db.commits.load(Ordering::SeqCst) != 2 * commands {
        return Err(format!(
            "expected {commands} commits in eda and twice as many in the baseline, eda made {}, \
             the baseline {}",
            db.commits(),
            baseline.db.commits.load(Ordering::SeqCst)
        ));
    }

    // Each round's own ratio too: eda and the baseline ran one after the
    // other in it, so a machine that slows down for a while (a shared VM)
    // moves both, where it can move one median and not the other.
    let per_round = |eda: &[f64], base: &[f64]| {
        let ratios: Vec<f64> = eda.iter().zip(base).map(|(e, b)| e / b).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        format!(
            "each round's own ratio: median {:.2} [{low:.2}-{high:.2}]",
            median(&ratios)
        )
    };
    let row = |scenario: &str, eda: &[f64], base: &[f64], note: &str| Row {
        scenario: scenario.into(),
        n,
        concurrency,
        eda_per_sec: median(eda),
        baseline_per_sec: median(base),
        ratio_vs_baseline: median(eda) / median(base),
        peak_rss_mb: process_peak_rss_mb(),
        eda_peak_rss_mb: Some(eda_rss),
        note: format!(
            "{note}; median of {rounds} interleaved rounds; {}",
            per_round(eda, base)
        ),
        ..Row::default()
    };
    Ok(vec![
        row(
            "dispatch/command",
            &ec,
            &bc,
            &format!(
                "baseline: TypeId map, boxed handler future, hand-written in-memory unit of \
                 work. {command_parts}"
            ),
        ),
        row(
            "dispatch/command, baseline with ids",
            &ec,
            &bci,
            "the same baseline, which also makes each command's metadata (id, timestamp) as eda \
             must",
        ),
        row(
            "dispatch/event_fanout_3, baseline with ids",
            &ee,
            &bei,
            "the same baseline, with each event in an envelope with its metadata, as eda's \
             callers make",
        ),
        row(
            "dispatch/event_fanout_3",
            &ee,
            &be,
            &format!(
                "baseline: event boxed and queued, 3 handlers by TypeId, boxed futures. \
                 {event_parts}"
            ),
        ),
    ])
}
