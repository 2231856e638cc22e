//! Test isolation, after `#[sqlx::test]`: each test gets a database of its
//! own (with the framework's tables in it), so tests run in parallel and
//! again without seeing each other's rows.
//!
//! - [`TestPostgres`] (feature `postgres`): a schema of its own in the test
//!   Postgres, `DATABASE_URL` or the local default
//!   `postgres://postgres@127.0.0.1:5432/test`. When it cannot be reached,
//!   the test is skipped with a message on stderr, except under `CI=true`,
//!   where it fails with a message saying what to start.
//! - [`TestSqlite`] (feature `sqlite`): a database file of its own, in a
//!   fresh temporary directory that is removed afterwards. Nothing to start,
//!   nothing skipped.
//! - [`TestRabbitMq`] (feature `rabbitmq`): an exchange and queues of its
//!   own on the test RabbitMQ, and [`TestRabbitMq::service`] for the other
//!   services of a test on the same exchange.
//! - For services that talk to each other without a broker installed:
//!   [`InProcessBroker`](crate::adapters::in_process::InProcessBroker),
//!   which routes as RabbitMQ does.
//!
//! ```no_run
//! # async fn t() {
//! # #[cfg(feature = "postgres")] {
//! use eda_core::testing::TestPostgres;
//!
//! let Some(pg) = TestPostgres::start().await else { return };
//! // pg.db is a PostgresDatabase in a fresh schema; pg.pool() runs SQL there.
//! pg.drop_schema().await;
//! # }
//! # }
//! ```
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use eda_core::testing::TestSqlite;
//!
//! let db = TestSqlite::start().await;
//! // db.db is a SqliteDatabase on a fresh file; db.pool() runs SQL there.
//! db.cleanup().await; // or drop it: the directory is removed either way
//! # }
//! # #[cfg(not(feature = "sqlite"))] fn main() {}
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "postgres")]
use crate::adapters::postgres::{PostgresDatabase, PostgresOptions};
#[cfg(feature = "rabbitmq")]
use crate::adapters::rabbitmq::{RabbitMq, RabbitMqOptions};
use crate::adapters::redact_url;
#[cfg(feature = "sqlite")]
use crate::adapters::sqlite::{SqliteDatabase, SqliteOptions};

/// The Postgres the tests use when `DATABASE_URL` is not set.
#[cfg(feature = "postgres")]
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether a missing service fails the test (`CI=true`) or skips it.
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The URL of the test Postgres: `DATABASE_URL` if it is a Postgres URL,
/// else [`DEFAULT_POSTGRES_URL`].
#[cfg(feature = "postgres")]
pub fn postgres_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => DEFAULT_POSTGRES_URL.to_owned(),
    }
}

/// Skips (returns `None`, saying so on stderr) or, under `CI=true`, fails
/// with a message naming the missing service.
pub fn service_missing<T>(
    service: &str,
    url: &str,
    error: &dyn std::fmt::Display,
    start: &str,
) -> Option<T> {
    let message = format!(
        "{service} is not reachable at {}: {error}\n  start it with: {start}",
        redact_url(url)
    );
    if services_required() {
        panic!("CI=true and {message}");
    }
    eprintln!("SKIPPED (set CI=true to fail instead): {message}");
    None
}

/// A name no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// A Postgres database in a schema of its own.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct TestPostgres {
    /// The adapter, in the test's schema.
    pub db: PostgresDatabase,
    /// The schema's name.
    pub schema: String,
    /// The URL it connected to.
    pub url: String,
}

#[cfg(feature = "postgres")]
impl TestPostgres {
    /// A fresh schema with the framework's tables, or `None` (skipped) when
    /// Postgres is not reachable outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(PostgresOptions::default()).await
    }

    /// Same, with options (the schema is set by this function).
    pub async fn start_with(options: PostgresOptions) -> Option<Self> {
        let url = postgres_url();
        let schema = unique_name("eda_test");
        // Named after the schema: a test can find its own connections in
        // pg_stat_activity (to kill them, say) without touching others'.
        let options = options
            .schema(schema.clone())
            .application_name(schema.clone());
        match PostgresDatabase::connect_with(&url, options).await {
            Ok(db) => Some(TestPostgres { db, schema, url }),
            Err(e) => service_missing(
                "PostgreSQL",
                &url,
                &e,
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            ),
        }
    }

    /// The pool (its connections' `search_path` is the test's schema).
    pub fn pool(&self) -> &sqlx::PgPool {
        self.db.pool()
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        if let Err(e) = sqlx::query(&sql).execute(self.db.pool()).await {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
        self.db.pool().close().await;
    }
}

/// The RabbitMQ the tests use when `AMQP_URL` is not set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The URL of the test RabbitMQ: `AMQP_URL`, else [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// A RabbitMQ exchange and service queue of their own (with their retry
/// and dead-letter queues), removed by [`cleanup`](Self::cleanup).
#[cfg(feature = "rabbitmq")]
#[derive(Debug)]
pub struct TestRabbitMq {
    /// Connected, with the test's names.
    pub rabbitmq: RabbitMq,
    /// The other services of the test, on the same exchange.
    others: std::sync::Mutex<Vec<RabbitMqOptions>>,
}

#[cfg(feature = "rabbitmq")]
impl TestRabbitMq {
    /// A fresh exchange and queue with the default options, or `None`
    /// (skipped) when RabbitMQ is not reachable outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(|o| o).await
    }

    /// Same, with options changed by `f` (the names are set here).
    pub async fn start_with(f: impl FnOnce(RabbitMqOptions) -> RabbitMqOptions) -> Option<Self> {
        let url = amqp_url();
        let queue = unique_name("eda_test");
        let options =
            f(RabbitMqOptions::new(url.clone(), queue.clone())).exchange(format!("{queue}.events"));
        match RabbitMq::connect(options).await {
            Ok(rabbitmq) => Some(TestRabbitMq {
                rabbitmq,
                others: std::sync::Mutex::new(Vec::new()),
            }),
            Err(e) => service_missing("RabbitMQ", &url, &e, "rabbitmq-server -detached"),
        }
    }

    /// Another service on the test's exchange: its queue is
    /// `<the test's queue>.<name>`, removed by [`cleanup`](Self::cleanup)
    /// too. Two services of one test talk to each other through it.
    pub async fn service(
        &self,
        name: &str,
        f: impl FnOnce(RabbitMqOptions) -> RabbitMqOptions,
    ) -> RabbitMq {
        let o = self.rabbitmq.options();
        let queue = format!("{}.{name}", o.consumer().queue_name());
        let options =
            f(RabbitMqOptions::new(amqp_url(), queue)).exchange(o.consumer().exchange_name());
        self.others.lock().unwrap().push(options.clone());
        RabbitMq::connect(options)
            .await
            .expect("the broker answered the test already")
    }

    /// The options (names, delays, …).
    pub fn options(&self) -> &RabbitMqOptions {
        self.rabbitmq.options()
    }

    /// Deletes the test's queues and exchange.
    pub async fn cleanup(self) {
        let Ok(channel) = self.rabbitmq.channel().await else {
            return;
        };
        let mut queues = Vec::new();
        let others = std::mem::take(&mut *self.others.lock().unwrap());
        for o in std::iter::once(self.rabbitmq.options()).chain(&others) {
            let c = o.consumer();
            queues.extend([
                c.queue_name().to_owned(),
                c.dead_letter_queue(),
                c.bindings_queue(),
            ]);
            queues.extend(o.retry_queues());
            queues.extend(c.partition_queues());
        }
        let o = self.rabbitmq.options().consumer();
        queues.push(o.unrouted_queue());
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        let _ = channel
            .exchange_delete(o.exchange_name().into(), Default::default())
            .await;
    }
}

/// A SQLite database on a file of its own, in a fresh temporary directory
/// that [`cleanup`](Self::cleanup) (or dropping it) removes.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct TestSqlite {
    /// The adapter, on the test's file.
    pub db: SqliteDatabase,
    /// The temporary directory: the database file, its WAL, and whatever
    /// else the test puts there.
    pub dir: std::path::PathBuf,
    /// The URL it connected to (`sqlite://<dir>/test.db`).
    pub url: String,
}

#[cfg(feature = "sqlite")]
impl TestSqlite {
    /// A fresh database file with the framework's tables. Panics, saying
    /// why, if it cannot be created: there is no service to be missing.
    pub async fn start() -> Self {
        Self::start_with(SqliteOptions::default()).await
    }

    /// Same, with options.
    pub async fn start_with(options: SqliteOptions) -> Self {
        let dir = Self::temp_dir();
        let url = Self::url_in(&dir, "test.db");
        match SqliteDatabase::connect_with(&url, options).await {
            Ok(db) => TestSqlite { db, dir, url },
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("cannot create the test SQLite database: {e}");
            }
        }
    }

    /// A fresh, empty directory under the system's temporary directory.
    /// (Removing it is the caller's business; [`TestSqlite`] removes its
    /// own.)
    pub fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir()
            .join("eda-tests")
            .join(unique_name("sqlite"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        dir
    }

    /// The URL of a database file named `file` in `dir`.
    pub fn url_in(dir: &std::path::Path, file: &str) -> String {
        format!("sqlite://{}", dir.join(file).display())
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::SqlitePool {
        self.db.pool()
    }

    /// Closes the pool and removes the directory.
    pub async fn cleanup(self) {
        self.db.pool().close().await;
        // `Drop` removes the directory.
    }
}

#[cfg(feature = "sqlite")]
impl Drop for TestSqlite {
    fn drop(&mut self) {
        // Open connections do not stop the removal on Unix; elsewhere the
        // directory may stay behind, in the system's temporary directory.
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "could not remove test directory {}: {e}",
                self.dir.display()
            );
        }
    }
}
