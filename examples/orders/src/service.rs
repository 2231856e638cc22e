//! The service: the configuration turned into a running bus with its
//! entrypoints (HTTP, and the RabbitMQ consumer when there is a broker) and
//! its outbox relay; and a graceful stop.
//!
//! On a shutdown signal: HTTP stops accepting connections and finishes the
//! requests in flight; the consumer stops consuming, lets in-flight
//! messages finish and returns the rest to the broker; the relay publishes
//! what is left in the outbox; then [`run`] returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use eda_core::adapters::in_process::{InProcessBroker, InProcessService};
use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
use eda_core::adapters::rabbitmq::{RabbitMq, RabbitMqOptions};
use eda_core::adapters::sqlite::SqliteDatabase;
use eda_core::entrypoints::ConsumerOptions;
use eda_core::{Adapter, MessageBus, OutboxRelay, OutboxStore, Publisher, RelayOptions};
use tokio::sync::watch;

use crate::config::{BrokerConfig, Config, DatabaseConfig};
use crate::entrypoints::http;

/// Why the service could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database could not be reached or set up.
    #[error("database: {0}")]
    Database(#[source] eda_core::Error),
    /// The service's own tables could not be created.
    #[error("database schema: {0}")]
    Schema(#[source] eda_core::sqlx::Error),
    /// The broker could not be reached.
    #[error("broker: {0}")]
    Broker(#[source] eda_core::Error),
    /// The wiring of the handlers is wrong.
    #[error(transparent)]
    Wiring(#[from] eda_core::WiringError),
    /// The HTTP port could not be opened, or the server failed.
    #[error("http on port {port}: {source}")]
    Http {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The consumer failed for good.
    #[error("consumer: {0}")]
    Consumer(#[source] eda_core::Error),
}

/// The database, whichever it is.
enum Db {
    Postgres(PostgresDatabase),
    Sqlite(SqliteDatabase),
}

impl Db {
    async fn connect(config: &Config) -> Result<Self, ServiceError> {
        match &config.database {
            DatabaseConfig::Postgres(url) => {
                // The service's connections show under its queue's name in
                // `pg_stat_activity`.
                let mut options = PostgresOptions::default().application_name(config.queue.clone());
                if let Some(schema) = &config.schema {
                    options = options.schema(schema.clone());
                }
                let db = PostgresDatabase::connect_with(url, options)
                    .await
                    .map_err(ServiceError::Database)?;
                crate::adapters::postgres::migrate(db.pool())
                    .await
                    .map_err(ServiceError::Schema)?;
                Ok(Db::Postgres(db))
            }
            DatabaseConfig::Sqlite(url) => {
                let db = SqliteDatabase::connect(url)
                    .await
                    .map_err(ServiceError::Database)?;
                crate::adapters::sqlite::migrate(db.pool())
                    .await
                    .map_err(ServiceError::Schema)?;
                Ok(Db::Sqlite(db))
            }
        }
    }

    fn outbox(&self) -> Arc<dyn OutboxStore> {
        match self {
            Db::Postgres(db) => Arc::new(db.clone()),
            Db::Sqlite(db) => Arc::new(db.clone()),
        }
    }

    fn give_to(&self, builder: eda_core::BusBuilder) -> eda_core::BusBuilder {
        match self {
            Db::Postgres(db) => builder.adapter(db.clone()),
            Db::Sqlite(db) => builder.adapter(db.clone()),
        }
    }
}

/// The external bus, whichever it is.
enum Broker {
    RabbitMq(RabbitMq),
    /// A broker in the process: nothing crosses to another process, but
    /// the service's topology and consumer work as on RabbitMQ.
    InProcess(InProcessService),
}

impl Broker {
    async fn connect(config: &Config) -> Result<Self, ServiceError> {
        match &config.broker {
            BrokerConfig::RabbitMq(url) => Ok(Broker::RabbitMq(
                RabbitMq::connect(RabbitMqOptions::from_consumer(
                    url,
                    consumer_options(config),
                ))
                .await
                .map_err(ServiceError::Broker)?,
            )),
            BrokerConfig::InProcess => Ok(Broker::InProcess(
                InProcessBroker::new().service(consumer_options(config)),
            )),
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Broker::RabbitMq(rabbitmq) => rabbitmq.publisher(),
            Broker::InProcess(service) => service.publisher(),
        }
    }
}

/// The service's queue and its consumer's settings, on either broker.
fn consumer_options(config: &Config) -> ConsumerOptions {
    let mut options = ConsumerOptions::new(config.queue.clone()).exchange(config.exchange.clone());
    let tuning = &config.consumer;
    if let Some(delays) = &tuning.retry_delays {
        options = options.retry_delays(delays.iter().copied());
    }
    if let Some(attempts) = tuning.max_attempts {
        options = options.max_attempts(attempts);
    }
    if let Some(bytes) = tuning.max_message_bytes {
        options = options.max_message_bytes(bytes);
    }
    options
}

fn adapter<A: Adapter>(builder: eda_core::BusBuilder, adapter: A) -> eda_core::BusBuilder {
    builder.adapter(adapter)
}

/// Builds the bus of the service on this database and broker. It accepts
/// no command from the broker (orders are placed over HTTP); its queue is
/// bound to the events of allocation it handles.
fn bus(db: &Db, broker: &Broker) -> Result<MessageBus, ServiceError> {
    let builder = MessageBus::builder().scope("orders");
    let builder = db.give_to(builder);
    let builder = match broker {
        Broker::RabbitMq(rabbitmq) => adapter(builder, rabbitmq.clone()),
        Broker::InProcess(_) => builder,
    };
    Ok(builder.build()?)
}

/// How often the service looks for events that were committed but never
/// dispatched, and how old they must be (well above the time handling
/// takes, so as not to race a live instance's own dispatch).
const RECOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const RECOVERY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the service until `shutdown` resolves, then stops gracefully.
/// `ready` is told the address HTTP listens on, once everything runs.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServiceError> {
    let db = Db::connect(&config).await?;
    let broker = Broker::connect(&config).await?;
    let bus = bus(&db, &broker)?;

    let relay = OutboxRelay::spawn(db.outbox(), broker.publisher(), RelayOptions::default());
    let (stop, stopping) = watch::channel(false);
    let signal = |mut stopping: watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };

    let consumer = match &broker {
        Broker::RabbitMq(rabbitmq) => {
            // Bound before HTTP takes work: what is published from now on
            // reaches the service queue.
            rabbitmq
                .declare_topology(&bus)
                .await
                .map_err(ServiceError::Broker)?;
            let consumer = rabbitmq.consumer(bus.clone());
            tokio::spawn(consumer.run(signal(stopping.clone())))
        }
        Broker::InProcess(service) => {
            service.declare_topology(&bus);
            let consumer = service.consumer(bus.clone());
            tokio::spawn(consumer.run(signal(stopping.clone())))
        }
    };

    // Events whose process died between their commit and the end of their
    // handlers here are handled again.
    let recovery =
        tokio::spawn(bus.recovery(RECOVERY_EVERY, RECOVERY_AFTER, signal(stopping.clone())));

    let port = config.port;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| ServiceError::Http { port, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| ServiceError::Http { port, source })?;
    let server = tokio::spawn(
        axum::serve(listener, http::router(bus.clone()))
            .with_graceful_shutdown(signal(stopping.clone()))
            .into_future(),
    );
    tracing::info!(%address, "listening on http://{address}");
    ready(address);

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let served = server.await;
    let consumed = consumer.await.map(|r| r.map_err(ServiceError::Consumer));
    relay.shutdown().await;
    let _ = recovery.await;
    tracing::info!("stopped");
    match served {
        Ok(Ok(())) => {}
        Ok(Err(source)) => return Err(ServiceError::Http { port, source }),
        Err(join) => {
            return Err(ServiceError::Http {
                port,
                source: std::io::Error::other(join),
            });
        }
    }
    match consumed {
        Ok(result) => result,
        Err(join) => Err(ServiceError::Consumer(eda_core::Error::Broker(join.into()))),
    }
}
