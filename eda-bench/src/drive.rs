//! Runs `n` operations with `concurrency` workers, timing each, with a
//! progress line on stderr for runs longer than a second.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Throughput and latencies of one run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) per_sec: f64,
    /// Per-operation latencies, sorted.
    pub(crate) latencies: Vec<Duration>,
}

impl Run {
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Calls `op(i)` for `i` in `0..n`, `concurrency` at a time; `op` returning
/// an error stops the run with it.
pub(crate) async fn run<F, Fut>(
    label: &str,
    n: u64,
    concurrency: usize,
    op: F,
) -> Result<Run, String>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = tokio::spawn(progress(label.to_owned(), n, done.clone(), start));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (op, next, done) = (op.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut latencies = Vec::with_capacity(n as usize);
    let mut failure = None;
    while let Some(worker) = workers.join_next().await {
        match worker {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(e.to_string())),
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    eprint!("\r\x1b[2K");
    if let Some(e) = failure {
        return Err(format!("{label}: {e}"));
    }
    latencies.sort_unstable();
    Ok(Run {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        latencies,
    })
}

async fn progress(label: String, n: u64, done: Arc<AtomicU64>, start: Instant) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        let d = done.load(Ordering::Relaxed);
        let rate = d as f64 / start.elapsed().as_secs_f64();
        let width = 30;
        let filled = (d * width / n.max(1)) as usize;
        eprint!(
            "\r\x1b[2K{label:<24} [{}{}] {d}/{n} {rate:.0}/s",
            "#".repeat(filled),
            " ".repeat(width as usize - filled)
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
