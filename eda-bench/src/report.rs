//! The results: a table for people, one JSON object per line for scripts.

use serde::Serialize;

/// One scenario's result.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) n: u64,
    pub(crate) concurrency: usize,
    pub(crate) eda_per_sec: f64,
    pub(crate) baseline_per_sec: f64,
    pub(crate) ratio_vs_baseline: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_vs_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ms: Option<f64>,
    pub(crate) peak_rss_mb: f64,
    /// What the baseline is, and anything else a reader needs.
    #[serde(skip_serializing_if = "String::is_empty")]
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
        "{:<22} {:>8} {:>5} {:>12} {:>12} {:>7} {:>12} {:>7} {:>8} {:>8} {:>8}",
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
        "rss MB"
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for r in rows {
        println!(
            "{:<22} {:>8} {:>5} {:>12.0} {:>12.0} {:>7.2} {:>12} {:>7} {:>8} {:>8} {:>8.1}",
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
            r.peak_rss_mb,
        );
        if !r.note.is_empty() {
            println!("  {}", r.note);
        }
    }
}

/// The process's peak resident set size, in MB (Linux: `VmHWM`).
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
