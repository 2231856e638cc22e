//! The allocation service: `cargo run -p allocation`.
//!
//! Configured from the environment (see [`allocation::config`]): with
//! nothing set it keeps its state in `allocation.db` (SQLite) in the working
//! directory and publishes its events on a broker in the process; with
//! `DATABASE_URL=postgres://…` and `AMQP_URL=amqp://…` it uses Postgres and
//! RabbitMQ, and several instances share the work. It stops gracefully on
//! SIGTERM or Ctrl-C, with exit code 0.

use std::process::ExitCode;

use allocation::config::Config;
use allocation::service;
use eda_core::host;

#[tokio::main]
async fn main() -> ExitCode {
    // Kept to the end: dropping it exports the last spans (when OTLP is on).
    let _telemetry = host::init_logging();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("allocation: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    println!("allocation service\n{config}");
    let ready = |address| println!("listening on http://{address}");
    match service::run(config, host::shutdown_signal(), ready).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allocation: {e}");
            ExitCode::FAILURE
        }
    }
}
