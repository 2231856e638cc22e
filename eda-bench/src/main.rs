//! `eda-bench`: runs one scenario through eda and through the hand-written
//! code a competent user would write without it, in the same process, on the
//! same data, and prints their throughputs side by side.
//!
//! ```text
//! cargo run --release -p eda-bench -- <scenario> [--n N] [--concurrency C] [--rounds R] [--rate R] [--json]
//! ```
//!
//! Scenarios:
//! - `dispatch`: the bus in memory, against a hand-written `TypeId` dispatcher;
//! - `database`: allocate-like commands on Postgres (state + outbox);
//! - `sqlite`: the same on SQLite (a file), the stock kept as a document by
//!   eda's aggregate store, one command at a time;
//! - `durable`: the same commands until the broker confirmed their events
//!   (outbox relay to RabbitMQ), against commit-then-publish by hand, and
//!   against the transactions alone; then paced at half eda's rate for the
//!   latency;
//! - `relay`: the outbox relay draining committed rows to RabbitMQ, against
//!   publishing them by hand with confirms;
//! - `consume`: events waiting in a queue, consumed with the inbox;
//! - `relay` and `consume` run each round on classic queues and on quorum
//!   ones: a row per type, and one of quorum's rate against classic's;
//! - `ordered`: eda's consumer on messages with an ordering key (50 keys,
//!   the ordered partitions) against the same messages without one (the
//!   service queue), in the same run;
//! - `schedule`: scheduled messages on Postgres: the relay and an idle
//!   scheduler round with 100,000 pending against none, how late the
//!   scheduler delivers, and many due at once against a hand-written
//!   claim-handle-delete loop;
//! - `all`: each of them in a process of its own (so that each one's peak
//!   RSS is its own), one table.

mod cpu;
mod drive;
mod report;
mod scenarios;

use std::process::ExitCode;

use report::Row;

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Args {
    scenario: String,
    n: Option<u64>,
    concurrency: Option<usize>,
    rounds: Option<u64>,
    rate: Option<f64>,
    json: bool,
    /// Run without a tracing subscriber.
    no_subscriber: bool,
    /// The subscriber's level (`warn` unless given).
    log_level: Option<tracing_subscriber::filter::LevelFilter>,
    /// Spans at INFO to OpenTelemetry too, whatever the log level.
    otel: bool,
}

const SCENARIOS: [&str; 8] = [
    "dispatch", "database", "sqlite", "durable", "relay", "consume", "ordered", "schedule",
];

const USAGE: &str =
    "usage: eda-bench <scenario> [--n N] [--concurrency C] [--rounds R] [--rate PER_SEC] [--json]
scenarios: dispatch, database, sqlite, durable, relay, consume, ordered, schedule, all (each
           in its own process)
  --n            operations per run (messages for consume and ordered; outbox rows per relay
                 run and commands due at once for schedule)
  --concurrency  workers (handlers at once for consume, and ordered's unordered side)
  --rounds       interleaved rounds of eda and its baselines (relay and consume:
                 each round on classic queues, then quorum ones, or the reverse)
  --rate         durable: the paced run's rate (default: half eda's measured rate)
  --no-subscriber  install no tracing subscriber (by default one logs warnings to
                 stderr, as a service would: without one, tracing hands every
                 disabled span to its `log` fallback, which sqlx turns on)
  --log-level L  the subscriber's level (default warn); at info, as the examples
                 run, the bus makes a span for each handler call
  --otel         also send spans at INFO to OpenTelemetry (tracing-opentelemetry,
                 a batch processor, an exporter that discards), as the host does
                 when OTLP is configured, whatever the log level";

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    fn value<T: std::str::FromStr>(
        args: &mut impl Iterator<Item = String>,
        flag: &str,
    ) -> Result<T, String> {
        let v = args.next().ok_or(format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
    }
    let mut parsed = Args::default();
    let mut scenario = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--n" | "-n" => parsed.n = Some(value::<u64>(&mut args, "--n")?.max(1)),
            "--concurrency" | "-c" => {
                parsed.concurrency = Some(value::<usize>(&mut args, "--concurrency")?.max(1))
            }
            "--rounds" => parsed.rounds = Some(value::<u64>(&mut args, "--rounds")?.max(1)),
            "--rate" => {
                let rate: f64 = value(&mut args, "--rate")?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("--rate: must be positive: {rate}"));
                }
                parsed.rate = Some(rate);
            }
            "--json" => parsed.json = true,
            "--no-subscriber" => parsed.no_subscriber = true,
            "--otel" => parsed.otel = true,
            "--log-level" => {
                let level: String = value(&mut args, "--log-level")?;
                parsed.log_level = Some(
                    level
                        .parse()
                        .map_err(|e| format!("--log-level {level}: {e}"))?,
                );
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s if scenario.is_none() => scenario = Some(s.to_owned()),
            s => return Err(format!("unexpected argument {s}\n{USAGE}")),
        }
    }
    parsed.scenario = scenario.ok_or(USAGE)?;
    if parsed.scenario != "all" && !SCENARIOS.contains(&parsed.scenario.as_str()) {
        return Err(format!("unknown scenario {}\n{USAGE}", parsed.scenario));
    }
    Ok(parsed)
}

impl Args {
    /// The command line of one scenario, for a child process.
    fn for_scenario(&self, scenario: &str) -> Vec<String> {
        let mut v = vec![scenario.to_owned(), "--json".to_owned()];
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                v.push(name.to_owned());
                v.push(value);
            }
        };
        flag("--n", self.n.map(|n| n.to_string()));
        flag("--concurrency", self.concurrency.map(|c| c.to_string()));
        flag("--rounds", self.rounds.map(|r| r.to_string()));
        flag("--rate", self.rate.map(|r| r.to_string()));
        flag("--log-level", self.log_level.map(|l| l.to_string()));
        if self.no_subscriber {
            v.push("--no-subscriber".to_owned());
        }
        if self.otel {
            v.push("--otel".to_owned());
        }
        v
    }
}

/// Each scenario in a child process (this binary), its rows read back from
/// its JSON lines; its progress lines go to our stderr.
fn run_all(args: &Args) -> Result<Vec<Row>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        eprintln!("eda-bench: {scenario} …");
        let out = std::process::Command::new(&me)
            .args(args.for_scenario(scenario))
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("{scenario}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{scenario} failed ({})", out.status));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            rows.push(serde_json::from_str(line).map_err(|e| format!("{scenario}: {e}: {line}"))?);
        }
    }
    Ok(rows)
}

/// An exporter that drops what it is given: what remains is the cost of
/// making, recording and queueing the spans on the hot path (the OTLP
/// encoding and sending happen on the batch processor's thread).
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// The host's subscriber with OTLP on: `fmt` at `level`, and
/// OpenTelemetry at INFO through a batch processor (to [`Discard`]), with
/// W3C trace context as the propagator. The provider is returned to be
/// kept alive.
fn otel_subscriber(
    level: tracing_subscriber::filter::LevelFilter,
) -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(level),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("eda-bench"))
                // As the host configures it.
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    provider
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let _otel = if args.otel && !args.no_subscriber {
        Some(otel_subscriber(
            args.log_level
                .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN),
        ))
    } else {
        None
    };
    if !args.no_subscriber && !args.otel {
        // What a service does (the examples install `fmt` at INFO; the
        // default here is WARN, `--log-level info` is theirs): spans below
        // the level are then disabled by the callsite's interest.
        tracing_subscriber::fmt()
            .with_max_level(
                args.log_level
                    .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let rows = if args.scenario == "all" {
        run_all(&args)
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            match args.scenario.as_str() {
                "dispatch" => scenarios::dispatch::run(&args).await,
                "database" => scenarios::database::run(&args).await,
                "sqlite" => scenarios::sqlite::run(&args).await,
                "durable" => scenarios::durable::run(&args).await,
                "consume" => scenarios::consume::run(&args).await,
                "ordered" => scenarios::ordered::run(&args).await,
                "relay" => scenarios::relay::run(&args).await,
                "schedule" => scenarios::schedule::run(&args).await,
                other => Err(format!("unknown scenario {other}\n{USAGE}")),
            }
        })
    };
    match rows {
        Ok(rows) => {
            report::print(&rows, args.json);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("eda-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_the_command_line() {
        let a = args("database --n 500 --concurrency 8 --json").unwrap();
        assert_eq!(a.scenario, "database");
        assert_eq!(a.n, Some(500));
        assert_eq!(a.concurrency, Some(8));
        assert!(a.json);
        let a = args("durable -c 4 --rounds 3 --rate 750.5").unwrap();
        assert_eq!(a.concurrency, Some(4));
        assert_eq!(a.rounds, Some(3));
        assert_eq!(a.rate, Some(750.5));
        assert!(!a.json);
        assert_eq!(args("consume -c 0").unwrap().concurrency, Some(1));
        assert_eq!(args("all").unwrap().scenario, "all");
        assert_eq!(args("schedule").unwrap().scenario, "schedule");
        assert_eq!(args("ordered").unwrap().scenario, "ordered");
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(args("").is_err());
        assert!(args("database --n x").is_err());
        assert!(args("database --n").is_err());
        assert!(args("database --bogus").is_err());
        assert!(args("database durable").is_err());
        assert!(args("nosuch").is_err());
        assert!(args("durable --rate 0").is_err());
        assert!(args("durable --rate -3").is_err());
        assert!(args("--help").is_err());
    }

    #[test]
    fn all_passes_the_options_on() {
        let a = args("all --n 100 -c 4 --rate 50").unwrap();
        assert_eq!(
            a.for_scenario("durable"),
            [
                "durable",
                "--json",
                "--n",
                "100",
                "--concurrency",
                "4",
                "--rate",
                "50"
            ]
        );
        assert_eq!(
            args("all").unwrap().for_scenario("consume"),
            ["consume", "--json"]
        );
    }
}
