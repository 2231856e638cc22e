//! The service: orders' bus and routes, run by eda's host (see
//! [`eda_core::host`]), which connects the database and the broker, runs
//! the relay, the consumer and the recovery, serves HTTP, and stops
//! gracefully.

use std::future::Future;
use std::net::SocketAddr;

use eda_core::host::{Host, HostConfig, HostError};

use crate::entrypoints::http;
use crate::service_layer::OrderTimeout;

/// Runs the service until `shutdown` resolves, then stops gracefully.
/// `ready` is told the address HTTP listens on, once everything runs.
///
/// Its bus accepts no command from the broker (orders are placed over
/// HTTP); its queue is bound to the events of allocation it handles. It
/// has no tables of its own: orders and their fulfilments are kept in
/// eda's aggregate store, and their timeouts in eda's scheduled messages
/// (the host's scheduler delivers them).
pub async fn run(
    config: HostConfig,
    timeout: OrderTimeout,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), HostError> {
    Host::new(config)
        .bus(move |builder| builder.scope("orders").adapter(timeout))
        .router(http::router)
        .run(shutdown, ready)
        .await
}
