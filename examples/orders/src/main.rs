//! The orders service: `cargo run -p orders`.
//!
//! Configured from the environment (see [`orders::config`]): with nothing
//! set it keeps its state in `orders.db` (SQLite) in the working directory
//! and publishes its events on a broker in the process (where no allocation
//! service hears them: orders stay pending, and are cancelled for
//! `timeout` after `ORDER_TIMEOUT_MS`); with `DATABASE_URL=postgres://…`
//! and `AMQP_URL=amqp://…` it uses Postgres and RabbitMQ, and talks to the
//! allocation service through the broker. It stops gracefully on SIGTERM
//! or Ctrl-C, with exit code 0.

use std::process::ExitCode;

use eda_core::host;
use orders::{config, service};

#[tokio::main]
async fn main() -> ExitCode {
    // Kept to the end: dropping it exports the last spans (when OTLP is on).
    let _telemetry = host::init_logging();
    let (config, timeout) = match (config::from_env(), config::order_timeout()) {
        (Ok(config), Ok(timeout)) => (config, timeout),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("orders: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "orders service\n{config}\norder timeout: {} ms",
        timeout.0.as_millis()
    );
    let ready = |address| println!("listening on http://{address}");
    match service::run(config, timeout, host::shutdown_signal(), ready).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orders: {e}");
            ExitCode::FAILURE
        }
    }
}
