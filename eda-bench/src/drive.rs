//! Runs `n` operations with `concurrency` workers, as fast as they go
//! (closed loop) or at a fixed rate (paced), timing each; and a progress
//! line on stderr for anything that takes longer than a second.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cpu::{self, Usage};
use crate::report::{Row, median, percentile_ms, process_peak_rss_mb};

/// What one run did, operation by operation.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// When the run started.
    pub(crate) start: Instant,
    /// Until the last operation returned.
    pub(crate) elapsed: Duration,
    /// Operation `i` started (closed loop) or was due (paced) at
    /// `start + starts[i]`.
    pub(crate) starts: Vec<Duration>,
    /// Operation `i` took `latencies[i]`: from its start, or from when it
    /// was due if paced (so that falling behind the schedule shows).
    pub(crate) latencies: Vec<Duration>,
}

impl Run {
    pub(crate) fn n(&self) -> u64 {
        self.latencies.len() as u64
    }

    pub(crate) fn per_sec(&self) -> f64 {
        self.n() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile of the latencies, in milliseconds.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        percentile_ms(&sorted, p)
    }
}

/// When operation `i` is due, from the start of a run paced at `rate`
/// operations per second: `i / rate`.
pub(crate) fn due(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Calls `op(i)` for `i` in `0..n`, `concurrency` at a time: as fast as the
/// workers go, or, with `pace: Some(rate)`, each call no earlier than
/// [`due`]`(i, rate)`. `op` returning an error stops the run with it.
pub(crate) async fn run<F, Fut>(
    label: &str,
    n: u64,
    concurrency: usize,
    pace: Option<f64>,
    op: F,
) -> Result<Run, String>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, n, {
        let done = done.clone();
        move || done.load(Ordering::Relaxed)
    });
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (op, next, done) = (op.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            let mut timed = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(timed);
                }
                let from = match pace {
                    Some(rate) => {
                        let at = start + due(i, rate);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                op(i).await?;
                timed.push((i, from - start, from.elapsed()));
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut starts = vec![Duration::ZERO; n as usize];
    let mut latencies = vec![Duration::ZERO; n as usize];
    let mut failure = None;
    while let Some(worker) = workers.join_next().await {
        match worker {
            Ok(Ok(timed)) => {
                for (i, s, l) in timed {
                    starts[i as usize] = s;
                    latencies[i as usize] = l;
                }
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(e.to_string())),
        }
    }
    let elapsed = start.elapsed();
    drop(progress);
    if let Some(e) = failure {
        return Err(format!("{label}: {e}"));
    }
    Ok(Run {
        start,
        elapsed,
        starts,
        latencies,
    })
}

/// Waits until `count()` reaches `target`, polling every millisecond, with
/// a progress line; fails after `timeout`, or as soon as `failed()` says
/// why. Returns when it saw the target reached.
pub(crate) async fn wait_for(
    label: &str,
    target: u64,
    timeout: Duration,
    count: impl Fn() -> u64 + Send + Sync + 'static,
    failed: impl Fn() -> Option<String>,
) -> Result<Instant, String> {
    let count = Arc::new(count);
    // The bar counts from where the count stands now.
    let base = count().min(target);
    let progress = Progress::start(label, target - base, {
        let count = count.clone();
        move || count().saturating_sub(base)
    });
    let deadline = Instant::now() + timeout;
    loop {
        if count() >= target {
            drop(progress);
            return Ok(Instant::now());
        }
        if let Some(e) = failed() {
            return Err(format!("{label}: {e}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{label}: timed out after {timeout:?} at {} of {target}",
                count()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A progress line on stderr, shown after a second, updated five times a
/// second, erased when dropped.
pub(crate) struct Progress {
    task: tokio::task::JoinHandle<()>,
    shown: Arc<AtomicBool>,
}

impl Progress {
    pub(crate) fn start(
        label: &str,
        total: u64,
        done: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let label = label.to_owned();
        let start = Instant::now();
        let shown = Arc::new(AtomicBool::new(false));
        let showing = shown.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            showing.store(true, Ordering::Relaxed);
            loop {
                let d = done().min(total);
                let rate = d as f64 / start.elapsed().as_secs_f64();
                eprint!("\r\x1b[2K{}", bar(&label, d, total, rate));
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Progress { task, shown }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if self.shown.load(Ordering::Relaxed) {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// `label [#####     ] done/total rate/s`.
fn bar(label: &str, done: u64, total: u64, rate: f64) -> String {
    let width = 30;
    let filled = (done.min(total) * width / total.max(1)) as usize;
    format!(
        "{label:<28} [{}{}] {done}/{total} {rate:.0}/s",
        "#".repeat(filled),
        " ".repeat(width as usize - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_spreads_calls_evenly() {
        assert_eq!(due(0, 1000.0), Duration::ZERO);
        assert_eq!(due(1, 1000.0), Duration::from_millis(1));
        assert_eq!(due(500, 250.0), Duration::from_secs(2));
        assert_eq!(due(3, 2.0), Duration::from_millis(1500));
    }

    #[test]
    fn the_bar_fills_with_progress() {
        assert!(bar("x", 0, 10, 0.0).contains(&format!("[{}]", " ".repeat(30))));
        assert!(bar("x", 10, 10, 5.0).contains(&format!("[{}] 10/10 5/s", "#".repeat(30))));
        assert!(bar("x", 5, 10, 0.0).contains(&format!("[{}{}]", "#".repeat(15), " ".repeat(15))));
        // Never more than full, even when the count overshoots.
        assert!(bar("x", 12, 10, 0.0).contains(&"#".repeat(30)));
        assert!(bar("x", 0, 0, 0.0).contains('['));
    }

    #[tokio::test]
    async fn a_paced_run_keeps_its_schedule_and_counts_from_it() {
        let run = run("test", 20, 4, Some(200.0), |_| async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(run.n(), 20);
        // 20 calls at 200/s: the last is due at 95 ms.
        assert!(
            run.elapsed >= Duration::from_millis(95),
            "{:?}",
            run.elapsed
        );
        assert_eq!(run.starts[19], due(19, 200.0));
        assert!(run.latencies.iter().all(|l| *l < Duration::from_millis(50)));
    }

    #[tokio::test]
    async fn a_failing_operation_fails_the_run() {
        let r = run("test", 10, 2, None, |i| async move {
            if i == 5 {
                Err("five".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(r.unwrap_err(), "test: five");
    }
}

/// One variant's runs in a closed-loop scenario (eda, or one of its
/// baselines), with the CPU each used per operation.
#[derive(Default)]
pub(crate) struct Variant {
    pub(crate) runs: Vec<Run>,
    pub(crate) cpu: Vec<Usage>,
}

impl Variant {
    /// [`run`] without pacing, measuring the machine's CPU around it.
    pub(crate) async fn run<F, Fut>(
        &mut self,
        label: &str,
        n: u64,
        concurrency: usize,
        op: F,
    ) -> Result<(), String>
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let before = cpu::sample();
        self.runs.push(run(label, n, concurrency, None, op).await?);
        self.cpu.push(cpu::sample().since(&before, n));
        Ok(())
    }

    /// The median of the runs' rates.
    pub(crate) fn per_sec(&self) -> f64 {
        median(&self.runs.iter().map(Run::per_sec).collect::<Vec<_>>())
    }

    /// The median of the runs' `p` latency quantiles, in milliseconds.
    pub(crate) fn latency_ms(&self, p: f64) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.percentile_ms(p))
                .collect::<Vec<_>>(),
        )
    }
}

/// A row of eda against one baseline, both closed-loop; the note is
/// followed by the CPU each used per operation.
pub(crate) fn row(
    scenario: &str,
    concurrency: usize,
    eda: &Variant,
    eda_rss: f64,
    baseline: &Variant,
    note: &str,
) -> Row {
    Row {
        scenario: scenario.into(),
        n: eda.runs.first().map_or(0, Run::n),
        concurrency,
        eda_per_sec: eda.per_sec(),
        baseline_per_sec: baseline.per_sec(),
        ratio_vs_baseline: eda.per_sec() / baseline.per_sec(),
        p50_ms: Some(eda.latency_ms(0.50)),
        p99_ms: Some(eda.latency_ms(0.99)),
        baseline_p50_ms: Some(baseline.latency_ms(0.50)),
        baseline_p99_ms: Some(baseline.latency_ms(0.99)),
        peak_rss_mb: process_peak_rss_mb(),
        eda_peak_rss_mb: Some(eda_rss),
        note: format!(
            "{note} CPU: baseline {}; eda {}",
            Usage::mean(&baseline.cpu).brief(),
            Usage::mean(&eda.cpu).brief()
        ),
        ..Row::default()
    }
}
