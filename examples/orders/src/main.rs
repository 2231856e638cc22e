//! The orders service: `cargo run -p orders`.
//!
//! Configured from the environment (see [`orders::config`]): with nothing
//! set it keeps its state in `orders.db` (SQLite) in the working directory
//! and publishes its events on a broker in the process (where no allocation
//! service hears them: orders stay pending); with
//! `DATABASE_URL=postgres://…` and `AMQP_URL=amqp://…` it uses Postgres and
//! RabbitMQ, and several instances share the work. It stops gracefully on
//! SIGTERM or Ctrl-C, with exit code 0.

use std::process::ExitCode;

use orders::config::Config;
use orders::service;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("orders: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    println!("orders service\n{config}");
    let ready = |address| println!("listening on http://{address}");
    match service::run(config, shutdown_signal(), ready).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orders: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stdout, at the levels `RUST_LOG` gives (`warn`,
/// `info,eda_core=debug`; `info` when unset or unreadable). lapin's own
/// line for a message the broker returned (unroutable) is left out: it
/// dumps the body as bytes, and eda's relay logs the message's name and id
/// itself, once.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| value.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
        .with_target("lapin::returned_messages", LevelFilter::OFF);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .with(targets)
        .init();
}

/// Ctrl-C, or SIGTERM (what a process manager sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
