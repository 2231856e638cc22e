//! The Postgres adapter (feature `postgres`): units of work run in sqlx
//! transactions; the outbox and the inbox are tables written in those same
//! transactions.
//!
//! ```no_run
//! # async fn run() -> Result<(), eda_core::Error> {
//! use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
//!
//! let db = PostgresDatabase::connect_with(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     PostgresOptions::default().schema("allocation"),
//! )
//! .await?;
//! let bus = eda_core::MessageBus::builder().adapter(db).build()?;
//! # Ok(()) }
//! ```
//!
//! Repositories for Postgres implement [`Repository`](crate::Repository)
//! with `type Connection = sqlx::PgConnection` and run their queries on the
//! connection they are lent: the unit of work's transaction.
//!
//! The framework's tables are created at connection time by idempotent
//! migrations, under an advisory lock, so several instances can start at
//! once. With [`PostgresOptions::schema`], they (and, through the
//! connections' `search_path`, the application's unqualified tables) live in
//! that schema.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, Postgres};
use uuid::Uuid;

use super::RedactedUrl;
use super::sql::{Tables, adapter_error, connect_error, quote_ident};
use crate::adapter::{Adapter, Database, DatabaseTransaction};
use crate::error::Error;
use crate::message::MessageId;
use crate::outbox::ExternalMessage;
use crate::private::BoxFuture;

/// How to connect and where to keep the framework's tables.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    tables: Tables,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    /// Tables `eda_outbox`, `eda_inbox` in the default schema; 10
    /// connections; 10 s to connect or acquire a connection.
    fn default() -> Self {
        PostgresOptions {
            tables: Tables::default(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl PostgresOptions {
    /// Keep the framework's tables in this schema (created if needed), and
    /// make it the connections' `search_path`, so that the application's
    /// unqualified tables live there too: one schema per service, or per
    /// test.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.tables = self.tables.in_schema(schema);
        self
    }

    /// Prefix of the framework's tables (`eda_` by default).
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tables.prefix = prefix.into();
        self
    }

    /// At most this many connections in the pool.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to wait for a connection before failing.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

/// The statements of the framework, with its table names in them, built once.
struct Statements {
    /// One message: a plain insert (most commits raise one event).
    write_outbox_one: String,
    /// Several: one insert of arrays, still one round trip.
    write_outbox: String,
    record_inbox: String,
    prune_inbox: String,
}

impl Statements {
    fn new(tables: &Tables) -> Self {
        let outbox = tables.name("outbox");
        let inbox = tables.name("inbox");
        Statements {
            write_outbox_one: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000))"
            ),
            write_outbox: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at) \
                 SELECT m, n, p, c, k, to_timestamp(t::float8 / 1000) \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[]) \
                 AS x(m, n, p, c, k, t)"
            ),
            record_inbox: format!(
                "INSERT INTO {inbox} (message_id, handler) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            prune_inbox: format!(
                "DELETE FROM {inbox} WHERE handled_at < now() - make_interval(secs => $1)"
            ),
        }
    }
}

/// The migrations of the framework's tables, in order, one statement per
/// string. Each runs once (the migrations table remembers), and each is
/// idempotent anyway.
fn migrations(tables: &Tables) -> Vec<Vec<String>> {
    let outbox = tables.name("outbox");
    let inbox = tables.name("inbox");
    let prefix = &tables.prefix;
    let unsent = quote_ident(&format!("{prefix}outbox_unsent"));
    let handled = quote_ident(&format!("{prefix}inbox_handled_at"));
    vec![vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {outbox} (
                position BIGSERIAL PRIMARY KEY,
                message_id UUID NOT NULL UNIQUE,
                name TEXT NOT NULL,
                payload TEXT NOT NULL,
                correlation_id UUID NOT NULL,
                causation_id UUID,
                created_at TIMESTAMPTZ NOT NULL,
                sent_at TIMESTAMPTZ,
                claimed_until TIMESTAMPTZ,
                attempts INT NOT NULL DEFAULT 0
            )"
        ),
        format!("CREATE INDEX IF NOT EXISTS {unsent} ON {outbox} (position) WHERE sent_at IS NULL"),
        format!(
            "CREATE TABLE IF NOT EXISTS {inbox} (
                message_id UUID NOT NULL,
                handler TEXT NOT NULL,
                handled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (message_id, handler)
            )"
        ),
        format!("CREATE INDEX IF NOT EXISTS {handled} ON {inbox} (handled_at)"),
    ]]
}

/// The migration, as owned SQL, run in one transaction.
struct MigrationPlan {
    pool: PgPool,
    lock: String,
    setup: Vec<String>,
    applied: String,
    record: String,
    migrations: Vec<Vec<String>>,
}

impl MigrationPlan {
    async fn run(self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(self.lock)
            .execute(&mut *tx)
            .await?;
        for statement in &self.setup {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        let applied: i32 = sqlx::query(&self.applied)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, statements) in self.migrations.iter().enumerate() {
            let version = i as i32 + 1;
            if version > applied {
                for statement in statements {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                sqlx::query(&self.record)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await
    }
}

struct Inner {
    pool: PgPool,
    url: RedactedUrl,
    tables: Tables,
    statements: Statements,
}

/// A Postgres database: the [`Database`] adapter units of work begin their
/// transactions on. Clones share the pool.
#[derive(Clone)]
pub struct PostgresDatabase {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDatabase")
            .field("url", &self.inner.url)
            .field("tables", &self.inner.tables)
            .finish()
    }
}

impl PostgresDatabase {
    /// Connects with the default options and creates the framework's tables.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects and creates the framework's tables. An error names the URL,
    /// with its password hidden.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, Error> {
        let search_path = options.tables.schema.clone();
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(schema) = search_path {
                        let sql = format!("SET search_path TO {}", quote_ident(&schema));
                        sqlx::Executor::execute(&mut *conn, sql.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| connect_error(url, e))?;
        Self::setup(pool, url, options.tables).await
    }

    /// Uses an existing pool (whose connections should have the right
    /// `search_path` already) and creates the framework's tables.
    pub async fn from_pool(pool: PgPool, tables: Tables) -> Result<Self, Error> {
        Self::setup(pool, "postgres (given pool)", tables).await
    }

    async fn setup(pool: PgPool, url: &str, tables: Tables) -> Result<Self, Error> {
        let db = PostgresDatabase {
            inner: Arc::new(Inner {
                statements: Statements::new(&tables),
                pool,
                url: RedactedUrl(url.to_owned()),
                tables,
            }),
        };
        db.migrate().await.map_err(|e| connect_error(url, e))?;
        Ok(db)
    }

    /// Creates or updates the framework's tables: idempotent, and safe when
    /// several instances start at once (they wait on an advisory lock).
    pub fn migrate(&self) -> BoxFuture<'static, Result<(), sqlx::Error>> {
        let tables = &self.inner.tables;
        let migrations_table = tables.name("migrations");
        let mut setup = Vec::new();
        if let Some(schema) = &tables.schema {
            setup.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            ));
        }
        setup.push(format!(
            "CREATE TABLE IF NOT EXISTS {migrations_table} (
                version INT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )"
        ));
        let plan = MigrationPlan {
            pool: self.inner.pool.clone(),
            // One lock per schema and prefix.
            lock: format!("eda migrations {:?} {}", tables.schema, tables.prefix),
            setup,
            applied: format!("SELECT COALESCE(MAX(version), 0) FROM {migrations_table}"),
            record: format!("INSERT INTO {migrations_table} (version) VALUES ($1)"),
            migrations: migrations(tables),
        };
        // Owned data and a boxed future: an `async fn` borrowing `self` would
        // not be `Send` for a caller that spawns it (rustc's limits on the
        // higher-ranked lifetimes of sqlx's executors).
        Box::pin(plan.run())
    }

    /// The pool, for queries outside units of work (read models, tests).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Where the framework's tables are.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Deletes inbox rows older than `age`: messages redelivered after that
    /// would be handled again. Returns how many rows were deleted.
    pub async fn prune_inbox(&self, age: Duration) -> Result<u64, Error> {
        sqlx::query(&self.inner.statements.prune_inbox)
            .bind(age.as_secs_f64())
            .execute(&self.inner.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(adapter_error)
    }
}

impl Adapter for PostgresDatabase {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

impl Database for PostgresDatabase {
    fn describe(&self) -> String {
        self.inner.url.to_string()
    }

    fn connection_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<PgConnection>(), "sqlx::PgConnection")
    }

    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction>, Error>> {
        Box::pin(async move {
            let tx = self.inner.pool.begin().await.map_err(adapter_error)?;
            Ok(Box::new(PgTransaction {
                tx,
                db: self.inner.clone(),
            }) as Box<dyn DatabaseTransaction>)
        })
    }
}

struct PgTransaction {
    tx: sqlx::Transaction<'static, Postgres>,
    db: Arc<Inner>,
}

impl DatabaseTransaction for PgTransaction {
    fn connection(&mut self) -> &mut (dyn Any + Send) {
        let conn: &mut PgConnection = &mut self.tx;
        conn
    }

    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if let [m] = messages {
                sqlx::query(&self.db.statements.write_outbox_one)
                    .bind(m.metadata.message_id.as_uuid())
                    .bind(m.name.as_str())
                    .bind(std::str::from_utf8(&m.payload).map_err(Error::database)?)
                    .bind(m.metadata.correlation_id.as_uuid())
                    .bind(m.metadata.causation_id.map(|c| c.as_uuid()))
                    .bind(m.metadata.timestamp.as_millis() as i64)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(adapter_error)?;
                return Ok(());
            }
            let mut ids = Vec::with_capacity(messages.len());
            let mut names = Vec::with_capacity(messages.len());
            let mut payloads = Vec::with_capacity(messages.len());
            let mut correlations = Vec::with_capacity(messages.len());
            let mut causations: Vec<Option<Uuid>> = Vec::with_capacity(messages.len());
            let mut timestamps = Vec::with_capacity(messages.len());
            for m in messages {
                ids.push(m.metadata.message_id.as_uuid());
                names.push(m.name.as_str());
                payloads.push(std::str::from_utf8(&m.payload).map_err(Error::database)?);
                correlations.push(m.metadata.correlation_id.as_uuid());
                causations.push(m.metadata.causation_id.map(|c| c.as_uuid()));
                timestamps.push(m.metadata.timestamp.as_millis() as i64);
            }
            sqlx::query(&self.db.statements.write_outbox)
                .bind(ids)
                .bind(names)
                .bind(payloads)
                .bind(correlations)
                .bind(causations)
                .bind(timestamps)
                .execute(&mut *self.tx)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn record_inbox<'a>(
        &'a mut self,
        id: MessageId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let done = sqlx::query(&self.db.statements.record_inbox)
                .bind(id.as_uuid())
                .bind(handler)
                .execute(&mut *self.tx)
                .await
                .map_err(adapter_error)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move { self.tx.commit().await.map_err(adapter_error) })
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move { self.tx.rollback().await.map_err(adapter_error) })
    }
}
