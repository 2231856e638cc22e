//! The cost of the bus, against a hand-written dispatcher doing the same work
//! in the same run.
//!
//! - `command`: one command, one no-op handler that commits an in-memory unit
//!   of work. Baseline: a `HashMap<TypeId, Box<dyn Fn>>` lookup, the call (a
//!   boxed future), the (empty) event collection. A second baseline,
//!   `command/baseline_with_ids`, also does what eda must and the first
//!   does not: it makes the command's metadata (a UUID v7 and a timestamp,
//!   with eda's own `Metadata::new`) and commits a hand-written in-memory
//!   unit of work (one atomic increment, as the in-memory database counts
//!   its commits), as `eda-bench dispatch`'s baseline with ids does.
//!   `event_fanout_3/baseline_with_ids` likewise puts each event in an
//!   envelope with its metadata (`Envelope::new`), as eda's callers do.
//! - `event_fanout_3`: one event, three no-op handlers. Baseline: the event
//!   boxed, queued and popped, the handlers looked up by `TypeId` and called.
//!
//! Goal (issue 2): the bus costs at most 1.5x the baseline per message, with
//! no heap allocation per message beyond the message and its futures. The
//! allocations are counted by a global allocator and printed before the
//! timings: `cargo bench -p eda-core --bench dispatch`.
#![allow(missing_docs)]

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use eda_core::Envelope;
use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[path = "../tests/common/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

// ---- the service, through eda ----

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.noop", output = u64)]
pub struct Noop {
    pub n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.bare", output = u64)]
pub struct Bare {
    pub n: u64,
}

#[command_handler]
async fn bare(cmd: &Bare) -> Result<u64, BoxError> {
    Ok(black_box(cmd.n))
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.happened")]
pub struct Happened {
    pub n: u64,
}

#[derive(UnitOfWork)]
pub struct BenchUow {
    #[uow(transaction)]
    tx: UowTransaction,
}

#[command_handler]
async fn noop(cmd: &Noop, uow: &mut BenchUow) -> Result<u64, BoxError> {
    uow.commit().await?;
    Ok(black_box(cmd.n))
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
type Handler = Box<
    dyn for<'a> Fn(
            &'a (dyn Any + Send + Sync),
            &'a mut Vec<Box<dyn Any + Send + Sync>>,
        ) -> BoxFuture<'a, u64>
        + Send
        + Sync,
>;

struct Baseline {
    handlers: HashMap<TypeId, Vec<Handler>>,
    commits: AtomicU64,
}

impl Baseline {
    fn new() -> Self {
        let mut handlers: HashMap<TypeId, Vec<Handler>> = HashMap::new();
        handlers.insert(
            TypeId::of::<Noop>(),
            vec![Box::new(|m, _events| {
                Box::pin(async move { black_box(m.downcast_ref::<Noop>().unwrap().n) })
            })],
        );
        let fanout: Vec<Handler> = (0..3)
            .map(|_| -> Handler {
                Box::new(|m, _events| {
                    Box::pin(async move { black_box(m.downcast_ref::<Happened>().unwrap().n) })
                })
            })
            .collect();
        handlers.insert(TypeId::of::<Happened>(), fanout);
        Baseline {
            handlers,
            commits: AtomicU64::new(0),
        }
    }

    async fn command(&self, cmd: Noop) -> u64 {
        self.command_ref(&cmd).await
    }

    /// The command with its metadata, and a unit of work committed.
    async fn command_with_ids(&self, cmd: Noop) -> u64 {
        let envelope = Envelope {
            metadata: black_box(eda_core::Metadata::new()),
            message: cmd,
        };
        let out = self.command_ref(&envelope.message).await;
        self.commits.fetch_add(1, Ordering::SeqCst);
        out
    }

    async fn command_ref(&self, cmd: &Noop) -> u64 {
        let mut events = Vec::new();
        let out = (self.handlers[&TypeId::of::<Noop>()][0])(cmd, &mut events).await;
        for event in events {
            self.event_boxed(event).await;
        }
        out
    }

    /// The event in an envelope with its metadata, as eda's callers make.
    async fn event_with_ids(&self, event: Happened) {
        self.event(black_box(Envelope::new(event)).message).await
    }

    async fn event(&self, event: Happened) {
        self.event_boxed(Box::new(event)).await
    }

    async fn event_boxed(&self, event: Box<dyn Any + Send + Sync>) {
        let mut queue = VecDeque::new();
        queue.push_back(event);
        while let Some(event) = queue.pop_front() {
            let mut raised = Vec::new();
            if let Some(handlers) = self.handlers.get(&(*event).type_id()) {
                for h in handlers {
                    h(&*event, &mut raised).await;
                }
            }
            queue.extend(raised);
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = MessageBus::builder()
        .adapter(InMemoryDatabase::new())
        .build()
        .unwrap();
    let baseline = Baseline::new();

    // Allocations per message, outside the timed loops.
    let ops = 10_000;
    let allocs = [
        (
            "eda command",
            measure_allocs(&rt, ops, |n| {
                let bus = bus.clone();
                async move {
                    bus.handle(Noop { n }).await.unwrap();
                }
            }),
        ),
        (
            "baseline command",
            measure_allocs(&rt, ops, |n| {
                let b = &baseline;
                async move {
                    b.command(Noop { n }).await;
                }
            }),
        ),
        (
            "eda event fan-out to 3",
            measure_allocs(&rt, ops, |n| {
                let bus = bus.clone();
                async move {
                    bus.publish(Envelope::new(Happened { n })).await;
                }
            }),
        ),
        (
            "baseline event fan-out to 3",
            measure_allocs(&rt, ops, |n| {
                let b = &baseline;
                async move {
                    b.event(Happened { n }).await;
                }
            }),
        ),
    ];
    for (name, per_op) in allocs {
        println!("allocations per message, {name}: {per_op:.2}");
    }

    let mut group = c.benchmark_group("dispatch");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("command/eda", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    black_box(bus.handle(Noop { n }).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("parts/metadata", |b| {
        b.iter(|| black_box(eda_core::Metadata::new()))
    });
    group.bench_function("parts/command_without_uow", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    black_box(bus.handle(Bare { n }).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("command/baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    black_box(baseline.command(Noop { n }).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("command/baseline_with_ids", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    black_box(baseline.command_with_ids(Noop { n }).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("event_fanout_3/eda", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    black_box(bus.publish(Envelope::new(Happened { n })).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("event_fanout_3/baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    baseline.event(Happened { n }).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("event_fanout_3/baseline_with_ids", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for n in 0..iters {
                    baseline.event_with_ids(Happened { n }).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn measure_allocs<'a, F, Fut>(rt: &tokio::runtime::Runtime, ops: u64, mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()> + 'a,
{
    rt.block_on(async {
        // Warm up (lazy statics, tracing callsites, map growth).
        for n in 0..100 {
            op(n).await;
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for n in 0..ops {
            op(n).await;
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / ops as f64
    })
}

criterion_group!(benches, bench);
criterion_main!(benches);
