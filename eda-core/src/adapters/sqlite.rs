//! The SQLite adapter (feature `sqlite`), the embedded default: units of work
//! run in sqlx transactions on a database file (or in memory); the outbox and
//! the inbox are tables written in those same transactions.
//!
//! ```standalone_crate
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use eda_core::adapters::sqlite::{SqliteDatabase, SqliteOptions};
//!
//! // A file (`sqlite://allocation.db`, created if missing), or in memory:
//! let db = SqliteDatabase::connect_with("sqlite::memory:", SqliteOptions::default()).await?;
//! let bus = eda_core::MessageBus::builder().adapter(db.clone()).build()?;
//! # let _ = bus;
//! # let n: i64 = eda_core::sqlx::query_scalar("SELECT count(*) FROM eda_outbox")
//! #     .fetch_one(db.pool()).await?;
//! # assert_eq!(n, 0);
//! # Ok(()) }
//! ```
//!
//! Repositories for SQLite implement [`Repository`](crate::Repository)
//! with `type Connection = sqlx::SqliteConnection` and run their queries on
//! the connection they are lent: the unit of work's transaction.
//!
//! # Concurrency
//!
//! SQLite has one writer at a time. Units of work begin with
//! `BEGIN IMMEDIATE`: each takes the write lock before it reads, so writers
//! take turns (waiting up to [`SqliteOptions::busy_timeout`]) and a
//! transaction that read an aggregate cannot fail later when it upgrades to
//! writing. The aggregates' version check stays as the backstop. Whatever
//! SQLite still reports as busy or locked (the wait ran out) is a retryable
//! conflict ([`Error::is_conflict`]), which the bus runs again by policy.
//! File databases use the WAL journal, so that reads outside units of work
//! (`pool()`) do not wait for the writer.
//!
//! Every unit of work is a writer, even one that only reads (the adapter
//! cannot tell them apart), so one must not wait for another: a handler
//! that sends a command through the bus before committing its own unit of
//! work makes that command wait for the lock it holds, until the busy
//! timeout. Commit first, or read through [`SqliteDatabase::pool`].
//!
//! # In memory
//!
//! `sqlite::memory:` is a database that lives as long as its connection:
//! several pool connections to `:memory:` would be several empty databases.
//! The adapter therefore keeps exactly one connection, never closed while
//! the pool lives; units of work take turns on it. A query on
//! [`SqliteDatabase::pool`] waits while a unit of work is open, so a handler
//! must run its own queries on its unit of work's connection
//! ([`UowTransaction::connection`](crate::UowTransaction::connection)), as it
//! should anyway.
//!
//! # Tables
//!
//! The framework's tables are created at connection time by idempotent
//! migrations, in a `BEGIN IMMEDIATE` transaction, so several processes can
//! start at once on one file. Ids (message, correlation, causation) are
//! `TEXT`, hyphenated lower-case UUIDs; timestamps are `TEXT` in UTC, in
//! [`TIMESTAMP_FORMAT`] (`2024-05-01T12:00:00.000Z`), which sorts and
//! compares as time does.
//!
//! # The outbox relay
//!
//! A `SqliteDatabase` is an [`OutboxStore`]: give it to
//! [`OutboxRelay::spawn`](crate::OutboxRelay::spawn). The relay lease is a
//! row of `<prefix>relay_lease`, so that of several processes on one file
//! one publishes at a time; its expiry is SQLite's `'now'`, the clock of
//! the machine the processes share (WAL files cannot be shared across
//! machines). Rows are published in `position` order, which is commit
//! order: units of work hold the write lock from their first statement, so
//! no transaction can commit a lower position after a higher one was
//! published.

use std::any::{Any, TypeId};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use tokio::sync::Notify;
use uuid::Uuid;

use super::RedactedUrl;
use super::kept::{KEEP_IDLE, Kept, Lent};
use super::sql::{
    PARKED_AT, PoolSettings, Tables, adapter_error, connect_error, is_sqlite_busy, millis,
    quote_ident, scheduled_message, stored,
};
use crate::adapter::{Adapter, Database, DatabaseTransaction, ScheduledRows};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::{MessageId, Metadata, Timestamp};
use crate::outbox::{Backlog, OutboxEntry, OutboxStore};
use crate::outbox::{ExternalMessage, OutboxWrite};
use crate::retry::Backoff;
use crate::schedule::ScheduledMessage;
use crate::store::{AggregateStorage, AggregateType, Save, Stored};
use crate::trace_context::TraceContext;

/// The `strftime` format of the framework's timestamps (`created_at`,
/// `handled_at`, ...): UTC with milliseconds, e.g.
/// `2024-05-01T12:00:00.000Z`. Use it to compare with them:
/// `strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')`.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%fZ";

/// What a given pool's errors name instead of a URL.
const GIVEN_POOL: &str = "sqlite (given pool)";

/// How to connect and what to call the framework's tables.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    tables: Tables,
    max_connections: u32,
    busy_timeout: Duration,
    acquire_timeout: Duration,
    keep_idle: Duration,
    /// The settings of the pool's own that were set (see
    /// [`SqliteDatabase::from_pool_with`]).
    pool_settings: PoolSettings,
}

impl Default for SqliteOptions {
    /// Tables `eda_outbox`, `eda_inbox`, `eda_relay_lease`,
    /// `eda_migrations`; 5 connections (one for an in-memory database);
    /// writers wait up to 5 s for each other; 10 s to acquire a connection;
    /// a connection kept 20 ms for the next unit of work.
    fn default() -> Self {
        SqliteOptions {
            tables: Tables::default(),
            max_connections: 5,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
            keep_idle: KEEP_IDLE,
            pool_settings: PoolSettings::default(),
        }
    }
}

impl SqliteOptions {
    /// Prefix of the framework's tables (`eda_` by default).
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tables.prefix = prefix.into();
        self
    }

    /// At most this many connections in the pool. Ignored for an in-memory
    /// database, which has exactly one.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self.pool_setting("max_connections")
    }

    /// How long a writer waits for another to finish before SQLite gives up
    /// with "database is locked" (then a retryable conflict).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self.pool_setting("busy_timeout")
    }

    /// How long to wait for a free connection of the pool before failing.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self.pool_setting("acquire_timeout")
    }

    fn pool_setting(mut self, name: &'static str) -> Self {
        self.pool_settings.set(name);
        self
    }

    /// How long the connection a unit of work ended on waits for the next
    /// unit of work before it goes back to the pool (20 ms by default).
    ///
    /// sqlx pings a connection when it goes back to its pool (for SQLite, a
    /// round trip to the connection's thread). A unit of work that begins
    /// within this time takes the connection the previous one ended on
    /// instead. A connection is only kept while the pool could still serve
    /// someone else (it has an idle connection or room for another: never
    /// for an in-memory database, whose pool has one connection), and for
    /// at most a second from when it left the pool. `Duration::ZERO` gives
    /// every connection back at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eda_core::adapters::sqlite::SqliteOptions;
    ///
    /// let options = SqliteOptions::default().keep_idle_connections(Duration::ZERO);
    /// ```
    pub fn keep_idle_connections(mut self, idle: Duration) -> Self {
        self.keep_idle = idle;
        self
    }
}

/// The statements of the framework, with its table names in them, built once.
struct Statements {
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
        let now = format!("strftime('{TIMESTAMP_FORMAT}', 'now')");
        Statements {
            // Times in milliseconds since the epoch, from the service's
            // clock; `next_at` is when it is tried next (its due time, then
            // a claim's lease or a retry's; PARKED_AT when parked).
            schedule: format!(
                "INSERT INTO {scheduled} (message_id, name, payload, correlation_id, causation_id, \
                 created_at, due_at, next_at, trace_context) \
                 SELECT json_extract(value, '$.m'), json_extract(value, '$.n'), \
                 json_extract(value, '$.p'), json_extract(value, '$.c'), json_extract(value, '$.k'), \
                 json_extract(value, '$.t'), json_extract(value, '$.w'), json_extract(value, '$.w'), \
                 json_extract(value, '$.x') \
                 FROM json_each(?1) ORDER BY key"
            ),
            cancel_scheduled: format!(
                "DELETE FROM {scheduled} WHERE message_id = ?1 AND attempts = 0"
            ),
            remove_scheduled: format!(
                "DELETE FROM {scheduled} WHERE message_id IN (SELECT value FROM json_each(?1)) \
                 RETURNING message_id"
            ),
            // The columns of an outbox row, with the due time for its
            // position. One statement: SQLite has one writer, so two
            // instances never claim the same row.
            claim_due: format!(
                "UPDATE {scheduled} SET next_at = ?2, attempts = attempts + 1 \
                 WHERE message_id IN (SELECT message_id FROM {scheduled} WHERE next_at <= ?1 \
                 AND name IN (SELECT value FROM json_each(?4)) ORDER BY next_at LIMIT ?3) \
                 RETURNING due_at, message_id, name, payload, correlation_id, causation_id, \
                 created_at, attempts, trace_context"
            ),
            retry_scheduled: format!("UPDATE {scheduled} SET next_at = ?2 WHERE message_id = ?1"),
            scheduled_rows: format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM {scheduled} LIMIT ?1)), \
                 (SELECT count(*) FROM {scheduled} WHERE next_at = {PARKED_AT})"
            ),
            load_aggregate: format!(
                "SELECT version, body FROM {aggregates} WHERE aggregate = ?1 AND id = ?2"
            ),
            aggregates: format!(
                "SELECT version, body FROM {aggregates} WHERE aggregate = ?1 ORDER BY id"
            ),
            // A conflict on the key inserts nothing: the caller says
            // `AlreadyExists`.
            insert_aggregate: format!(
                "INSERT INTO {aggregates} (aggregate, id, version, body) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT DO NOTHING"
            ),
            update_aggregate: format!(
                "UPDATE {aggregates} SET version = ?3, body = ?4 \
                 WHERE aggregate = ?1 AND id = ?2 AND version = ?5"
            ),
            // One statement for any number of messages: they arrive as one
            // JSON array, in order.
            write_outbox: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at, \
                 trace_context) \
                 SELECT json_extract(value, '$.m'), json_extract(value, '$.n'), \
                 json_extract(value, '$.p'), json_extract(value, '$.c'), json_extract(value, '$.k'), \
                 strftime('{TIMESTAMP_FORMAT}', json_extract(value, '$.t') / 1000.0, 'unixepoch'), \
                 json_extract(value, '$.x') \
                 FROM json_each(?1) ORDER BY key"
            ),
            // The same, with `u` (publish) and `d` (dispatch) for each row.
            write_events: format!(
                "INSERT INTO {outbox} (message_id, name, payload, correlation_id, causation_id, created_at, \
                 sent_at, dispatched_at, trace_context) \
                 SELECT json_extract(value, '$.m'), json_extract(value, '$.n'), \
                 json_extract(value, '$.p'), json_extract(value, '$.c'), json_extract(value, '$.k'), \
                 strftime('{TIMESTAMP_FORMAT}', json_extract(value, '$.t') / 1000.0, 'unixepoch'), \
                 CASE WHEN json_extract(value, '$.u') THEN NULL ELSE {now} END, \
                 CASE WHEN json_extract(value, '$.d') THEN NULL ELSE {now} END, \
                 json_extract(value, '$.x') \
                 FROM json_each(?1) ORDER BY key"
            ),
            // The ids arrive as one JSON array.
            mark_dispatched: format!(
                "UPDATE {outbox} SET dispatched_at = {now} \
                 WHERE dispatched_at IS NULL AND message_id IN (SELECT value FROM json_each(?1))"
            ),
            undispatched: format!(
                "SELECT position, message_id, name, payload, correlation_id, causation_id, \
                 CAST(strftime('%s', created_at) AS INTEGER) * 1000 \
                 + CAST(substr(strftime('%f', created_at), 4, 3) AS INTEGER), attempts, trace_context \
                 FROM {outbox} WHERE dispatched_at IS NULL \
                 AND created_at < strftime('{TIMESTAMP_FORMAT}', 'now', ?1) \
                 AND name IN (SELECT value FROM json_each(?3)) ORDER BY position LIMIT ?2"
            ),
            record_inbox: format!(
                "INSERT INTO {inbox} (message_id, handler) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
            ),
            // Counted up to a bound: a scrape never walks a huge table.
            inbox_rows: format!("SELECT count(*) FROM (SELECT 1 FROM {inbox} LIMIT ?1) AS counted"),
            prune_inbox: format!(
                "DELETE FROM {inbox} WHERE handled_at < strftime('{TIMESTAMP_FORMAT}', 'now', ?1)"
            ),
            // Takes the lease if nobody holds it or it expired, renews it if
            // `?1` holds it; returns a row if and only if `?1` holds it now.
            // (In `DO UPDATE`, bare column names are the existing row's.)
            lease: format!(
                "INSERT INTO {lease} (name, holder, expires_at) \
                 VALUES ('relay', ?1, strftime('{TIMESTAMP_FORMAT}', 'now', ?2)) \
                 ON CONFLICT (name) DO UPDATE \
                 SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE holder = excluded.holder OR expires_at < {now} \
                 RETURNING holder"
            ),
            release: format!("DELETE FROM {lease} WHERE name = 'relay' AND holder = ?1"),
            // `created_at` back to milliseconds, in integers: seconds since
            // the epoch, and the milliseconds of `%f` (`SS.SSS`).
            unsent: format!(
                "SELECT position, message_id, name, payload, correlation_id, causation_id, \
                 CAST(strftime('%s', created_at) AS INTEGER) * 1000 \
                 + CAST(substr(strftime('%f', created_at), 4, 3) AS INTEGER), attempts, trace_context \
                 FROM {outbox} WHERE sent_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until <= {now}) \
                 ORDER BY position LIMIT ?1"
            ),
            backlog: format!(
                "SELECT count(*), CAST(strftime('%s', min(created_at)) AS INTEGER) * 1000 \
                 + CAST(substr(strftime('%f', min(created_at)), 4, 3) AS INTEGER) \
                 FROM {outbox} WHERE sent_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until <= {now})"
            ),
            // The positions arrive as one JSON array.
            mark_sent: format!(
                "UPDATE {outbox} SET sent_at = {now} \
                 WHERE position IN (SELECT value FROM json_each(?1))"
            ),
            // `claimed_until`: not published again before; `attempts`: how
            // many times the broker could not route it.
            defer: format!(
                "UPDATE {outbox} SET attempts = attempts + 1, \
                 claimed_until = strftime('{TIMESTAMP_FORMAT}', 'now', ?2) WHERE position = ?1"
            ),
            prune_outbox: format!(
                "DELETE FROM {outbox} WHERE sent_at < strftime('{TIMESTAMP_FORMAT}', 'now', ?1) \
                 AND dispatched_at IS NOT NULL"
            ),
        }
    }
}

/// One outbox row, as an element of the JSON array `write_outbox` binds.
#[derive(Serialize)]
struct OutboxRow<'a> {
    m: Uuid,
    n: &'a str,
    p: &'a str,
    c: Uuid,
    k: Option<Uuid>,
    t: u64,
    /// The trace context, as JSON text (none when empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    /// To publish (`write_events` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<bool>,
    /// To dispatch (`write_events` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    d: Option<bool>,
    /// When it is due (`schedule` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    w: Option<u64>,
}

impl<'a> OutboxRow<'a> {
    fn new(m: &'a ExternalMessage) -> Result<Self, Error> {
        Ok(OutboxRow {
            m: m.metadata.message_id.as_uuid(),
            n: &m.name,
            p: std::str::from_utf8(&m.payload).map_err(Error::database)?,
            c: m.metadata.correlation_id.as_uuid(),
            k: m.metadata.causation_id.map(|c| c.as_uuid()),
            t: m.metadata.timestamp.as_millis(),
            x: m.trace.to_column(),
            u: None,
            d: None,
            w: None,
        })
    }
}

/// A framework table's name without its schema (the table of a
/// `CREATE INDEX`), and an index's name with it: SQLite qualifies the index,
/// not its table.
fn index_on(tables: &Tables, index: &str, table: &str) -> (String, String) {
    let index = quote_ident(&format!("{}{index}", tables.prefix));
    let index = match &tables.schema {
        Some(schema) => format!("{}.{index}", quote_ident(schema)),
        None => index,
    };
    (index, quote_ident(&format!("{}{table}", tables.prefix)))
}

/// The migrations of the framework's tables, in order, one statement per
/// string. Each runs once (the migrations table remembers), and each is
/// idempotent anyway.
fn migrations(tables: &Tables) -> Vec<Vec<String>> {
    let outbox = tables.name("outbox");
    let inbox = tables.name("inbox");
    let lease = tables.name("relay_lease");
    let aggregates = tables.name("aggregates");
    let (unsent, outbox_table) = index_on(tables, "outbox_unsent", "outbox");
    let (handled, inbox_table) = index_on(tables, "inbox_handled_at", "inbox");
    let (undispatched, _) = index_on(tables, "outbox_undispatched", "outbox");
    let scheduled = tables.name("scheduled");
    let (scheduled_next, scheduled_table) = index_on(tables, "scheduled_next_at", "scheduled");
    vec![
        vec![
            // AUTOINCREMENT: a position is never reused, even after the last
            // rows were deleted, so a relay can remember where it stopped.
            format!(
                "CREATE TABLE IF NOT EXISTS {outbox} (
                position INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                payload TEXT NOT NULL,
                correlation_id TEXT NOT NULL,
                causation_id TEXT,
                created_at TEXT NOT NULL,
                sent_at TEXT,
                claimed_until TEXT,
                attempts INTEGER NOT NULL DEFAULT 0
            )"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {unsent} ON {outbox_table} (position) WHERE sent_at IS NULL"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {inbox} (
                message_id TEXT NOT NULL,
                handler TEXT NOT NULL,
                handled_at TEXT NOT NULL DEFAULT (strftime('{TIMESTAMP_FORMAT}', 'now')),
                PRIMARY KEY (message_id, handler)
            )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {handled} ON {inbox_table} (handled_at)"),
        ],
        // 2: the lease of the outbox relay (one process publishes at a
        // time). `expires_at` in `TIMESTAMP_FORMAT`.
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {lease} (
                name TEXT PRIMARY KEY NOT NULL,
                holder TEXT NOT NULL,
                expires_at TEXT NOT NULL
            )"
        )],
        // 3: the dispatch journal: events with handlers in the process that
        // committed them, NULL until those handlers ran. (SQLite adds a
        // column only with a constant default: rows before this migration,
        // and rows only to publish, count as dispatched at the epoch.)
        vec![
            format!(
                "ALTER TABLE {outbox} ADD COLUMN dispatched_at TEXT DEFAULT '1970-01-01T00:00:00.000Z'"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {undispatched} ON {outbox_table} (position) WHERE dispatched_at IS NULL"
            ),
        ],
        // 4: the aggregate store: aggregates without a repository, as
        // their JSON (kept as written: a unit of work compares it) and their
        // version, keyed by the aggregate's name and id.
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {aggregates} (
                aggregate TEXT NOT NULL,
                id TEXT NOT NULL,
                version INTEGER NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (aggregate, id)
            )"
        )],
        // 5: the trace context of each row (a JSON object of the
        // propagator's fields), sent with the message.
        vec![format!(
            "ALTER TABLE {outbox} ADD COLUMN trace_context TEXT"
        )],
        // 6: scheduled messages, until they are delivered; a claim reads
        // only the due ones, through the index on when each is tried next.
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {scheduled} (
                message_id TEXT PRIMARY KEY NOT NULL,
                name TEXT NOT NULL,
                payload TEXT NOT NULL,
                correlation_id TEXT NOT NULL,
                causation_id TEXT,
                created_at INTEGER NOT NULL,
                due_at INTEGER NOT NULL,
                next_at INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                trace_context TEXT
            )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {scheduled_next} ON {scheduled_table} (next_at)"),
        ],
    ]
}

/// The migration, as owned SQL, run in one `BEGIN IMMEDIATE` transaction:
/// the write lock, taken before the applied version is read, makes
/// concurrent migrators take turns (each waits up to the busy timeout).
struct MigrationPlan {
    pool: SqlitePool,
    setup: String,
    applied: String,
    record: String,
    migrations: Vec<Vec<String>>,
}

impl MigrationPlan {
    async fn run(self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(&self.setup).execute(&mut *tx).await?;
        let applied: i64 = sqlx::query(&self.applied)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, statements) in self.migrations.iter().enumerate() {
            let version = i as i64 + 1;
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

/// Switches a database file to the WAL journal (a lasting property of the
/// file). The switch upgrades a read lock to a write lock, which SQLite does
/// not wait for (it could deadlock): when processes start at once, or one
/// is writing, it fails with "database is locked" at once, and is tried
/// again until `patience` ran out.
async fn enable_wal(pool: SqlitePool, patience: Duration) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        match sqlx::query("PRAGMA journal_mode = WAL")
            .fetch_one(&pool)
            .await
        {
            Ok(row) => {
                let mode: String = row.try_get(0)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    // E.g. a file system without shared memory: SQLite keeps
                    // a rollback journal, which is correct, only slower.
                    tracing::warn!(%mode, "SQLite refused the WAL journal");
                }
                return Ok(());
            }
            Err(sqlx::Error::Database(e)) if is_sqlite_busy(&*e) => {
                let delay = backoff.next_delay();
                if started.elapsed() + delay >= patience {
                    return Err(sqlx::Error::Database(e));
                }
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

struct Inner {
    pool: SqlitePool,
    url: RedactedUrl,
    tables: Tables,
    in_memory: bool,
    statements: Statements,
    /// Signalled when a transaction of this process committed outbox rows.
    committed: Arc<Notify>,
    /// Connections units of work ended on, kept for the next ones.
    kept: Arc<Kept<Sqlite>>,
}

/// A SQLite database: the [`Database`] adapter units of work begin their
/// transactions on. Clones share the pool.
#[derive(Clone)]
pub struct SqliteDatabase {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDatabase")
            .field("url", &self.inner.url)
            .field("tables", &self.inner.tables)
            .field("in_memory", &self.inner.in_memory)
            .finish()
    }
}

impl SqliteDatabase {
    /// Connects with the default options and creates the framework's tables.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, SqliteOptions::default()).await
    }

    /// Opens the database, creating the file if it is missing (unless the
    /// URL sets a `mode`), and creates the framework's tables.
    ///
    /// `url` is `sqlite://path/to/file.db` (relative), `sqlite:///abs/file.db`,
    /// `sqlite:file.db`, or `sqlite::memory:`. An error names the URL.
    pub async fn connect_with(url: &str, options: SqliteOptions) -> Result<Self, Error> {
        let (connect, in_memory) =
            connect_options(url, &options).map_err(|e| connect_error(url, e))?;
        let pool = if in_memory {
            // One connection, never closed while the pool lives: it is the
            // database.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(options.max_connections)
        }
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(|e| connect_error(url, e))?;
        if !in_memory {
            Box::pin(enable_wal(pool.clone(), options.busy_timeout))
                .await
                .map_err(|e| connect_error(url, e))?;
        }
        Self::setup(pool, url, options.tables, in_memory, options.keep_idle).await
    }

    /// Uses an existing pool as it is configured (journal, busy timeout:
    /// see [`SqliteOptions`] for what `connect_with` sets) and creates the
    /// framework's tables. For an in-memory database, the pool must keep
    /// exactly one connection open. A schema in `tables` is the name of an
    /// attached database.
    ///
    /// The connection a unit of work ended on is kept for the next one for
    /// up to 20 ms, and only while the pool could serve another caller, as
    /// with [`SqliteOptions::keep_idle_connections`]'s default; set it with
    /// [`from_pool_with`](Self::from_pool_with).
    pub async fn from_pool(pool: SqlitePool, tables: Tables) -> Result<Self, Error> {
        Self::setup(pool, GIVEN_POOL, tables, false, KEEP_IDLE).await
    }

    /// Uses an existing pool, as [`from_pool`](Self::from_pool) does, with
    /// the tables (`table_prefix`) and the
    /// [`keep_idle_connections`](SqliteOptions::keep_idle_connections) of
    /// `options`. The pool's own settings (`max_connections`,
    /// `busy_timeout`, `acquire_timeout`) are the pool's: set on `options`,
    /// they are an error, not ignored.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eda_core::adapters::sqlite::{SqliteDatabase, SqliteOptions};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // The application's pool, which its own queries share with eda: eda
    /// // gives every connection back at once.
    /// let pool = eda_core::sqlx::SqlitePool::connect("sqlite:app.db?mode=rwc").await?;
    /// let db = SqliteDatabase::from_pool_with(
    ///     pool,
    ///     SqliteOptions::default().keep_idle_connections(Duration::ZERO),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_pool_with(pool: SqlitePool, options: SqliteOptions) -> Result<Self, Error> {
        options.pool_settings.refuse(
            GIVEN_POOL,
            "SqliteOptions",
            "SqlitePoolOptions, SqliteConnectOptions",
        )?;
        Self::setup(pool, GIVEN_POOL, options.tables, false, options.keep_idle).await
    }

    async fn setup(
        pool: SqlitePool,
        url: &str,
        tables: Tables,
        in_memory: bool,
        keep_idle: Duration,
    ) -> Result<Self, Error> {
        let db = SqliteDatabase {
            inner: Arc::new(Inner {
                statements: Statements::new(&tables),
                kept: Kept::new(pool.clone(), keep_idle),
                pool,
                url: RedactedUrl(url.to_owned()),
                tables,
                in_memory,
                committed: Arc::new(Notify::new()),
            }),
        };
        db.migrate().await.map_err(|e| connect_error(url, e))?;
        Ok(db)
    }

    /// Creates or updates the framework's tables: idempotent, and safe when
    /// several processes start at once on one file (they take turns on
    /// SQLite's write lock).
    pub fn migrate(&self) -> BoxFuture<'static, Result<(), sqlx::Error>> {
        let tables = &self.inner.tables;
        let migrations_table = tables.name("migrations");
        let plan = MigrationPlan {
            pool: self.inner.pool.clone(),
            setup: format!(
                "CREATE TABLE IF NOT EXISTS {migrations_table} (
                    version INTEGER PRIMARY KEY,
                    applied_at TEXT NOT NULL DEFAULT (strftime('{TIMESTAMP_FORMAT}', 'now'))
                )"
            ),
            applied: format!("SELECT COALESCE(MAX(version), 0) FROM {migrations_table}"),
            record: format!("INSERT INTO {migrations_table} (version) VALUES (?1)"),
            migrations: migrations(tables),
        };
        // Owned data and a boxed future: an `async fn` borrowing `self` would
        // not be `Send` for a caller that spawns it (rustc's limits on the
        // higher-ranked lifetimes of sqlx's executors).
        Box::pin(plan.run())
    }

    /// The pool, for queries outside units of work (read models, tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// What the framework's tables are called.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Whether [`connect_with`](Self::connect_with) opened the database in
    /// memory (one connection; the database is gone with the pool).
    pub fn is_in_memory(&self) -> bool {
        self.inner.in_memory
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
            .bind(format!("-{:.3} seconds", age.as_secs_f64()))
            .execute(&self.inner.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(adapter_error)
    }

    /// Deletes outbox rows published longer than `age` ago. Returns how
    /// many rows were deleted. (Positions are never reused, so pruning
    /// does not disturb the order of the rows left.)
    pub async fn prune_outbox(&self, age: Duration) -> Result<u64, Error> {
        sqlx::query(&self.inner.statements.prune_outbox)
            .bind(format!("-{:.3} seconds", age.as_secs_f64()))
            .execute(&self.inner.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(adapter_error)
    }
}

impl OutboxStore for SqliteDatabase {
    fn lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let row = sqlx::query(&self.inner.statements.lease)
                .bind(holder)
                .bind(format!("+{:.3} seconds", ttl.as_secs_f64()))
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
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
            let positions = serde_json::to_string(positions).map_err(Error::database)?;
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
            // Rare (no queue bound): one statement a row.
            for (position, delay) in rows {
                sqlx::query(&self.inner.statements.defer)
                    .bind(position)
                    .bind(format!("+{:.3} seconds", delay.as_secs_f64()))
                    .execute(&self.inner.pool)
                    .await
                    .map_err(adapter_error)?;
            }
            Ok(())
        })
    }

    fn committed(&self) -> Arc<Notify> {
        self.inner.committed.clone()
    }
}

/// An outbox row of the `unsent` statement, its ids parsed from their text.
fn outbox_entry(row: &SqliteRow) -> Result<OutboxEntry, Error> {
    let column = |e: sqlx::Error| Error::Database(e.into());
    let id = |text: String| {
        Uuid::parse_str(&text)
            .map(MessageId::from)
            .map_err(Error::database)
    };
    let causation: Option<String> = row.try_get(5).map_err(column)?;
    let created_at: i64 = row.try_get(6).map_err(column)?;
    let payload: String = row.try_get(3).map_err(column)?;
    Ok(OutboxEntry {
        position: row.try_get(0).map_err(column)?,
        message: ExternalMessage {
            name: row.try_get(2).map_err(column)?,
            metadata: Metadata {
                message_id: id(row.try_get(1).map_err(column)?)?,
                correlation_id: id(row.try_get(4).map_err(column)?)?,
                causation_id: causation.map(id).transpose()?,
                timestamp: Timestamp::from_millis(created_at.max(0) as u64),
            },
            payload: payload.into_bytes(),
            trace: TraceContext::from_column(row.try_get::<Option<&str>, _>(8).map_err(column)?),
        },
        attempts: u32::try_from(row.try_get::<i64, _>(7).map_err(column)?).unwrap_or(0),
    })
}

/// sqlx's options for `url`, and whether the database is in memory.
fn connect_options(
    url: &str,
    options: &SqliteOptions,
) -> Result<(SqliteConnectOptions, bool), sqlx::Error> {
    if !url.starts_with("sqlite:") {
        return Err(sqlx::Error::Configuration(
            "not a SQLite URL: expected sqlite://path/to/file.db, sqlite:file.db or sqlite::memory:"
                .into(),
        ));
    }
    let mut connect = SqliteConnectOptions::from_str(url)?
        .busy_timeout(options.busy_timeout)
        .foreign_keys(true);
    // As sqlx reads the URL (which it does not tell).
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mode = params
        .split('&')
        .find_map(|pair| pair.strip_prefix("mode="));
    let in_memory = database == ":memory:" || mode == Some("memory");
    if mode.is_none() && !in_memory {
        connect = connect.create_if_missing(true);
    }
    Ok((connect, in_memory))
}

impl Adapter for SqliteDatabase {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

impl Database for SqliteDatabase {
    fn describe(&self) -> String {
        self.inner.url.to_string()
    }

    fn connection_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<SqliteConnection>(), "sqlx::SqliteConnection")
    }

    fn aggregate_storage(&self) -> AggregateStorage {
        AggregateStorage::Documents
    }

    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        Box::pin(async move {
            // The write lock now, not at the first write: a transaction that
            // read an aggregate cannot then fail to upgrade.
            let conn = self
                .inner
                .kept
                .begin(Some("BEGIN IMMEDIATE"))
                .await
                .map_err(adapter_error)?;
            Ok(Box::new(SqliteTransaction {
                conn,
                db: self.inner.clone(),
                wrote_outbox: false,
            }) as Box<dyn DatabaseTransaction>)
        })
    }

    fn mark_dispatched<'a>(&'a self, ids: &'a [MessageId]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
            let ids = serde_json::to_string(&ids).map_err(Error::database)?;
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
            let names = serde_json::to_string(names).map_err(Error::database)?;
            let rows = sqlx::query(&self.inner.statements.undispatched)
                .bind(format!("-{:.3} seconds", older_than.as_secs_f64()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
            let names = serde_json::to_string(names).map_err(Error::database)?;
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
                .bind(id.as_uuid().hyphenated().to_string())
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

/// A unit of work's transaction, on a connection of the pool or one the
/// previous unit of work ended on ([`Kept`]).
struct SqliteTransaction {
    conn: Lent<Sqlite>,
    db: Arc<Inner>,
    wrote_outbox: bool,
}

impl DatabaseTransaction for SqliteTransaction {
    fn connection(&mut self) -> &mut (dyn Any + Send) {
        let conn: &mut SqliteConnection = &mut self.conn;
        conn
    }

    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.wrote_outbox |= !messages.is_empty();
        Box::pin(async move {
            let rows: Vec<OutboxRow<'_>> = messages
                .iter()
                .map(OutboxRow::new)
                .collect::<Result<_, _>>()?;
            let rows = serde_json::to_string(&rows).map_err(Error::database)?;
            sqlx::query(&self.db.statements.write_outbox)
                .bind(rows)
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn keeps_journal(&self) -> bool {
        true
    }

    fn write_events<'a>(&'a mut self, rows: &'a [OutboxWrite]) -> BoxFuture<'a, Result<(), Error>> {
        self.wrote_outbox |= rows.iter().any(|r| r.publish);
        Box::pin(async move {
            let rows: Vec<OutboxRow<'_>> = rows
                .iter()
                .map(|r| {
                    OutboxRow::new(&r.message).map(|row| OutboxRow {
                        u: Some(r.publish),
                        d: Some(r.dispatch),
                        ..row
                    })
                })
                .collect::<Result<_, _>>()?;
            let rows = serde_json::to_string(&rows).map_err(Error::database)?;
            sqlx::query(&self.db.statements.write_events)
                .bind(rows)
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
                .bind(id.as_uuid().hyphenated().to_string())
                .bind(handler)
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn schedule<'a>(
        &'a mut self,
        messages: &'a [ScheduledMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let rows: Vec<OutboxRow<'_>> = messages
                .iter()
                .map(|s| {
                    OutboxRow::new(&s.message).map(|row| OutboxRow {
                        w: Some(s.due.as_millis().min(i64::MAX as u64 - 1)),
                        ..row
                    })
                })
                .collect::<Result<_, _>>()?;
            let rows = serde_json::to_string(&rows).map_err(Error::database)?;
            sqlx::query(&self.db.statements.schedule)
                .bind(rows)
                .execute(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            Ok(())
        })
    }

    fn cancel_scheduled<'a>(&'a mut self, id: MessageId) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let done = sqlx::query(&self.db.statements.cancel_scheduled)
                .bind(id.as_uuid().hyphenated().to_string())
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
            let ids = serde_json::to_string(&ids).map_err(Error::database)?;
            let removed: Vec<(String,)> = sqlx::query_as(&self.db.statements.remove_scheduled)
                .bind(ids)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(adapter_error)?;
            removed
                .into_iter()
                .map(|(id,)| {
                    Uuid::parse_str(&id)
                        .map(MessageId::from)
                        .map_err(Error::database)
                })
                .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_sqlx_reads_them() {
        let options = SqliteOptions::default();
        let (_, memory) = connect_options("sqlite::memory:", &options).unwrap();
        assert!(memory);
        let (_, memory) = connect_options("sqlite://?mode=memory", &options).unwrap();
        assert!(memory);
        let (_, memory) = connect_options("sqlite://:memory:", &options).unwrap();
        assert!(memory);
        let (_, memory) = connect_options("sqlite://a.db?mode=rwc", &options).unwrap();
        assert!(!memory);
        let (file, memory) = connect_options("sqlite://allocation.db", &options).unwrap();
        assert!(!memory);
        assert_eq!(file.get_filename(), std::path::Path::new("allocation.db"));
        let (file, _) = connect_options("sqlite:allocation.db", &options).unwrap();
        assert_eq!(file.get_filename(), std::path::Path::new("allocation.db"));
        let (file, _) = connect_options("sqlite:///tmp/a.db", &options).unwrap();
        assert_eq!(file.get_filename(), std::path::Path::new("/tmp/a.db"));
        assert!(connect_options("postgres://localhost/db", &options).is_err());
        assert!(connect_options("sqlite://a.db?nonsense=1", &options).is_err());
    }

    #[test]
    fn indexes_are_qualified_and_their_tables_are_not() {
        let tables = Tables::new("x_").in_schema("aux");
        assert_eq!(
            index_on(&tables, "inbox_handled_at", "inbox"),
            (
                "\"aux\".\"x_inbox_handled_at\"".to_owned(),
                "\"x_inbox\"".to_owned()
            )
        );
    }
}
