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
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};
use tokio::sync::Notify;
use uuid::Uuid;

use super::RedactedUrl;
use super::kept::{KEEP_IDLE, Kept, Lent};
use super::sql::{
    PARKED_AT, PoolSettings, Tables, adapter_error, connect_error, millis, quote_ident,
    scheduled_message, stored,
};
use crate::adapter::{Adapter, Database, DatabaseTransaction, ScheduledRows};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::{MessageId, Metadata, Timestamp};
use crate::outbox::{Backlog, OutboxEntry, OutboxStore};
use crate::outbox::{ExternalMessage, OutboxWrite};
use crate::schedule::ScheduledMessage;
use crate::store::{AggregateStorage, AggregateType, Save, Stored};
use crate::trace_context::TraceContext;

/// What a given pool's errors name instead of a URL.
const GIVEN_POOL: &str = "postgres (given pool)";

/// How to connect and where to keep the framework's tables.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    tables: Tables,
    max_connections: u32,
    acquire_timeout: Duration,
    application_name: Option<String>,
    keep_idle: Duration,
    /// The settings of the pool's own that were set (see
    /// [`PostgresDatabase::from_pool_with`]).
    pool_settings: PoolSettings,
}

impl Default for PostgresOptions {
    /// Tables `eda_outbox`, `eda_inbox` in the default schema; 10
    /// connections; 10 s to connect or acquire a connection; a connection
    /// kept 20 ms for the next unit of work.
    fn default() -> Self {
        PostgresOptions {
            tables: Tables::default(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            application_name: None,
            keep_idle: KEEP_IDLE,
            pool_settings: PoolSettings::default(),
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
        self.pool_setting("max_connections")
    }

    /// How long to wait for a connection before failing.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self.pool_setting("acquire_timeout")
    }

    /// The `application_name` of the connections: how they show in
    /// `pg_stat_activity` (the service's name, say).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self.pool_setting("application_name")
    }

    fn pool_setting(mut self, name: &'static str) -> Self {
        self.pool_settings.set(name);
        self
    }

    /// How long the connection a unit of work ended on waits for the next
    /// unit of work before it goes back to the pool (20 ms by default).
    ///
    /// sqlx pings the server when a connection goes back to its pool: one
    /// more round trip per transaction. A unit of work that begins within
    /// this time takes the connection the previous one ended on instead,
    /// without that round trip. A connection is only kept while the pool
    /// could still serve someone else (it has an idle connection or room for
    /// another), and for at most a second from when it left the pool, so
    /// that the pool's own checks still see it. `Duration::ZERO` gives every
    /// connection back at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eda_core::adapters::postgres::PostgresOptions;
    ///
    /// // The application's own queries share this pool and must never wait.
    /// let options = PostgresOptions::default().keep_idle_connections(Duration::ZERO);
    /// ```
    pub fn keep_idle_connections(mut self, idle: Duration) -> Self {
        self.keep_idle = idle;
        self
    }
}

/// The statements of the framework, with its table names in them, built once.
struct Statements {
    /// One message: a plain insert (most commits raise one event).
    write_outbox_one: String,
    /// Several: one insert of arrays, still one round trip.
    write_outbox: String,
    /// Rows to publish and/or to dispatch (the dispatch journal).
    write_events: String,
    mark_dispatched: String,
    undispatched: String,
    record_inbox: String,
    prune_inbox: String,
    inbox_rows: String,
    lease: String,
    release: String,
    unsent: String,
    backlog: String,
    mark_sent: String,
    defer: String,
    prune_outbox: String,
    /// The aggregate store (aggregates without a repository, as documents).
    load_aggregate: String,
    aggregates: String,
    insert_aggregate: String,
    update_aggregate: String,
    /// Scheduled messages.
    schedule: String,
    cancel_scheduled: String,
    remove_scheduled: String,
    claim_due: String,
    retry_scheduled: String,
    scheduled_rows: String,
}

impl Statements {
    fn new(tables: &Tables) -> Self {
        let outbox = tables.name("outbox");
        let inbox = tables.name("inbox");
        let lease = tables.name("relay_lease");
        let aggregates = tables.name("aggregates");
        let scheduled = tables.name("scheduled");
        Statements {
            // Times in milliseconds since the epoch, from the service's
            // clock; `next_at` is when it is tried next (its due time, then
            // a claim's lease or a retry's; PARKED_AT when parked).
            schedule: format!(
                "INSERT INTO {scheduled} (message_id, name, payload, correlation_id, causation_id, \
                 created_at, trace_context, due_at, next_at) \
                 SELECT m, n, p, c, k, t, x, w, w \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[], \
                 $7::text[], $8::int8[]) AS x(m, n, p, c, k, t, x, w)"
            ),
            cancel_scheduled: format!(
                "DELETE FROM {scheduled} WHERE message_id = $1 AND attempts = 0"
            ),
            remove_scheduled: format!(
                "DELETE FROM {scheduled} WHERE message_id = ANY($1) RETURNING message_id"
            ),
            // The columns of an outbox row, with the due time for its
            // position. SKIP LOCKED: two instances claiming at once take
            // different rows (and a row a transaction is cancelling is
            // left alone). `= ANY(ARRAY(..))`, not `IN (..)`: the subquery
            // runs once whatever the plan; with `IN`, a generic plan cached
            // while the table was empty ran it again for each row, and a
            // claim over 10,000 due rows took seconds (and more rows than
            // its limit).
            claim_due: format!(
                "UPDATE {scheduled} SET next_at = $2, attempts = attempts + 1 \
                 WHERE message_id = ANY(ARRAY(SELECT message_id FROM {scheduled} \
                 WHERE next_at <= $1 AND name = ANY($4) ORDER BY next_at LIMIT $3 \
                 FOR UPDATE SKIP LOCKED)) \
                 RETURNING due_at, message_id, name, payload, correlation_id, causation_id, \
                 created_at, attempts, trace_context"
            ),
            retry_scheduled: format!("UPDATE {scheduled} SET next_at = $2 WHERE message_id = $1"),
            scheduled_rows: format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM {scheduled} LIMIT $1) AS counted), \
                 (SELECT count(*) FROM {scheduled} WHERE next_at = {PARKED_AT})"
            ),
            load_aggregate: format!(
                "SELECT version, body FROM {aggregates} WHERE aggregate = $1 AND id = $2"
            ),
            aggregates: format!(
                "SELECT version, body FROM {aggregates} WHERE aggregate = $1 ORDER BY id"
            ),
            // A conflict on the key inserts nothing (after waiting for a
            // concurrent insert of the same key): the caller says
            // `AlreadyExists`.
            insert_aggregate: format!(
                "INSERT INTO {aggregates} (aggregate, id, version, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING"
            ),
            // Under READ COMMITTED a row updated concurrently is checked
            // again after the other commits: its version no longer matches.
            update_aggregate: format!(
                "UPDATE {aggregates} SET version = $3, body = $4 \
                 WHERE aggregate = $1 AND id = $2 AND version = $5"
            ),
            write_outbox_one: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at, trace_context) \
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000), $7)"
            ),
            write_outbox: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at, trace_context) \
                 SELECT m, n, p, c, k, to_timestamp(t::float8 / 1000), x \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[], $7::text[]) \
                 AS x(m, n, p, c, k, t, x)"
            ),
            write_events: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at, trace_context, sent_at, dispatched_at) \
                 SELECT m, n, p, c, k, to_timestamp(t::float8 / 1000), x, \
                 CASE WHEN publish THEN NULL ELSE now() END, CASE WHEN dispatch THEN NULL ELSE now() END \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[], $7::text[], $8::bool[], $9::bool[]) \
                 AS x(m, n, p, c, k, t, x, publish, dispatch)"
            ),
            mark_dispatched: format!(
                "WITH unsynced AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 UPDATE {outbox} SET dispatched_at = now() FROM unsynced \
                 WHERE message_id = ANY($1) AND dispatched_at IS NULL"
            ),
            undispatched: format!(
                "SELECT position, message_id, name, payload, correlation_id, causation_id, \
                 (extract(epoch FROM created_at) * 1000)::int8, attempts, trace_context \
                 FROM {outbox} WHERE dispatched_at IS NULL \
                 AND created_at < now() - make_interval(secs => $1) AND name = ANY($3) \
                 ORDER BY position LIMIT $2"
            ),
            record_inbox: format!(
                "INSERT INTO {inbox} (message_id, handler) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            // Counted up to a bound: a scrape never walks a huge table.
            inbox_rows: format!("SELECT count(*) FROM (SELECT 1 FROM {inbox} LIMIT $1) AS counted"),
            prune_inbox: format!(
                "DELETE FROM {inbox} WHERE handled_at < now() - make_interval(secs => $1)"
            ),
            lease: format!(
                "INSERT INTO {lease} (name, holder, expires_at) \
                 VALUES ('relay', $1, now() + make_interval(secs => $2)) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE {lease}.holder = EXCLUDED.holder OR {lease}.expires_at < now() \
                 RETURNING holder"
            ),
            release: format!("DELETE FROM {lease} WHERE name = 'relay' AND holder = $1"),
            unsent: format!(
                "SELECT position, message_id, name, payload, correlation_id, causation_id, \
                 (extract(epoch FROM created_at) * 1000)::int8, attempts, trace_context \
                 FROM {outbox} WHERE sent_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until <= now()) \
                 ORDER BY position LIMIT $1"
            ),
            backlog: format!(
                "SELECT count(*), (extract(epoch FROM min(created_at)) * 1000)::int8 \
                 FROM {outbox} WHERE sent_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until <= now())"
            ),
            mark_sent: format!(
                "WITH unsynced AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 UPDATE {outbox} SET sent_at = now() FROM unsynced WHERE position = ANY($1)"
            ),
            // `claimed_until`: not published again before; `attempts`: how
            // many times the broker could not route it.
            defer: format!(
                "UPDATE {outbox} o SET attempts = o.attempts + 1, \
                 claimed_until = now() + make_interval(secs => d.secs) \
                 FROM UNNEST($1::int8[], $2::float8[]) AS d(position, secs) \
                 WHERE o.position = d.position"
            ),
            prune_outbox: format!(
                "DELETE FROM {outbox} WHERE sent_at < now() - make_interval(secs => $1) \
                 AND dispatched_at IS NOT NULL"
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
    let undispatched = quote_ident(&format!("{prefix}outbox_undispatched"));
    let lease = tables.name("relay_lease");
    let aggregates = tables.name("aggregates");
    let scheduled = tables.name("scheduled");
    let scheduled_next = quote_ident(&format!("{prefix}scheduled_next_at"));
    vec![
        vec![
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
            format!(
                "CREATE INDEX IF NOT EXISTS {unsent} ON {outbox} (position) WHERE sent_at IS NULL"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {inbox} (
                message_id UUID NOT NULL,
                handler TEXT NOT NULL,
                handled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (message_id, handler)
            )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {handled} ON {inbox} (handled_at)"),
        ],
        // 2: the lease of the outbox relay (one instance publishes at a time).
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {lease} (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        )"
        )],
        // 3: the dispatch journal: events with handlers in the process that
        // committed them, NULL until those handlers ran (rows before this
        // migration, and rows only to publish, count as dispatched).
        vec![
            format!(
                "ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS dispatched_at TIMESTAMPTZ DEFAULT now()"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {undispatched} ON {outbox} (position) WHERE dispatched_at IS NULL"
            ),
        ],
        // 4: the aggregate store: aggregates without a repository, as
        // their JSON (text, kept as written: a unit of work compares it;
        // `jsonb` would reorder it) and their version, keyed by the
        // aggregate's name and id.
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {aggregates} (
            aggregate TEXT NOT NULL,
            id TEXT NOT NULL,
            version BIGINT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (aggregate, id)
        )"
        )],
        // 5: the trace context of each row (a JSON object of the
        // propagator's fields), sent with the message.
        vec![format!(
            "ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS trace_context TEXT"
        )],
        // 6: scheduled messages, until they are delivered; a claim reads
        // only the due ones, through the index on when each is tried next.
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {scheduled} (
                message_id UUID PRIMARY KEY,
                name TEXT NOT NULL,
                payload TEXT NOT NULL,
                correlation_id UUID NOT NULL,
                causation_id UUID,
                created_at BIGINT NOT NULL,
                due_at BIGINT NOT NULL,
                next_at BIGINT NOT NULL,
                attempts INT NOT NULL DEFAULT 0,
                trace_context TEXT
            )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {scheduled_next} ON {scheduled} (next_at)"),
        ],
    ]
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
    /// Signalled when a transaction of this process committed outbox rows.
    committed: Arc<Notify>,
    /// Connections units of work ended on, kept for the next ones.
    kept: Arc<Kept<Postgres>>,
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
        let mut connect_options: PgConnectOptions =
            url.parse().map_err(|e| connect_error(url, e))?;
        if let Some(name) = &options.application_name {
            connect_options = connect_options.application_name(name);
        }
        // No ping on every checkout (sqlx's default): it is one more round
        // trip per unit of work. A connection the server closed while idle
        // is found at BEGIN instead, and `begin` retries once.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
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
            .connect_with(connect_options)
            .await
            .map_err(|e| connect_error(url, e))?;
        Self::setup(pool, url, options.tables, options.keep_idle).await
    }

    /// Uses an existing pool (whose connections should have the right
    /// `search_path` already) and creates the framework's tables.
    ///
    /// The connection a unit of work ended on is kept for the next one for
    /// up to 20 ms, and only while the pool could serve another caller, as
    /// with [`PostgresOptions::keep_idle_connections`]'s default; set it
    /// with [`from_pool_with`](Self::from_pool_with).
    pub async fn from_pool(pool: PgPool, tables: Tables) -> Result<Self, Error> {
        Self::setup(pool, GIVEN_POOL, tables, KEEP_IDLE).await
    }

    /// Uses an existing pool, with the tables (`schema`, `table_prefix`)
    /// and the [`keep_idle_connections`](PostgresOptions::keep_idle_connections)
    /// of `options`. The pool's own settings (`max_connections`,
    /// `acquire_timeout`, `application_name`) are the pool's: set on
    /// `options`, they are an error, not ignored.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // The application's pool, which its own queries share with eda: eda
    /// // gives every connection back at once.
    /// let pool = eda_core::sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
    /// let db = PostgresDatabase::from_pool_with(
    ///     pool,
    ///     PostgresOptions::default().keep_idle_connections(Duration::ZERO),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_pool_with(pool: PgPool, options: PostgresOptions) -> Result<Self, Error> {
        options.pool_settings.refuse(
            GIVEN_POOL,
            "PostgresOptions",
            "PgPoolOptions, PgConnectOptions",
        )?;
        Self::setup(pool, GIVEN_POOL, options.tables, options.keep_idle).await
    }

    async fn setup(
        pool: PgPool,
        url: &str,
        tables: Tables,
        keep_idle: Duration,
    ) -> Result<Self, Error> {
        let db = PostgresDatabase {
            inner: Arc::new(Inner {
                statements: Statements::new(&tables),
                kept: Kept::new(pool.clone(), keep_idle),
                pool,
                url: RedactedUrl(url.to_owned()),
                tables,
                committed: Arc::new(Notify::new()),
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

    /// The inbox's rows (messages remembered as handled, per handler),
    /// counted up to `limit`.
    pub async fn inbox_rows(&self, limit: u64) -> Result<u64, Error> {
        sqlx::query_scalar::<_, i64>(&self.inner.statements.inbox_rows)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(&self.inner.pool)
            .await
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(adapter_error)
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

impl PostgresDatabase {
    /// Deletes outbox rows published longer than `age` ago. Returns how
    /// many rows were deleted.
    pub async fn prune_outbox(&self, age: Duration) -> Result<u64, Error> {
        sqlx::query(&self.inner.statements.prune_outbox)
            .bind(age.as_secs_f64())
            .execute(&self.inner.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(adapter_error)
    }
}

impl OutboxStore for PostgresDatabase {
    fn lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let row = sqlx::query(&self.inner.statements.lease)
                .bind(holder)
                .bind(ttl.as_secs_f64())
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(row.is_some())
        })
    }

    fn release<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            sqlx::query(&self.inner.statements.release)
                .bind(holder)
                .execute(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn unsent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxEntry>, Error>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.inner.statements.unsent)
                .bind(limit as i64)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            rows.iter().map(outbox_entry).collect()
        })
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        Box::pin(async move {
            let (rows, oldest): (i64, Option<i64>) = sqlx::query_as(&self.inner.statements.backlog)
                .fetch_one(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(Backlog {
                rows: rows.max(0) as u64,
                capped: false,
                oldest: oldest.map(|ms| Timestamp::from_millis(ms.max(0) as u64)),
            })
        })
    }

    fn mark_sent<'a>(&'a self, positions: &'a [i64]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // Without waiting for the disk (synchronous_commit off for this
            // statement's own transaction only): a mark lost in a crash only
            // means the message is published again, and consumers' inboxes
            // remove the duplicate. Waiting would stall the relay between
            // batches for the length of an fsync.
            sqlx::query(&self.inner.statements.mark_sent)
                .bind(positions)
                .execute(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn defer<'a>(&'a self, rows: &'a [(i64, Duration)]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let positions: Vec<i64> = rows.iter().map(|(p, _)| *p).collect();
            let delays: Vec<f64> = rows.iter().map(|(_, d)| d.as_secs_f64()).collect();
            sqlx::query(&self.inner.statements.defer)
                .bind(positions)
                .bind(delays)
                .execute(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn committed(&self) -> Arc<Notify> {
        self.inner.committed.clone()
    }
}

impl Adapter for PostgresDatabase {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

/// Outbox rows as columns, bound as arrays to an `INSERT … SELECT FROM
/// UNNEST(…)` (one round trip for any number of rows).
struct OutboxColumns<'a> {
    ids: Vec<Uuid>,
    names: Vec<&'a str>,
    payloads: Vec<&'a str>,
    correlations: Vec<Uuid>,
    causations: Vec<Option<Uuid>>,
    timestamps: Vec<i64>,
    traces: Vec<Option<String>>,
}

impl<'a> OutboxColumns<'a> {
    fn new(messages: impl ExactSizeIterator<Item = &'a ExternalMessage>) -> Result<Self, Error> {
        let n = messages.len();
        let mut columns = OutboxColumns {
            ids: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            correlations: Vec::with_capacity(n),
            causations: Vec::with_capacity(n),
            timestamps: Vec::with_capacity(n),
            traces: Vec::with_capacity(n),
        };
        for m in messages {
            columns.ids.push(m.metadata.message_id.as_uuid());
            columns.names.push(m.name.as_str());
            columns
                .payloads
                .push(std::str::from_utf8(&m.payload).map_err(Error::database)?);
            columns
                .correlations
                .push(m.metadata.correlation_id.as_uuid());
            columns
                .causations
                .push(m.metadata.causation_id.map(|c| c.as_uuid()));
            columns
                .timestamps
                .push(m.metadata.timestamp.as_millis() as i64);
            columns.traces.push(m.trace.to_column());
        }
        Ok(columns)
    }

    /// Binds `$1` to `$7`.
    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        query
            .bind(self.ids)
            .bind(self.names)
            .bind(self.payloads)
            .bind(self.correlations)
            .bind(self.causations)
            .bind(self.timestamps)
            .bind(self.traces)
    }
}

/// An outbox row, as `unsent` and `undispatched` select it.
fn outbox_entry(row: &sqlx::postgres::PgRow) -> Result<OutboxEntry, Error> {
    let column = |e: sqlx::Error| Error::Database(e.into());
    let payload: String = row.try_get(3).map_err(column)?;
    Ok(OutboxEntry {
        position: row.try_get(0).map_err(column)?,
        message: ExternalMessage {
            name: row.try_get(2).map_err(column)?,
            metadata: Metadata {
                message_id: row.try_get::<Uuid, _>(1).map_err(column)?.into(),
                correlation_id: row.try_get::<Uuid, _>(4).map_err(column)?.into(),
                causation_id: row
                    .try_get::<Option<Uuid>, _>(5)
                    .map_err(column)?
                    .map(Into::into),
                timestamp: Timestamp::from_millis(
                    row.try_get::<i64, _>(6).map_err(column)?.max(0) as u64
                ),
            },
            payload: payload.into_bytes(),
            trace: TraceContext::from_column(row.try_get::<Option<&str>, _>(8).map_err(column)?),
        },
        attempts: u32::try_from(row.try_get::<i32, _>(7).map_err(column)?).unwrap_or(0),
    })
}

impl Database for PostgresDatabase {
    fn describe(&self) -> String {
        self.inner.url.to_string()
    }

    fn connection_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<PgConnection>(), "sqlx::PgConnection")
    }

    fn aggregate_storage(&self) -> AggregateStorage {
        AggregateStorage::Documents
    }

    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        Box::pin(async move {
            // Pooled connections that died while idle (the server restarted,
            // a proxy timed out) are found here: each failed BEGIN drops one;
            // try the next, up to as many as the pool holds.
            let mut attempts = self.inner.pool.options().get_max_connections() + 1;
            loop {
                match self.inner.kept.begin(None).await {
                    Ok(conn) => {
                        return Ok(Box::new(PgTransaction {
                            conn,
                            db: self.inner.clone(),
                            wrote_outbox: false,
                        }) as Box<dyn DatabaseTransaction>);
                    }
                    Err(e) if attempts > 1 && is_dead_connection(&e) => {
                        tracing::debug!(error = %e, "pooled connection was dead, taking another");
                        attempts -= 1;
                    }
                    Err(e) => return Err(adapter_error(e)),
                }
            }
        })
    }

    fn mark_dispatched<'a>(&'a self, ids: &'a [MessageId]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // Without waiting for the disk, like `mark_sent`: a mark lost in
            // a crash means the event is dispatched again, and the inbox
            // keeps handlers with a unit of work from running twice.
            let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
            sqlx::query(&self.inner.statements.mark_dispatched)
                .bind(ids)
                .execute(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn undispatched<'a>(
        &'a self,
        names: &'a [&'a str],
        older_than: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ExternalMessage>, Error>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.inner.statements.undispatched)
                .bind(older_than.as_secs_f64())
                .bind(limit as i64)
                .bind(names)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            rows.iter()
                .map(|row| outbox_entry(row).map(|entry| entry.message))
                .collect()
        })
    }

    fn claim_due<'a>(
        &'a self,
        names: &'a [&'a str],
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ScheduledMessage>, Error>> {
        Box::pin(async move {
            let now = millis(now);
            let rows = sqlx::query(&self.inner.statements.claim_due)
                .bind(now)
                .bind(now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(names)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            let mut due: Vec<ScheduledMessage> = rows
                .iter()
                .map(|row| outbox_entry(row).map(scheduled_message))
                .collect::<Result<_, _>>()?;
            due.sort_by_key(|s| s.due);
            Ok(due)
        })
    }

    fn retry_scheduled<'a>(
        &'a self,
        id: MessageId,
        at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            sqlx::query(&self.inner.statements.retry_scheduled)
                .bind(id.as_uuid())
                .bind(at.map_or(PARKED_AT, millis))
                .execute(&self.inner.pool)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn scheduled_rows(&self, limit: u64) -> BoxFuture<'_, Result<ScheduledRows, Error>> {
        Box::pin(async move {
            let (pending, parked): (i64, i64) =
                sqlx::query_as(&self.inner.statements.scheduled_rows)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_one(&self.inner.pool)
                    .await
                    .map_err(adapter_error)?;
            Ok(ScheduledRows {
                pending: pending.max(0) as u64,
                parked: parked.max(0) as u64,
            })
        })
    }
}

/// An error that means the connection itself is gone (not the query):
/// I/O and protocol failures, and SQLSTATE classes 08 (connection
/// exception) and 57 (operator intervention: the server shut the session).
fn is_dead_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

/// A unit of work's transaction, on a connection of the pool or one the
/// previous unit of work ended on ([`Kept`]).
struct PgTransaction {
    conn: Lent<Postgres>,
    db: Arc<Inner>,
    wrote_outbox: bool,
}

impl DatabaseTransaction for PgTransaction {
    fn connection(&mut self) -> &mut (dyn Any + Send) {
        let conn: &mut PgConnection = &mut self.conn;
        conn
    }

    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.wrote_outbox = true;
        Box::pin(async move {
            if let [m] = messages {
                sqlx::query(&self.db.statements.write_outbox_one)
                    .bind(m.metadata.message_id.as_uuid())
                    .bind(m.name.as_str())
                    .bind(std::str::from_utf8(&m.payload).map_err(Error::database)?)
                    .bind(m.metadata.correlation_id.as_uuid())
                    .bind(m.metadata.causation_id.map(|c| c.as_uuid()))
                    .bind(m.metadata.timestamp.as_millis() as i64)
                    .bind(m.trace.to_column())
                    .execute(&mut *self.conn)
                    .await
                    .map_err(adapter_error)?;
                return Ok(());
            }
            OutboxColumns::new(messages.iter())?
                .bind(sqlx::query(&self.db.statements.write_outbox))
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn schedule<'a>(
        &'a mut self,
        messages: &'a [ScheduledMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let due: Vec<i64> = messages
                .iter()
                .map(|s| millis(s.due).min(PARKED_AT - 1))
                .collect();
            OutboxColumns::new(messages.iter().map(|s| &s.message))?
                .bind(sqlx::query(&self.db.statements.schedule))
                .bind(due)
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn cancel_scheduled<'a>(&'a mut self, id: MessageId) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let done = sqlx::query(&self.db.statements.cancel_scheduled)
                .bind(id.as_uuid())
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn remove_scheduled<'a>(
        &'a mut self,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>, Error>> {
        Box::pin(async move {
            let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
            let removed: Vec<(Uuid,)> = sqlx::query_as(&self.db.statements.remove_scheduled)
                .bind(ids)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(removed.into_iter().map(|(id,)| id.into()).collect())
        })
    }

    fn keeps_journal(&self) -> bool {
        true
    }

    fn write_events<'a>(&'a mut self, rows: &'a [OutboxWrite]) -> BoxFuture<'a, Result<(), Error>> {
        self.wrote_outbox |= rows.iter().any(|r| r.publish);
        Box::pin(async move {
            let publish: Vec<bool> = rows.iter().map(|r| r.publish).collect();
            let dispatch: Vec<bool> = rows.iter().map(|r| r.dispatch).collect();
            OutboxColumns::new(rows.iter().map(|r| &r.message))?
                .bind(sqlx::query(&self.db.statements.write_events))
                .bind(publish)
                .bind(dispatch)
                .execute(&mut *self.conn)
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
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn load_aggregate<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, Error>> {
        Box::pin(async move {
            let row = sqlx::query(&self.db.statements.load_aggregate)
                .bind(aggregate_type.name())
                .bind(key)
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            row.as_ref().map(stored).transpose()
        })
    }

    fn aggregates<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
    ) -> BoxFuture<'a, Result<Vec<Stored>, Error>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.db.statements.aggregates)
                .bind(aggregate_type.name())
                .fetch_all(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            rows.iter().map(stored).collect()
        })
    }

    fn save_aggregate<'a>(&'a mut self, save: Save<'a>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let body = save.document()?;
            let version = i64::try_from(save.version()).map_err(Error::database)?;
            let done = match save.expected() {
                None => sqlx::query(&self.db.statements.insert_aggregate)
                    .bind(save.aggregate_type().name())
                    .bind(save.key())
                    .bind(version)
                    .bind(body)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(adapter_error)?,
                Some(expected) => sqlx::query(&self.db.statements.update_aggregate)
                    .bind(save.aggregate_type().name())
                    .bind(save.key())
                    .bind(version)
                    .bind(body)
                    .bind(i64::try_from(expected).map_err(Error::database)?)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(adapter_error)?,
            };
            save.saved(done.rows_affected())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            self.conn
                .commit(&self.db.kept)
                .await
                .map_err(adapter_error)?;
            if self.wrote_outbox {
                // A permit, not a broadcast: a relay busy publishing when
                // this fires still sees it on its next wait.
                self.db.committed.notify_one();
            }
            Ok(())
        })
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            self.conn
                .rollback(&self.db.kept)
                .await
                .map_err(adapter_error)
        })
    }
}
