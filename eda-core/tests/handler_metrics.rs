//! `HandlerMetrics`: every handler call counted by message, handler and
//! outcome, and timed, read back with a Prometheus text-format parser.
#![allow(missing_docs)]

use std::time::Duration;

use eda_core::prelude::*;
use eda_core::{HandlerMetrics, RetryPolicy};
use prometheus_parse::{Scrape, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "metrics.work", output = ())]
pub struct Work {
    pub fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "metrics.worked")]
pub struct Worked;

#[command_handler(id = "metrics::work")]
async fn work(cmd: Work, bus: &MessageBus) -> Result<(), BoxError> {
    if cmd.fail {
        return Err("asked to fail".into());
    }
    bus.publish(Envelope::new(Worked)).await;
    Ok(())
}

#[event_handler(id = "metrics::slow")]
async fn slow(_: &Worked) {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the Prometheus text format")
}

/// The value of the counter `metric` with these labels.
fn counter(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric} is not a counter: {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "one {metric} {labels:?}, found {found:?}");
    found[0]
}

#[tokio::test]
async fn each_call_is_counted_by_outcome_and_timed() {
    let metrics = HandlerMetrics::new();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .event_retry(RetryPolicy::never())
        .layer(metrics.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        bus.handle(Work { fail: false }).await.unwrap();
    }
    bus.handle(Work { fail: true }).await.unwrap_err();

    let text = metrics.render(&bus);
    let scrape = scrape(&text);
    let work = [
        ("messaging_destination_name", "metrics.work"),
        ("eda_handler", "metrics::work"),
    ];
    let calls = |outcome: &str, labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.push(("outcome", outcome));
        counter(&scrape, "eda_handler_calls_total", &labels)
    };
    assert_eq!(calls("ok", &work), 3.0);
    assert_eq!(calls("failed", &work), 1.0);
    assert_eq!(calls("conflict", &work), 0.0);
    let slow = [
        ("messaging_destination_name", "metrics.worked"),
        ("eda_handler", "metrics::slow"),
    ];
    assert_eq!(calls("ok", &slow), 3.0);

    // The event handler slept 20 ms each time: none of its three calls is
    // in the buckets up to 10 ms, all are under +Inf (the buckets are
    // cumulative), and their sum is 60 ms or more.
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "messaging_process_duration_seconds"
                && s.labels.get("eda_handler") == Some("metrics::slow")
        })
        .expect("the event handler's histogram");
    assert_eq!(histogram.labels.get("messaging_system"), Some("eda"));
    assert_eq!(
        histogram.labels.get("messaging_operation_name"),
        Some("process")
    );
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {:?}", histogram.value);
    };
    let under = |bound: f64| {
        buckets
            .iter()
            .find(|b| b.less_than == bound)
            .map(|b| b.count)
            .expect("a bucket")
    };
    assert_eq!(under(0.01), 0.0);
    assert_eq!(under(f64::INFINITY), 3.0);
    let sum = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "messaging_process_duration_seconds_sum"
                && s.labels.get("eda_handler") == Some("metrics::slow")
        })
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v) => v,
            ref other => panic!("{other:?}"),
        });
    let sum = sum.expect("the histogram's sum, kept by the parser as a sample of its own");
    assert!(sum >= 0.06, "sum {sum}");

    // The bus's own counters are there too.
    assert_eq!(counter(&scrape, "eda_command_conflicts_total", &[]), 0.0);
    assert_eq!(
        counter(&scrape, "eda_event_handler_failures_total", &[]),
        0.0
    );
}
