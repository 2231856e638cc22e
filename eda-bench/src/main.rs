//! `eda-bench`: runs one scenario through eda and through the hand-written
//! code a competent user would write without it, in the same process, on the
//! same data, and prints their throughputs side by side.
//!
//! ```text
//! cargo run --release -p eda-bench -- <scenario> [--n N] [--concurrency C] [--json]
//! ```
//!
//! Scenarios: `database` (allocate-like commands on Postgres: state + outbox).

mod drive;
mod report;
mod scenarios;

use std::process::ExitCode;

use report::Row;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    scenario: String,
    n: Option<u64>,
    concurrency: Option<usize>,
    json: bool,
}

const USAGE: &str =
    "usage: eda-bench <scenario> [--n N] [--concurrency C] [--json]\nscenarios: database";

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut scenario = None;
    let mut n = None;
    let mut concurrency = None;
    let mut json = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--n" => {
                let v = args.next().ok_or("--n needs a value")?;
                n = Some(v.parse().map_err(|_| format!("--n: not a number: {v}"))?);
            }
            "--concurrency" | "-c" => {
                let v = args.next().ok_or("--concurrency needs a value")?;
                let c: usize = v
                    .parse()
                    .map_err(|_| format!("--concurrency: not a number: {v}"))?;
                concurrency = Some(c.max(1));
            }
            "--json" => json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s if scenario.is_none() => scenario = Some(s.to_owned()),
            s => return Err(format!("unexpected argument {s}\n{USAGE}")),
        }
    }
    Ok(Args {
        scenario: scenario.ok_or(USAGE)?,
        n,
        concurrency,
        json,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows: Result<Vec<Row>, String> = runtime.block_on(async {
        match args.scenario.as_str() {
            "database" => scenarios::database::run(&args).await,
            other => Err(format!("unknown scenario {other}\n{USAGE}")),
        }
    });
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
        assert!(args("").is_err());
        assert!(args("database --n x").is_err());
        assert!(args("database --bogus").is_err());
    }
}
