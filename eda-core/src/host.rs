//! The service host (feature `host`): what every eda service does to start
//! and stop, once, from its configuration. It connects the database
//! (SQLite by default, Postgres by URL) and creates the service's tables,
//! connects RabbitMQ when `AMQP_URL` is set (a broker in the process
//! otherwise), builds the bus, declares the service's topology, runs the
//! outbox relay, the consumer, the dispatch journal's recovery and the
//! scheduler of scheduled messages, serves
//! the service's HTTP router and, beside it, `GET /metrics` (every handler
//! call counted and timed, and the bus's counters, in the Prometheus text
//! format: [`HandlerMetrics`]) and `GET /health/live` and
//! `GET /health/ready` (the database, the broker, the consumer and the
//! outbox checked, `503` with what is wrong), and on a shutdown
//! signal stops taking work,
//! lets what is in flight finish, flushes the outbox, and returns.
//!
//! ```no_run
//! use eda_core::host::{Host, HostConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = HostConfig::from_env("shop", 8080)?;
//! Host::new(config)
//!     .bus(|bus| bus.scope("shop"))
//!     .router(|_bus| axum::Router::new())
//!     .run(eda_core::host::shutdown_signal(), |address| println!("listening on http://{address}"))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The environment it reads ([`HostConfig::from_env`]):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | `postgres://…` or `sqlite:…` | `sqlite://<service>.db` (a file in the working directory) |
//! | `AMQP_URL` | `amqp://…`: RabbitMQ; a cluster's nodes separated by commas (`amqp://…@mq1/%2f,amqp://…@mq2/%2f`): any that answers, another when it dies | unset: a broker in the process |
//! | `PORT` | the HTTP port | the service's |
//! | `EDA_EXCHANGE` | the topic exchange | `eda.events` |
//! | `EDA_QUEUE` | the service queue (its dead-letter queue is `<queue>.dlq`) | the service's name |
//! | `DATABASE_SCHEMA` | the Postgres schema of the service's tables and of eda's outbox and inbox (created if needed) | the service's name: two services on one database never share eda's tables |
//! | `EDA_RETRY_DELAYS_MS` | delays before the retries of a failed message, comma-separated milliseconds | `1000,5000,30000` |
//! | `EDA_MAX_ATTEMPTS` | attempts at a message before it is dead-lettered | `5` |
//! | `EDA_QUEUE_TYPE` | `quorum` or `classic`: the type of the queues declared on RabbitMQ (an existing queue keeps its type, with a warning) | `quorum` |
//! | `EDA_DELIVERY_LIMIT` | how many times a quorum service queue delivers a message never settled (its consumer died) before dead-lettering it; at least `EDA_MAX_ATTEMPTS` | `20` (or `EDA_MAX_ATTEMPTS`, if more) |
//! | `EDA_ORDERED_PARTITIONS` | how many ordered partitions (`<queue>.ordered.<i>`) take the messages whose type declares an ordering key; change it only with them empty | `8` |
//! | `EDA_MAX_MESSAGE_BYTES` | larger messages are dead-lettered unread | `1048576` (1 MiB) |
//! | `EDA_RETENTION_SECONDS` | inbox rows (a message redelivered later is handled again) and published outbox rows older than this are deleted, every half of it (at most hourly) | `604800` (7 days) |
//!
//! Printed (`Display`) and debugged (`Debug`) with passwords hidden.
//!
//! Traces are exported over OTLP when the standard `OTEL_*` variables ask
//! for it, read by [`init_logging`]: an HTTP request's `traceparent` is
//! continued by the request's span, and the trace follows each message to
//! the services that consume it.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

use crate::adapters::in_process::{InProcessBroker, InProcessService};
use crate::adapters::postgres::{PostgresDatabase, PostgresOptions};
use crate::adapters::rabbitmq::{QueueType, RabbitMq, RabbitMqOptions};
use crate::adapters::redact_url;
use crate::adapters::sqlite::SqliteDatabase;
use crate::bus::{BusBuilder, MessageBus};
use crate::entrypoints::{ConsumerMetrics, ConsumerOptions};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::outbox::{Backlog, OutboxStore};
use crate::relay::{OutboxRelay, Publisher, RelayMetrics, RelayOptions};
use crate::schedule::SchedulerOptions;
use crate::telemetry::{self, HandlerMetrics};
use crate::trace_context::TraceContext;

/// Where the state is kept.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// Postgres at this URL.
    Postgres(String),
    /// SQLite at this URL (a file).
    Sqlite(String),
}

/// Where external events go, and messages from other services come from.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    /// RabbitMQ at this URL.
    RabbitMq(String),
    /// No broker: a broker in the process (nothing crosses to another
    /// process).
    InProcess,
}

/// The consumer's settings an operator may change; `None` keeps the
/// framework's default (see [`ConsumerOptions::new`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Delays before the retries of a failed message.
    pub retry_delays: Option<Vec<Duration>>,
    /// Attempts before a failing message is dead-lettered.
    pub max_attempts: Option<u32>,
    /// The largest message read; larger ones are dead-lettered.
    pub max_message_bytes: Option<usize>,
    /// The type of the queues declared on RabbitMQ.
    pub queue_type: Option<QueueType>,
    /// The delivery limit of a quorum service queue.
    pub delivery_limit: Option<u32>,
    /// How many ordered partitions the service has on RabbitMQ.
    pub ordered_partitions: Option<u32>,
}

/// A service's configuration, as the host reads it from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// The database.
    pub database: DatabaseConfig,
    /// The external bus.
    pub broker: BrokerConfig,
    /// The HTTP port.
    pub port: u16,
    /// The exchange.
    pub exchange: String,
    /// The service queue.
    pub queue: String,
    /// The Postgres schema (`None` on SQLite).
    pub schema: Option<String>,
    /// How the consumer treats failures and large messages.
    pub consumer: ConsumerConfig,
    /// How long inbox rows (the messages remembered as handled: a
    /// redelivery after that is handled again) and published outbox rows
    /// are kept before the host deletes them.
    pub retention: Duration,
}

/// [`HostConfig::retention`] when `EDA_RETENTION_SECONDS` is not set: a
/// week, far beyond any redelivery (the broker's retries, a relay that
/// publishes again after a crash).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Inbox rows counted for `/metrics` at most (a scrape never walks a huge
/// table).
const INBOX_ROWS_COUNTED: u64 = 1_000_000;

/// A variable with a value the service cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    variable: &'static str,
    problem: String,
}

impl ConfigError {
    /// A variable of the service's own (not one the host reads) with a
    /// value it cannot use: `ConfigError::new("ORDER_TIMEOUT_MS", "expected
    /// milliseconds, got \"soon\"")` displays as
    /// `ORDER_TIMEOUT_MS: expected milliseconds, got "soon"`.
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            variable,
            problem: problem.into(),
        }
    }

    /// The variable.
    pub fn variable(&self) -> &'static str {
        self.variable
    }
}

impl HostConfig {
    /// The configuration of the service `service` (its name: the default
    /// queue, schema and SQLite file), listening on `port` unless `PORT`
    /// says otherwise, from the process's environment.
    pub fn from_env(service: &str, port: u16) -> Result<Self, ConfigError> {
        Self::from_lookup(service, port, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// The same, from any lookup of variables (tests use a map).
    pub fn from_lookup(
        service: &str,
        port: u16,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let database = match var("DATABASE_URL") {
            None => DatabaseConfig::Sqlite(format!("sqlite://{service}.db")),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseConfig::Postgres(url)
            }
            Some(url) if url.starts_with("sqlite:") => DatabaseConfig::Sqlite(url),
            Some(url) => {
                return Err(ConfigError {
                    variable: "DATABASE_URL",
                    problem: format!(
                        "expected postgres://… or sqlite:…, got {}",
                        redact_url(&url)
                    ),
                });
            }
        };
        let broker = match var("AMQP_URL") {
            None => BrokerConfig::InProcess,
            // One URL, or a cluster's nodes separated by commas.
            Some(url)
                if url
                    .split(',')
                    .all(|node| node.trim().starts_with("amqp://")) =>
            {
                BrokerConfig::RabbitMq(url)
            }
            Some(url) => {
                return Err(ConfigError {
                    variable: "AMQP_URL",
                    problem: format!(
                        "expected amqp://… (or several, separated by commas), got {}",
                        redact_url(&url)
                    ),
                });
            }
        };
        let port = match var("PORT") {
            None => port,
            Some(port) => port.parse().map_err(|_| ConfigError {
                variable: "PORT",
                problem: format!("expected a port number, got {port:?}"),
            })?,
        };
        let schema = match database {
            DatabaseConfig::Postgres(_) => {
                Some(var("DATABASE_SCHEMA").unwrap_or_else(|| service.into()))
            }
            DatabaseConfig::Sqlite(_) => None,
        };
        Ok(HostConfig {
            database,
            broker,
            port,
            exchange: var("EDA_EXCHANGE").unwrap_or_else(|| "eda.events".into()),
            queue: var("EDA_QUEUE").unwrap_or_else(|| service.into()),
            schema,
            consumer: ConsumerConfig {
                retry_delays: var("EDA_RETRY_DELAYS_MS")
                    .map(|v| parse_delays(&v))
                    .transpose()?,
                max_attempts: positive(&var, "EDA_MAX_ATTEMPTS")?,
                max_message_bytes: positive(&var, "EDA_MAX_MESSAGE_BYTES")?,
                queue_type: var("EDA_QUEUE_TYPE")
                    .map(|v| {
                        v.parse().map_err(|problem| ConfigError {
                            variable: "EDA_QUEUE_TYPE",
                            problem,
                        })
                    })
                    .transpose()?,
                delivery_limit: positive(&var, "EDA_DELIVERY_LIMIT")?,
                ordered_partitions: positive(&var, "EDA_ORDERED_PARTITIONS")?,
            },
            retention: positive(&var, "EDA_RETENTION_SECONDS")?
                .map_or(DEFAULT_RETENTION, Duration::from_secs),
        })
    }

    /// The RabbitMQ options of the broker at `url`: the consumer's, and
    /// the queues' type and delivery limit.
    pub fn rabbitmq_options(&self, url: &str) -> RabbitMqOptions {
        let mut options = RabbitMqOptions::from_consumer(url, self.consumer_options());
        if let Some(queue_type) = self.consumer.queue_type {
            options = options.queue_type(queue_type);
        }
        if let Some(limit) = self.consumer.delivery_limit {
            options = options.delivery_limit(limit);
        }
        options
    }

    /// The service's queue and its consumer's settings, on either broker.
    pub fn consumer_options(&self) -> ConsumerOptions {
        let mut options = ConsumerOptions::new(self.queue.clone()).exchange(self.exchange.clone());
        let tuning = &self.consumer;
        if let Some(delays) = &tuning.retry_delays {
            options = options.retry_delays(delays.iter().copied());
        }
        if let Some(attempts) = tuning.max_attempts {
            options = options.max_attempts(attempts);
        }
        if let Some(bytes) = tuning.max_message_bytes {
            options = options.max_message_bytes(bytes);
        }
        if let Some(partitions) = tuning.ordered_partitions {
            options = options.ordered_partitions(partitions);
        }
        options
    }
}

/// `1000,5000,30000` → 1 s, 5 s, 30 s.
fn parse_delays(value: &str) -> Result<Vec<Duration>, ConfigError> {
    value
        .split(',')
        .map(|ms| {
            ms.trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| ConfigError {
                    variable: "EDA_RETRY_DELAYS_MS",
                    problem: format!(
                        "expected positive milliseconds separated by commas, got {value:?}"
                    ),
                })
        })
        .collect()
}

/// A variable holding a number above zero, if set.
fn positive<T: std::str::FromStr + PartialOrd + Default>(
    var: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<Option<T>, ConfigError> {
    var(variable)
        .map(|value| {
            value
                .trim()
                .parse::<T>()
                .ok()
                .filter(|n| *n > T::default())
                .ok_or_else(|| ConfigError {
                    variable,
                    problem: format!("expected a number above zero, got {value:?}"),
                })
        })
        .transpose()
}

impl fmt::Display for HostConfig {
    /// Two lines: the database, the broker (no trailing newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.database {
            DatabaseConfig::Postgres(url) => writeln!(
                f,
                "database: Postgres at {}, schema {}",
                redact_url(url),
                self.schema.as_deref().unwrap_or("(the connection's)")
            )?,
            DatabaseConfig::Sqlite(url) => writeln!(f, "database: SQLite at {}", redact_url(url))?,
        }
        match &self.broker {
            BrokerConfig::RabbitMq(url) => write!(
                f,
                "broker: RabbitMQ at {}, exchange {}, queue {}",
                redact_url(url),
                self.exchange,
                self.queue
            ),
            BrokerConfig::InProcess => write!(f, "broker: in-process (AMQP_URL is not set)"),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseConfig::Postgres(url) => {
                f.debug_tuple("Postgres").field(&redact_url(url)).finish()
            }
            DatabaseConfig::Sqlite(url) => f.debug_tuple("Sqlite").field(&redact_url(url)).finish(),
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerConfig::RabbitMq(url) => {
                f.debug_tuple("RabbitMq").field(&redact_url(url)).finish()
            }
            BrokerConfig::InProcess => f.write_str("InProcess"),
        }
    }
}

impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostConfig")
            .field("database", &self.database)
            .field("broker", &self.broker)
            .field("port", &self.port)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("schema", &self.schema)
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// Why the service could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The database could not be reached or set up.
    #[error("database: {0}")]
    Database(#[source] Error),
    /// The service's own tables could not be created.
    #[error("database schema: {0}")]
    Schema(#[source] sqlx::Error),
    /// The broker could not be reached.
    #[error("broker: {0}")]
    Broker(#[source] Error),
    /// The wiring of the handlers is wrong.
    #[error(transparent)]
    Wiring(#[from] crate::WiringError),
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
    Consumer(#[source] Error),
}

type Migration<P> =
    Box<dyn FnOnce(P) -> BoxFuture<'static, Result<(), sqlx::Error>> + Send + 'static>;

/// A service, ready to run: its configuration, its tables, its bus and its
/// HTTP routes.
pub struct Host {
    config: HostConfig,
    postgres_tables: Option<Migration<PgPool>>,
    sqlite_tables: Option<Migration<SqlitePool>>,
    bus: Box<dyn FnOnce(BusBuilder) -> BusBuilder + Send>,
    router: Box<dyn FnOnce(MessageBus) -> axum::Router + Send>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How often the host looks for events that were committed but never
/// dispatched, and how old they must be (well above the time handling
/// takes, so as not to race a live instance's own dispatch).
const RECOVERY_EVERY: Duration = Duration::from_secs(5);
const RECOVERY_AFTER: Duration = Duration::from_secs(10);

/// The database, whichever it is.
#[derive(Clone)]
enum Db {
    Postgres(PostgresDatabase),
    Sqlite(SqliteDatabase),
}

/// The external bus, whichever it is.
enum Broker {
    RabbitMq(RabbitMq),
    InProcess(InProcessService),
}

impl Host {
    /// A service with this configuration, no tables of its own, every
    /// handler linked into the binary, and no HTTP route.
    pub fn new(config: HostConfig) -> Self {
        Host {
            config,
            postgres_tables: None,
            sqlite_tables: None,
            bus: Box::new(|builder| builder),
            router: Box::new(|_| axum::Router::new()),
        }
    }

    /// Creates the service's tables on Postgres, after eda's (in the
    /// service's schema: the pool's connections have it as `search_path`).
    pub fn postgres_tables<F, Fut>(mut self, migrate: F) -> Self
    where
        F: FnOnce(PgPool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), sqlx::Error>> + Send + 'static,
    {
        self.postgres_tables = Some(Box::new(move |pool| Box::pin(migrate(pool))));
        self
    }

    /// Creates the service's tables on SQLite, after eda's.
    pub fn sqlite_tables<F, Fut>(mut self, migrate: F) -> Self
    where
        F: FnOnce(SqlitePool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), sqlx::Error>> + Send + 'static,
    {
        self.sqlite_tables = Some(Box::new(move |pool| Box::pin(migrate(pool))));
        self
    }

    /// What the bus needs beyond the database the host gives it: its scope,
    /// the commands it accepts from the broker, its other adapters.
    pub fn bus(mut self, build: impl FnOnce(BusBuilder) -> BusBuilder + Send + 'static) -> Self {
        self.bus = Box::new(build);
        self
    }

    /// The service's HTTP routes, on its bus.
    pub fn router(
        mut self,
        router: impl FnOnce(MessageBus) -> axum::Router + Send + 'static,
    ) -> Self {
        self.router = Box::new(router);
        self
    }

    /// Runs the service until `shutdown` resolves, then stops gracefully:
    /// HTTP stops accepting connections and finishes the requests in
    /// flight; the consumer stops consuming, lets in-flight messages finish
    /// and returns the rest to the broker; the relay publishes what is left
    /// in the outbox. `ready` is told the address HTTP listens on, once
    /// everything runs.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
        ready: impl FnOnce(SocketAddr),
    ) -> Result<(), HostError> {
        let Host {
            config,
            postgres_tables,
            sqlite_tables,
            bus: build_bus,
            router,
        } = self;
        let config = &config;
        let db = connect_database(config, postgres_tables, sqlite_tables).await?;
        let broker = match &config.broker {
            BrokerConfig::RabbitMq(url) => Broker::RabbitMq(
                RabbitMq::connect(config.rabbitmq_options(url))
                    .await
                    .map_err(HostError::Broker)?,
            ),
            BrokerConfig::InProcess => {
                Broker::InProcess(InProcessBroker::new().service(config.consumer_options()))
            }
        };
        let builder = match &db {
            Db::Postgres(db) => MessageBus::builder().adapter(db.clone()),
            Db::Sqlite(db) => MessageBus::builder().adapter(db.clone()),
        };
        // Every handler call counted and timed, served at `/metrics`.
        let metrics = HandlerMetrics::new();
        let bus = build_bus(builder).layer(metrics.clone()).build()?;

        let (store, publisher): (Arc<dyn OutboxStore>, Arc<dyn Publisher>) = (
            match &db {
                Db::Postgres(db) => Arc::new(db.clone()),
                Db::Sqlite(db) => Arc::new(db.clone()),
            },
            match &broker {
                Broker::RabbitMq(rabbitmq) => rabbitmq.publisher(),
                Broker::InProcess(service) => service.publisher(),
            },
        );
        let relay = OutboxRelay::spawn(store.clone(), publisher, RelayOptions::default());
        let (stop, stopping) = watch::channel(false);
        let signal = |mut stopping: watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };

        // Bound before HTTP takes work: what is published from now on
        // reaches the service queue.
        let consumer_metrics;
        let consumer = match &broker {
            Broker::RabbitMq(rabbitmq) => {
                rabbitmq
                    .declare_topology(&bus)
                    .await
                    .map_err(HostError::Broker)?;
                let consumer = rabbitmq.consumer(bus.clone());
                consumer_metrics = consumer.metrics();
                tokio::spawn(consumer.run(signal(stopping.clone())))
            }
            Broker::InProcess(service) => {
                service.declare_topology(&bus);
                let consumer = service.consumer(bus.clone());
                consumer_metrics = consumer.metrics();
                tokio::spawn(consumer.run(signal(stopping.clone())))
            }
        };

        // Events whose process died between their commit and the end of
        // their handlers here are handled again.
        let recovery =
            tokio::spawn(bus.recovery(RECOVERY_EVERY, RECOVERY_AFTER, signal(stopping.clone())));

        // Scheduled messages, delivered when due (those that fell due while
        // the service was down, at once).
        let scheduler =
            tokio::spawn(bus.scheduler(SchedulerOptions::default(), signal(stopping.clone())));

        let housekeeping = tokio::spawn(housekeeping(
            db.clone(),
            config.retention,
            signal(stopping.clone()),
        ));
        let figures = Arc::new(Figures {
            db: db.clone(),
            handlers: metrics,
            bus: bus.clone(),
            relay: relay.metrics(),
            consumer: consumer_metrics.clone(),
            outbox: store.clone(),
        });
        // The same figures over OTLP, when `init_logging` set it up.
        let exporting = METRICS_EXPORTED
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| tokio::spawn(export_metrics(figures.clone(), signal(stopping.clone()))));

        let port = config.port;
        let http = |source| HostError::Http { port, source };
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(http)?;
        let address = listener.local_addr().map_err(http)?;
        let server = tokio::spawn(
            axum::serve(
                listener,
                with_host_routes(
                    router(bus.clone()),
                    figures.clone(),
                    Health {
                        outbox: store,
                        rabbitmq: match &broker {
                            Broker::RabbitMq(rabbitmq) => Some(rabbitmq.clone()),
                            Broker::InProcess(_) => None,
                        },
                        consumer: consumer_metrics,
                        consumes: !bus.consumed_message_names().is_empty(),
                    },
                ),
            )
            .with_graceful_shutdown(signal(stopping.clone()))
            .into_future(),
        );
        tracing::info!(%address, "listening on http://{address}");
        ready(address);

        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
        let served = server.await;
        let consumed = consumer.await;
        // Its round finished: the events it released are in the outbox
        // before the relay's last flush.
        let _ = scheduler.await;
        relay.shutdown().await;
        let _ = recovery.await;
        if let Some(exporting) = exporting {
            let _ = exporting.await;
        }
        let _ = housekeeping.await;
        tracing::info!("stopped");
        match served {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(http(source)),
            Err(join) => return Err(http(std::io::Error::other(join))),
        }
        match consumed {
            Ok(result) => result.map_err(HostError::Consumer),
            Err(join) => Err(HostError::Consumer(Error::Broker(join.into()))),
        }
    }
}

/// What `GET /metrics` reads.
struct Figures {
    db: Db,
    handlers: HandlerMetrics,
    bus: MessageBus,
    relay: Arc<RelayMetrics>,
    consumer: Arc<ConsumerMetrics>,
    outbox: Arc<dyn OutboxStore>,
}

impl Figures {
    /// Every figure, in the Prometheus text format.
    async fn render(&self) -> String {
        let mut text = self.handlers.render(&self.bus);
        telemetry::render_relay(&mut text, &self.relay);
        telemetry::render_consumer(&mut text, &self.consumer);
        telemetry::render_outbox(&mut text, &*self.outbox).await;
        if let Ok(rows) = self.db.inbox_rows().await {
            telemetry::render_inbox(&mut text, rows, INBOX_ROWS_COUNTED);
        }
        if let Some(db) = self.bus.database()
            && let Ok(rows) = db.scheduled_rows(INBOX_ROWS_COUNTED).await
        {
            telemetry::render_scheduled(&mut text, rows, INBOX_ROWS_COUNTED);
        }
        text
    }
}

impl Db {
    /// The inbox's rows, counted up to [`INBOX_ROWS_COUNTED`].
    async fn inbox_rows(&self) -> Result<u64, Error> {
        match self {
            Db::Postgres(db) => db.inbox_rows(INBOX_ROWS_COUNTED).await,
            Db::Sqlite(db) => db.inbox_rows(INBOX_ROWS_COUNTED).await,
        }
    }

    /// Deletes inbox rows and published outbox rows older than `age`: how
    /// many of each.
    async fn prune(&self, age: Duration) -> Result<(u64, u64), Error> {
        match self {
            Db::Postgres(db) => Ok((db.prune_inbox(age).await?, db.prune_outbox(age).await?)),
            Db::Sqlite(db) => Ok((db.prune_inbox(age).await?, db.prune_outbox(age).await?)),
        }
    }
}

/// Keeps the database tidy until `stop`: every half of `retention` (at
/// most an hour apart), deletes the inbox rows and the published outbox
/// rows older than it.
async fn housekeeping(db: Db, retention: Duration, stop: impl Future<Output = ()>) {
    let every = (retention / 2)
        .min(Duration::from_secs(3600))
        .max(Duration::from_millis(100));
    let work = async {
        loop {
            tokio::time::sleep(every).await;
            match db.prune(retention).await {
                Ok((0, 0)) => {}
                Ok((inbox, outbox)) => {
                    tracing::info!(
                        inbox,
                        outbox,
                        ?retention,
                        "deleted rows past their retention"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "could not delete old inbox and outbox rows"),
            }
        }
    };
    tokio::select! {
        () = stop => {}
        () = work => {}
    }
}

/// How long a readiness check waits for the database or the broker.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// An outbox row ready to publish for longer than this means the relay is
/// stuck (or the broker refuses it): not ready.
const OUTBOX_STUCK_AFTER: Duration = Duration::from_secs(120);

/// What `GET /health/ready` checks.
struct Health {
    outbox: Arc<dyn OutboxStore>,
    /// The broker, when it is RabbitMQ (the in-process one is always up).
    rabbitmq: Option<RabbitMq>,
    consumer: Arc<ConsumerMetrics>,
    /// The service consumes messages from the broker: its consumer must be
    /// consuming.
    consumes: bool,
}

impl Health {
    /// Each check, `Ok` or what is wrong, in a fixed order.
    async fn check(&self) -> Vec<(&'static str, Result<String, String>)> {
        let database = match tokio::time::timeout(HEALTH_TIMEOUT, self.outbox.backlog()).await {
            Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(backlog)) => Ok(backlog),
        };
        let outbox = match &database {
            Err(_) => Err("unknown: the database cannot be read".to_owned()),
            Ok(backlog) if backlog.age() > OUTBOX_STUCK_AFTER => Err(format!(
                "the oldest of {} rows ready to publish has waited {} s",
                backlog.rows,
                backlog.age().as_secs()
            )),
            Ok(_) => Ok("publishing".to_owned()),
        };
        // A channel opened (and closed): the connection is up, or comes
        // back now, for a service that only publishes as well.
        let broker = match &self.rabbitmq {
            None => Ok("in process".to_owned()),
            Some(rabbitmq) => {
                match tokio::time::timeout(HEALTH_TIMEOUT, rabbitmq.channel()).await {
                    Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(channel)) => {
                        let _ = channel.close(200, "health".into()).await;
                        Ok("connected".to_owned())
                    }
                }
            }
        };
        let consumer = if !self.consumes {
            Ok("consumes nothing".to_owned())
        } else if self.consumer.consuming() {
            Ok("consuming".to_owned())
        } else {
            Err("not consuming".to_owned())
        };
        vec![
            ("database", database.map(|_| "reachable".to_owned())),
            ("broker", broker),
            ("consumer", consumer),
            ("outbox", outbox),
        ]
    }
}

/// The service's router, behind the host's own routes:
/// - `GET /metrics`: the handler calls, the bus's, the relay's and the
///   consumer's counters and the outbox's backlog, in the Prometheus text
///   format;
/// - `GET /health/live`: `200` while the process serves;
/// - `GET /health/ready`: `200` when the database answers, the broker is
///   connected, the consumer consumes (if the service consumes anything)
///   and the outbox is not stuck; `503` otherwise. The JSON body names
///   each check and what is wrong.
///
/// A route of the service's at one of these paths is not reached.
fn with_host_routes(app: axum::Router, figures: Arc<Figures>, health: Health) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;

    let metrics = get(move || {
        let figures = figures.clone();
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                figures.render().await,
            )
        }
    });
    let health = Arc::new(health);
    let ready = get(move || {
        let health = health.clone();
        async move {
            let checks = health.check().await;
            let ready = checks.iter().all(|(_, result)| result.is_ok());
            let body = serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "checks": checks
                    .into_iter()
                    .map(|(name, result)| match result {
                        Ok(state) => (name.to_owned(), serde_json::json!({"ok": true, "state": state})),
                        Err(error) => (name.to_owned(), serde_json::json!({"ok": false, "error": error})),
                    })
                    .collect::<serde_json::Map<_, _>>(),
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(body))
        }
    });
    axum::Router::new()
        .route("/metrics", metrics)
        .route("/health/live", get(|| async { "live" }))
        .route("/health/ready", ready)
        .fallback_service(app.layer(axum::middleware::from_fn(trace_request)))
}

/// Connects the database and creates eda's tables, then the service's.
async fn connect_database(
    config: &HostConfig,
    postgres_tables: Option<Migration<PgPool>>,
    sqlite_tables: Option<Migration<SqlitePool>>,
) -> Result<Db, HostError> {
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
                .map_err(HostError::Database)?;
            if let Some(migrate) = postgres_tables {
                migrate(db.pool().clone())
                    .await
                    .map_err(HostError::Schema)?;
            }
            Ok(Db::Postgres(db))
        }
        DatabaseConfig::Sqlite(url) => {
            let db = SqliteDatabase::connect(url)
                .await
                .map_err(HostError::Database)?;
            if let Some(migrate) = sqlite_tables {
                migrate(db.pool().clone())
                    .await
                    .map_err(HostError::Schema)?;
            }
            Ok(Db::Sqlite(db))
        }
    }
}

/// Logs to stdout, at the levels `RUST_LOG` gives (`warn`,
/// `info,eda_core=debug`; `info` when unset or unreadable), and exports
/// spans over OTLP, at INFO whatever `RUST_LOG` says, when the standard
/// environment asks for it (below). lapin's
/// own line for a message the broker returned (unroutable) is left out: it
/// dumps the body as bytes, and eda's relay logs the message's name and id
/// itself, once.
///
/// **Metrics.** With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_METRICS_EXPORTER=none`, the host's
/// figures (those of `/metrics`: `messaging.process.duration`,
/// `eda.handler.calls`, `messaging.client.consumed.messages`,
/// `messaging.client.sent.messages`, the outbox's backlog, …) are exported
/// over OTLP/HTTP every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s by default).
///
/// **Traces.** With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`, spans are
/// exported over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`,
/// the default, or `http/json`; gRPC is not built in), in batches
/// (`OTEL_BSP_SCHEDULE_DELAY`, milliseconds), with the resource of
/// `OTEL_SERVICE_NAME` (the executable's name when unset) and
/// `OTEL_RESOURCE_ATTRIBUTES`, and the W3C trace context and baggage
/// propagate: an HTTP request's `traceparent` is continued by the request's
/// span, each outbox row keeps the trace of the handler that committed it,
/// the broker's messages carry it as headers, and the consuming service
/// continues it (see [`TraceContext`]). With none of
/// these set nothing is exported and no trace context is written.
///
/// Keep the returned guard until the end of `main`: dropping it exports
/// the spans still in its buffer.
#[must_use = "dropping it ends the export of spans: keep it until the end of main"]
pub fn init_logging() -> Telemetry {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| value.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
        .with_target("lapin::returned_messages", LevelFilter::OFF);
    let (
        Otlp {
            traces: provider,
            metrics,
        },
        problem,
    ) = match otlp_from_env(&|name| std::env::var(name).ok()) {
        Ok(otlp) => (otlp, None),
        Err(e) => (Otlp::default(), Some(e)),
    };
    if let Some(metrics) = &metrics {
        opentelemetry::global::set_meter_provider(metrics.clone());
        METRICS_EXPORTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // Spans are exported at INFO whatever the log level: a service that
    // logs only warnings still shows its messages' path.
    let otel = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Without the thread's name and id (a task moves between threads)
        // and the busy/idle times of each poll: half of a span's cost on
        // the hot path (BENCHMARKS.md), for little an operator reads.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("eda"))
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_filter(targets),
        )
        .with(otel)
        .init();
    if let Some(e) = problem {
        tracing::error!(error = %e, "traces and metrics are not exported");
    }
    Telemetry { provider, metrics }
}

/// Set once `init_logging` exports metrics over OTLP: the host then
/// registers its figures with the global meter.
static METRICS_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What [`init_logging`] started: the export of spans, flushed and stopped
/// when this is dropped.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    metrics: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Whether metrics are exported over OTLP.
    pub fn exports_metrics(&self) -> bool {
        self.metrics.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("traces: the last spans were not exported: {e}");
        }
        if let Some(metrics) = self.metrics.take()
            && let Err(e) = metrics.shutdown()
        {
            eprintln!("metrics: the last figures were not exported: {e}");
        }
    }
}

/// What the environment asks to export over OTLP.
#[derive(Default)]
struct Otlp {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    metrics: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

/// The OTLP exporters the environment asks for, if any (see
/// [`init_logging`]); with traces, the global propagator is W3C trace
/// context and baggage.
fn otlp_from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<Otlp, String> {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let is =
        |name: &str, value: &str| var(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") {
        return Ok(Otlp::default());
    }
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT");
    let traces = (endpoint || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_TRACES_EXPORTER", "none");
    let metrics = (endpoint || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
        && !is("OTEL_METRICS_EXPORTER", "none");
    if !traces && !metrics {
        return Ok(Otlp::default());
    }
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME")
        && let Some(name) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_stem()?.to_str().map(str::to_owned))
    {
        resource = resource.with_service_name(name);
    }
    let resource = resource.build();
    let mut otlp = Otlp::default();
    if traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("OTLP span exporter: {e}"))?;
        otlp.traces = Some(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build(),
        );
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ]),
        );
    }
    if metrics {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("OTLP metric exporter: {e}"))?;
        // Every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s by default).
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
        otlp.metrics = Some(
            opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource)
                .build(),
        );
    }
    Ok(otlp)
}

/// How an OTLP counter reads the host's figures.
type ObserveCounter =
    Box<dyn Fn(&Figures, &dyn opentelemetry::metrics::AsyncInstrument<u64>) + Send + Sync>;

/// How an OTLP gauge reads the host's figures (and the last outbox backlog
/// read).
type ObserveGauge = Box<dyn Fn(&Figures, Option<&Backlog>) -> f64 + Send + Sync>;

/// Registers the host's figures with the global meter (OTLP export), the
/// same as `/metrics` serves, after OpenTelemetry's messaging conventions
/// where one exists; keeps the outbox's backlog (a database query) fresh
/// for them every few seconds until `stop`.
async fn export_metrics(figures: Arc<Figures>, stop: impl Future<Output = ()>) {
    use opentelemetry::KeyValue;

    let meter = opentelemetry::global::meter("eda");
    figures.handlers.export_durations(
        meter
            .f64_histogram("messaging.process.duration")
            .with_unit("s")
            .with_description("How long handler calls took.")
            .with_boundaries(telemetry::BUCKETS.to_vec())
            .build(),
    );
    let counter = |name: &'static str, description: &'static str, read: ObserveCounter| {
        let figures = figures.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| read(&figures, observer))
            .build();
    };
    counter(
        "eda.handler.calls",
        "Handler calls, by message, handler and outcome.",
        Box::new(|f, o| {
            for (message, handler, outcome, calls) in f.handlers.calls() {
                o.observe(
                    calls,
                    &[
                        KeyValue::new("messaging.destination.name", message),
                        KeyValue::new("eda.handler", handler),
                        KeyValue::new("eda.outcome", outcome),
                    ],
                );
            }
        }),
    );
    counter(
        "messaging.client.consumed.messages",
        "Messages from the broker, by name and by what the consumer did with them.",
        Box::new(|f, o| {
            for (message, counts) in f.consumer.per_message() {
                for (outcome, n) in [
                    ("handled", counts.handled),
                    ("retried", counts.retried),
                    ("dead_lettered", counts.dead_lettered),
                ] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("messaging.destination.name", message.clone()),
                            KeyValue::new("eda.outcome", outcome),
                        ],
                    );
                }
            }
        }),
    );
    counter(
        "messaging.client.sent.messages",
        "Messages the relay published (confirmed by the broker and routed).",
        Box::new(|f, o| o.observe(f.relay.published(), &[])),
    );
    type Read = fn(&Figures) -> u64;
    let plain: [(&'static str, &'static str, Read); 9] = [
        (
            "eda.relay.unroutable",
            "Publications no queue was bound to.",
            |f| f.relay.unroutable(),
        ),
        (
            "eda.relay.parked",
            "Events no queue took in time, parked.",
            |f| f.relay.parked(),
        ),
        (
            "eda.relay.failures",
            "Relay batches that failed and were retried.",
            |f| f.relay.failures(),
        ),
        (
            "eda.consumer.own_events",
            "The service's own events that came back.",
            |f| f.consumer.own_events(),
        ),
        (
            "eda.consumer.reconnects",
            "Times the consumer reconnected.",
            |f| f.consumer.reconnects(),
        ),
        (
            "eda.command.conflicts",
            "Command runs that ended in a version conflict.",
            |f| f.bus.metrics().command_conflicts,
        ),
        (
            "eda.event_handler.retries",
            "Event handler runs that failed and were retried.",
            |f| f.bus.metrics().event_handler_retries,
        ),
        (
            "eda.event_handler.failures",
            "Event handlers that failed after their retries.",
            |f| f.bus.metrics().event_handler_failures,
        ),
        (
            "eda.events.unhandled",
            "Events raised with no handler here that are not external.",
            |f| f.bus.metrics().events_unhandled,
        ),
    ];
    for (name, description, read) in plain {
        counter(
            name,
            description,
            Box::new(move |f, o| o.observe(read(f), &[])),
        );
    }

    let backlog = Arc::new(std::sync::Mutex::new(None::<Backlog>));
    // Rows the database counts: the inbox's, the scheduled messages', the
    // parked ones'.
    const INBOX: usize = 0;
    const SCHEDULED: usize = 1;
    const PARKED: usize = 2;
    let counted = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let gauge =
        |name: &'static str, unit: &'static str, description: &'static str, read: ObserveGauge| {
            let (figures, backlog) = (figures.clone(), backlog.clone());
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    let backlog = backlog.lock().unwrap_or_else(|e| e.into_inner());
                    observer.observe(read(&figures, backlog.as_ref()), &[]);
                })
                .build();
        };
    gauge(
        "eda.consumer.in_flight",
        "{message}",
        "Deliveries being handled now.",
        Box::new(|f, _| f.consumer.in_flight() as f64),
    );
    gauge(
        "eda.consumer.consuming",
        "1",
        "1 while the consumer is consuming.",
        Box::new(|f, _| f64::from(u8::from(f.consumer.consuming()))),
    );
    gauge(
        "eda.outbox.unsent_rows",
        "{row}",
        "Outbox rows ready to publish.",
        Box::new(|_, b| b.map_or(0.0, |b| b.rows as f64)),
    );
    gauge(
        "eda.outbox.oldest_unsent_age",
        "s",
        "How long the oldest row ready to publish has waited.",
        Box::new(|_, b| b.map_or(0.0, |b| b.age().as_secs_f64())),
    );

    // Counted by the database every 5 s (below), read at each export.
    for (i, name, unit, description) in [
        (
            INBOX,
            "eda.inbox.rows",
            "{row}",
            "Messages remembered as handled, per handler.",
        ),
        (
            SCHEDULED,
            "eda.scheduled.rows",
            "{message}",
            "Scheduled messages waiting to be delivered.",
        ),
        (
            PARKED,
            "eda.scheduled.parked",
            "{message}",
            "Scheduled messages parked: their delivery failed as often as the scheduler tries.",
        ),
    ] {
        let counted = counted.clone();
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                observer.observe(counted[i].load(Ordering::Relaxed), &[])
            })
            .build();
    }
    let refresh = async {
        loop {
            if let Ok(read) = figures.outbox.backlog().await {
                *backlog.lock().unwrap_or_else(|e| e.into_inner()) = Some(read);
            }
            if let Ok(rows) = figures.db.inbox_rows().await {
                counted[INBOX].store(rows, Ordering::Relaxed);
            }
            if let Some(db) = figures.bus.database()
                && let Ok(rows) = db.scheduled_rows(INBOX_ROWS_COUNTED).await
            {
                counted[SCHEDULED].store(rows.pending, Ordering::Relaxed);
                counted[PARKED].store(rows.parked, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    tokio::select! {
        () = stop => {}
        () = refresh => {}
    }
}

/// The span of an HTTP request (OpenTelemetry's HTTP server conventions),
/// a child of the caller's span when the request carries a W3C
/// `traceparent`: what the request's handlers commit continues the
/// caller's trace.
async fn trace_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        TraceContext::from_headers(|name| {
            request
                .headers()
                .get(name)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .continue_in(&span);
        TraceContext::record_trace_id(&span);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Ctrl-C, or SIGTERM (what a process manager sends).
pub async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<HostConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HostConfig::from_lookup("shop", 8080, |name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_set_means_sqlite_and_a_broker_in_the_process() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.database,
            DatabaseConfig::Sqlite("sqlite://shop.db".into())
        );
        assert_eq!(c.broker, BrokerConfig::InProcess);
        assert_eq!(c.port, 8080);
        assert_eq!(c.exchange, "eda.events");
        assert_eq!(c.queue, "shop");
        assert_eq!(c.schema, None);
        assert_eq!(c.consumer, ConsumerConfig::default());
    }

    #[test]
    fn the_consumer_can_be_tuned() {
        let c = config(&[
            ("EDA_RETRY_DELAYS_MS", "200, 500"),
            ("EDA_MAX_ATTEMPTS", "3"),
            ("EDA_MAX_MESSAGE_BYTES", "65536"),
        ])
        .unwrap();
        assert_eq!(
            c.consumer,
            ConsumerConfig {
                retry_delays: Some(vec![Duration::from_millis(200), Duration::from_millis(500)]),
                max_attempts: Some(3),
                max_message_bytes: Some(65536),
                queue_type: None,
                delivery_limit: None,
                ordered_partitions: None,
            }
        );
        let options = c.consumer_options();
        assert_eq!(
            options.retry_delays,
            [Duration::from_millis(200), Duration::from_millis(500)]
        );
        assert_eq!(
            (options.max_attempts, options.max_message_bytes),
            (3, 65536)
        );
        for (variable, value) in [
            ("EDA_RETRY_DELAYS_MS", "200,,500"),
            ("EDA_RETRY_DELAYS_MS", "0"),
            ("EDA_MAX_ATTEMPTS", "0"),
            ("EDA_MAX_ATTEMPTS", "-1"),
            ("EDA_MAX_MESSAGE_BYTES", "1MB"),
        ] {
            let err = config(&[(variable, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{variable}: expected")), "{err}");
            assert!(err.contains(value), "{err}");
        }
    }

    #[test]
    fn the_real_services_are_chosen_by_url() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:secret@db/shop"),
            ("AMQP_URL", "amqp://guest:guest@mq:5672/%2f"),
            ("PORT", "9000"),
            ("EDA_EXCHANGE", "shop.events"),
        ])
        .unwrap();
        assert_eq!(
            c.database,
            DatabaseConfig::Postgres("postgres://app:secret@db/shop".into())
        );
        assert_eq!(
            c.broker,
            BrokerConfig::RabbitMq("amqp://guest:guest@mq:5672/%2f".into())
        );
        assert_eq!((c.port, c.exchange.as_str()), (9000, "shop.events"));
    }

    /// A cluster's nodes in one variable, the queues' type and delivery
    /// limit; passwords hidden in all of them.
    #[test]
    fn a_cluster_and_its_queues_are_configured() {
        let nodes = "amqp://app:hunter2@mq1:5672/%2f, amqp://app:hunter2@mq2:5672/%2f";
        let c = config(&[
            ("AMQP_URL", nodes),
            ("EDA_QUEUE_TYPE", "Classic"),
            ("EDA_DELIVERY_LIMIT", "7"),
            ("EDA_ORDERED_PARTITIONS", "4"),
        ])
        .unwrap();
        assert_eq!(c.broker, BrokerConfig::RabbitMq(nodes.into()));
        assert_eq!(c.consumer.queue_type, Some(QueueType::Classic));
        assert_eq!(c.consumer.delivery_limit, Some(7));
        let options = c.rabbitmq_options(nodes);
        assert_eq!(
            options.url(),
            "amqp://app:***@mq1:5672/%2f,amqp://app:***@mq2:5672/%2f"
        );
        assert_eq!(options.effective_delivery_limit(), 7);
        assert_eq!(options.consumer().partition_queues().len(), 4);
        let text = c.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("mq2"), "{text}");
        // The default: quorum, a limit of 20 or the attempts if more.
        let c = config(&[("AMQP_URL", nodes), ("EDA_MAX_ATTEMPTS", "30")]).unwrap();
        assert_eq!(c.rabbitmq_options(nodes).effective_delivery_limit(), 30);
        for (variable, value) in [
            ("EDA_QUEUE_TYPE", "mirrored"),
            ("EDA_DELIVERY_LIMIT", "0"),
            ("AMQP_URL", "amqp://mq1/%2f,http://mq2"),
        ] {
            let err = config(&[(variable, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{variable}: expected")), "{err}");
        }
    }

    #[test]
    fn on_postgres_the_schema_defaults_to_the_service_name() {
        let postgres = ("DATABASE_URL", "postgres://postgres@db/shop");
        let c = config(&[postgres]).unwrap();
        assert_eq!(c.schema.as_deref(), Some("shop"));
        assert!(c.to_string().contains("schema shop"), "{c}");
        let c = config(&[postgres, ("DATABASE_SCHEMA", "stock")]).unwrap();
        assert_eq!(c.schema.as_deref(), Some("stock"));
        // SQLite has no schemas: the variable is not used.
        let c = config(&[("DATABASE_SCHEMA", "stock")]).unwrap();
        assert_eq!(c.schema, None);
    }

    #[test]
    fn passwords_are_never_printed() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:s3cr3t@db/shop"),
            ("AMQP_URL", "amqp://guest:hunter2@mq/%2f"),
        ])
        .unwrap();
        for text in [c.to_string(), format!("{c:?}")] {
            assert!(
                !text.contains("s3cr3t") && !text.contains("hunter2"),
                "{text}"
            );
            assert!(text.contains("postgres://app:***@db/shop"), "{text}");
        }
        let err = config(&[("DATABASE_URL", "mysql://root:s3cr3t@db")]).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    /// Traces and metrics are exported as the standard variables say, and
    /// not at all when none is set.
    #[test]
    fn otlp_export_follows_the_standard_variables() {
        let otlp = |vars: &[(&str, &str)]| {
            let otlp = otlp_from_env(&|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .unwrap();
            (otlp.traces.is_some(), otlp.metrics.is_some())
        };
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1");
        assert_eq!(otlp(&[]), (false, false));
        assert_eq!(
            otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]),
            (false, false)
        );
        assert_eq!(otlp(&[endpoint]), (true, true));
        assert_eq!(
            otlp(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            (false, true)
        );
        assert_eq!(
            otlp(&[endpoint, ("OTEL_METRICS_EXPORTER", "none")]),
            (true, false)
        );
        assert_eq!(
            otlp(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            (false, false)
        );
        assert_eq!(
            otlp(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:1/v1/traces"
            )]),
            (true, false)
        );
        assert_eq!(
            otlp(&[(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://127.0.0.1:1/v1/metrics"
            )]),
            (false, true)
        );
    }

    #[test]
    fn retention_defaults_to_a_week_and_can_be_set() {
        assert_eq!(config(&[]).unwrap().retention, DEFAULT_RETENTION);
        assert_eq!(
            config(&[("EDA_RETENTION_SECONDS", "3600")])
                .unwrap()
                .retention,
            Duration::from_secs(3600)
        );
        assert!(
            config(&[("EDA_RETENTION_SECONDS", "0")])
                .unwrap_err()
                .to_string()
                .starts_with("EDA_RETENTION_SECONDS")
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert_eq!(
            config(&[("PORT", "http")]).unwrap_err().to_string(),
            "PORT: expected a port number, got \"http\""
        );
        assert!(
            config(&[("DATABASE_URL", "mysql://db")])
                .unwrap_err()
                .to_string()
                .starts_with("DATABASE_URL: expected postgres")
        );
        assert!(
            config(&[("AMQP_URL", "http://mq")])
                .unwrap_err()
                .to_string()
                .starts_with("AMQP_URL: expected amqp")
        );
    }
}
