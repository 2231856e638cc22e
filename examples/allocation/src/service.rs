//! The service: allocation's tables, bus and routes, run by eda's host
//! (see [`eda_core::host`]), which connects the database and the broker,
//! runs the relay, the consumer and the recovery, serves HTTP, and stops
//! gracefully.

use std::future::Future;
use std::net::SocketAddr;

use eda_core::host::{Host, HostError};

use crate::adapters::notifications::{FileNotifier, LoggingNotifier, Notifications};
use crate::config::Config;
use crate::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use crate::entrypoints::http;

/// Runs the service until `shutdown` resolves, then stops gracefully.
/// `ready` is told the address HTTP listens on, once everything runs.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), HostError> {
    let notifications = match &config.notifications_file {
        Some(path) => Notifications::new(FileNotifier::new(path)),
        None => Notifications::new(LoggingNotifier),
    };
    Host::new(config.host)
        .postgres_tables(|pool| async move { crate::adapters::postgres::migrate(&pool).await })
        .sqlite_tables(|pool| async move { crate::adapters::sqlite::migrate(&pool).await })
        .bus(|builder| {
            builder
                .scope("allocation")
                // Other services send these over the broker (the rest is
                // in-process).
                .accept::<Allocate>()
                .accept::<CreateBatch>()
                .accept::<ChangeBatchQuantity>()
                .adapter(notifications)
        })
        .router(http::router)
        .run(shutdown, ready)
        .await
}
