//! The orders service: `cargo run -p orders`.
//!
//! Configured from the environment (see [`orders::config`]): with nothing
//! set it keeps its state in `orders.db` (SQLite) in the working directory
//! and publishes its events on the in-process bus (where no allocation
//! service hears them: orders stay pending); with
//! `DATABASE_URL=postgres://…` and `AMQP_URL=amqp://…` it uses Postgres and
//! RabbitMQ, and several instances share the work. It stops gracefully on
//! SIGTERM or Ctrl-C, with exit code 0.

use std::process::ExitCode;

use orders::config::Config;
use orders::service;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_target(false).init();
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
