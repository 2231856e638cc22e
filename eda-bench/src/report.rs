//! The results: a table for people, one JSON object per line for scripts;
//! and the statistics and memory figures they are made of.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One scenario's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) n: u64,
    pub(crate) concurrency: usize,
    pub(crate) eda_per_sec: f64,
    pub(crate) baseline_per_sec: f64,
    pub(crate) ratio_vs_baseline: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) limit_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_vs_limit: Option<f64>,
    /// eda's latencies (what they span is in the note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ms: Option<f64>,
    /// The baseline's, measured the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_p99_ms: Option<f64>,
    /// The process's peak RSS over the whole scenario (setup, eda and the
    /// baselines): `VmHWM` at the end.
    pub(crate) peak_rss_mb: f64,
    /// The process's peak RSS while eda's runs ran (`VmHWM` reset before
    /// each of them; it includes what the process held when it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) eda_peak_rss_mb: Option<f64>,
    /// What the baseline is, and anything else a reader needs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) note: String,
}

pub(crate) fn print(rows: &[Row], json: bool) {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row).expect("a row serializes"));
        }
        return;
    }
    println!(
        "{:<24} {:>8} {:>4} {:>10} {:>10} {:>6} {:>10} {:>6} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "scenario",
        "n",
        "conc",
        "eda/s",
        "baseline/s",
        "ratio",
        "limit/s",
        "vs lim",
        "p50 ms",
        "p99 ms",
        "b.p50",
        "b.p99",
        "rss MB"
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for r in rows {
        println!(
            "{:<24} {:>8} {:>4} {:>10.0} {:>10.0} {:>6.2} {:>10} {:>6} {:>7} {:>7} {:>7} {:>7} {:>6.1}",
            r.scenario,
            r.n,
            r.concurrency,
            r.eda_per_sec,
            r.baseline_per_sec,
            r.ratio_vs_baseline,
            opt(r.limit_per_sec, 0),
            opt(r.ratio_vs_limit, 2),
            opt(r.p50_ms, 2),
            opt(r.p99_ms, 2),
            opt(r.baseline_p50_ms, 2),
            opt(r.baseline_p99_ms, 2),
            r.peak_rss_mb,
        );
    }
    let notes: Vec<_> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !notes.is_empty() {
        println!();
        for r in notes {
            println!("{}: {}", r.scenario, r.note);
        }
    }
}

/// The `p` quantile (0.0 ..= 1.0) of sorted durations, in milliseconds:
/// the nearest rank, so that p99 of 100 samples is the 99th, not an
/// interpolation. 0 when there are none.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // (The epsilon keeps 0.99 * 100 from rounding up to rank 100.)
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// The median; the mean of the two middle values for an even count.
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn status_kb(field: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The highest `VmHWM` seen before a [`reset_peak_rss`], in kB.
static PEAK_BEFORE_RESETS_KB: AtomicU64 = AtomicU64::new(0);

/// The process's peak resident set size since the last [`reset_peak_rss`]
/// (or since it started), in MB (Linux: `VmHWM`; 0 elsewhere).
pub(crate) fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:").map_or(0.0, |kb| kb / 1024.0)
}

/// The process's peak resident set size since it started, in MB, resets
/// or not.
pub(crate) fn process_peak_rss_mb() -> f64 {
    let before = PEAK_BEFORE_RESETS_KB.load(Ordering::Relaxed) as f64 / 1024.0;
    before.max(peak_rss_mb())
}

/// Resets the peak to the current RSS (Linux: `5` to `/proc/self/clear_refs`),
/// so that [`peak_rss_mb`] then reports the peak of what follows. Returns
/// whether it could.
pub(crate) fn reset_peak_rss() -> bool {
    if let Some(kb) = status_kb("VmHWM:") {
        PEAK_BEFORE_RESETS_KB.fetch_max(kb as u64, Ordering::Relaxed);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile_ms(&hundred, 0.50), 50.0);
        assert_eq!(percentile_ms(&hundred, 0.99), 99.0);
        assert_eq!(percentile_ms(&hundred, 1.0), 100.0);
        assert_eq!(percentile_ms(&hundred, 0.0), 1.0);
        assert_eq!(percentile_ms(&ms(&[7]), 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        // p99 of 1000 samples with ten slow ones sees a slow one.
        let mut tail = ms(&[1; 990]);
        tail.extend(ms(&[50; 10]));
        assert_eq!(percentile_ms(&tail, 0.99), 1.0);
        assert_eq!(percentile_ms(&tail, 0.995), 50.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn rows_survive_json() {
        let row = Row {
            scenario: "x".into(),
            n: 3,
            p99_ms: Some(1.5),
            ..Row::default()
        };
        let back: Row = serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
        assert_eq!(back.scenario, "x");
        assert_eq!(back.p99_ms, Some(1.5));
        assert_eq!(back.limit_per_sec, None);
    }
}
