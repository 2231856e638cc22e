//! The SQLite adapter on real SQLite databases, each test on a file of its
//! own (or in memory): rules 1, 3, 4, 5 and 8 of DESIGN.md, the framework's
//! migrations, SQLite's writer lock, the outbox relay on SQLite (its lease
//! between processes), and the adapter's faults.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eda_core::adapters::in_process::InProcessBroker;
use eda_core::adapters::sql::RowExt;
use eda_core::adapters::sqlite::{SqliteDatabase, SqliteOptions, TIMESTAMP_FORMAT};
use eda_core::backend::{Database, OutboxStore};
use eda_core::entrypoints::ConsumerOptions;
use eda_core::prelude::*;
use eda_core::sqlx::{self, Connection, Row, SqliteConnection};
use eda_core::testing::TestSqlite;
use eda_core::{
    Envelope, Error, ExternalMessage, Metadata, OutboxRelay, RelayOptions, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Aggregate)]
pub struct Counter {
    #[aggregate(id)]
    pub id: String,
    pub value: u32,
    pub version: u64,
    pub events: Events,
}

pub struct SqliteCounters;

#[repository]
impl Repository for SqliteCounters {
    type Aggregate = Counter;
    type Connection = SqliteConnection;

    async fn get(
        conn: &mut SqliteConnection,
        id: &String,
    ) -> Result<Option<Counter>, RepositoryError> {
        let Some(row) = sqlx::query("SELECT value, version FROM counters WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let value: i64 = row.decode("counters", "value")?;
        let version: i64 = row.decode("counters", "version")?;
        Ok(Some(Counter {
            id: id.clone(),
            value: u32::try_from(value)
                .map_err(|e| RepositoryError::decode("counters", "value", e))?,
            version: version as u64,
            events: Events::new(),
        }))
    }

    async fn add(conn: &mut SqliteConnection, c: &Counter) -> Result<(), RepositoryError> {
        sqlx::query("INSERT INTO counters (id, value, version) VALUES (?1, ?2, ?3)")
            .bind(&c.id)
            .bind(i64::from(c.value))
            .bind(c.version as i64)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn update(
        conn: &mut SqliteConnection,
        c: &Counter,
        expected: u64,
    ) -> Result<bool, RepositoryError> {
        let done = sqlx::query(
            "UPDATE counters SET value = ?2, version = ?3 WHERE id = ?1 AND version = ?4",
        )
        .bind(&c.id)
        .bind(i64::from(c.value))
        .bind(c.version as i64)
        .bind(expected as i64)
        .execute(&mut *conn)
        .await?;
        SAVED.lock().unwrap().push(c.id.clone());
        Ok(done.rows_affected() == 1)
    }
}

/// The counters updated, in the order their rows were written.
static SAVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Adds one to each counter, loading them in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.add_to_each")]
pub struct AddToEach {
    pub ids: Vec<String>,
}

#[command_handler]
async fn add_to_each(cmd: AddToEach, uow: &mut CounterUow) -> Result<(), CommandError<BoxError>> {
    for id in &cmd.ids {
        let counter = uow.counters().get(id).await?.ok_or("no counter")?;
        counter.value += 1;
        let value = counter.value;
        counter.events.raise(Added {
            id: id.clone(),
            value,
        });
    }
    Ok(uow.commit().await?)
}

/// Two units of work that change the same aggregates lock their rows in the
/// same order, whatever order they loaded them in: the order of their ids.
/// (Saved in load order, two such units of work deadlocked on Postgres, which
/// finds a deadlock only after a second: 218 in one run of the two-service
/// test.)
#[tokio::test]
async fn a_unit_of_work_saves_its_aggregates_in_the_order_of_their_ids() {
    let s = service().await;
    let ids: Vec<String> = ["zz", "mm", "aa"]
        .iter()
        .map(|i| format!("order-{i}-{}", fastrand::u32(..)))
        .collect();
    for id in &ids {
        s.bus.handle(Create { id: id.clone() }).await.unwrap();
    }
    s.bus.handle(AddToEach { ids: ids.clone() }).await.unwrap();
    let saved: Vec<String> = SAVED
        .lock()
        .unwrap()
        .iter()
        .filter(|id| ids.contains(id))
        .cloned()
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(saved, sorted, "loaded {ids:?}");
    for id in &ids {
        assert_eq!(s.counter(id).await, Some((1, 1)));
    }
    // Their events keep the order the handler worked in (rule 3).
    let raised: Vec<String> = s
        .outbox()
        .await
        .into_iter()
        .map(|(_, payload)| {
            serde_json::from_str::<serde_json::Value>(&payload).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(raised, ids);
}

#[derive(UnitOfWork)]
pub struct CounterUow {
    #[uow(transaction)]
    tx: UowTransaction,
    counters: IdentityMap<Counter>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.create")]
pub struct Create {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.add", output = u32)]
pub struct Add {
    pub id: String,
    pub by: u32,
    /// Fail after changing the counter (and raising its event).
    pub fail: bool,
}

/// Adds one; the first run waits (a while) for a second one to load the
/// counter too.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.add_racing", output = u32)]
pub struct AddRacing {
    pub id: String,
}

/// Adds one; on the first run, the row changes under the unit of work's
/// feet before it commits.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.add_under_feet", output = u32)]
pub struct AddUnderFeet {
    pub id: String,
}

/// Adds one `times` times, raising an event each time.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.add_each")]
pub struct AddEach {
    pub id: String,
    pub times: u32,
}

/// Adds one, and says which connection ran it: a TEMP table (each
/// connection has its own) holds a name made up on the connection's first
/// use.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.add_on_connection", output = String)]
pub struct AddOnConnection {
    pub id: String,
}

/// Writes to the counter's row by hand, on the unit of work's connection,
/// then fails without committing.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "sqlitetest.write_then_fail")]
pub struct WriteThenFail {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "sqlitetest.added", external)]
pub struct Added {
    pub id: String,
    pub value: u32,
}

pub struct Race {
    loaded: Notify,
    runs: AtomicUsize,
}
impl Adapter for Race {}

type Handled<T> = Result<T, CommandError<BoxError>>;

#[command_handler]
async fn create(cmd: Create, uow: &mut CounterUow) -> Handled<()> {
    uow.counters().add(Counter {
        id: cmd.id,
        value: 0,
        version: 0,
        events: Events::new(),
    })?;
    Ok(uow.commit().await?)
}

#[command_handler]
async fn add(cmd: Add, uow: &mut CounterUow) -> Handled<u32> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    counter.value += cmd.by;
    let value = counter.value;
    counter.events.raise(Added { id: cmd.id, value });
    if cmd.fail {
        return Err("refused".into());
    }
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_racing(cmd: AddRacing, uow: &mut CounterUow, race: &Race) -> Handled<u32> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    counter.value += 1;
    let value = counter.value;
    if race.runs.fetch_add(1, Ordering::SeqCst) == 0 {
        // Were transactions allowed to read side by side, the second run
        // would load the counter now, and one of them would conflict.
        let _ = tokio::time::timeout(Duration::from_millis(300), race.loaded.notified()).await;
    } else {
        race.loaded.notify_one();
    }
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_under_feet(cmd: AddUnderFeet, uow: &mut CounterUow, race: &Race) -> Handled<u32> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    counter.value += 1;
    let value = counter.value;
    if race.runs.fetch_add(1, Ordering::SeqCst) == 0 {
        // Another writer's commit between this unit of work's read and its
        // write: what the version check is for. (SQLite's writer lock makes
        // it impossible from outside, so it is played on the unit of work's
        // own connection.)
        let conn = uow
            .tx
            .connection::<SqliteConnection>()
            .expect("a SQLite transaction");
        sqlx::query("UPDATE counters SET value = value + 10, version = version + 1 WHERE id = ?1")
            .bind(&cmd.id)
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::from(RepositoryError::from(e)))?;
    }
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_each(cmd: AddEach, uow: &mut CounterUow) -> Handled<()> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    for _ in 0..cmd.times {
        counter.value += 1;
        let value = counter.value;
        counter.events.raise(Added {
            id: cmd.id.clone(),
            value,
        });
    }
    Ok(uow.commit().await?)
}

/// A fresh temporary directory, removed on drop (also when the test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        TempDir(TestSqlite::temp_dir())
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[command_handler]
async fn add_on_connection(cmd: AddOnConnection, uow: &mut CounterUow) -> Handled<String> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    counter.value += 1;
    let value = counter.value;
    counter.events.raise(Added { id: cmd.id, value });
    let conn = uow
        .tx
        .connection::<SqliteConnection>()
        .expect("a SQLite transaction");
    sqlx::query("CREATE TEMP TABLE IF NOT EXISTS whoami (name TEXT NOT NULL)")
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO whoami SELECT lower(hex(randomblob(8))) \
         WHERE NOT EXISTS (SELECT 1 FROM whoami)",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| e.to_string())?;
    let name: String = sqlx::query_scalar("SELECT name FROM whoami")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    uow.commit().await?;
    Ok(name)
}

#[command_handler]
async fn write_then_fail(cmd: WriteThenFail, uow: &mut CounterUow) -> Handled<()> {
    let conn = uow
        .tx
        .connection::<SqliteConnection>()
        .expect("a SQLite transaction");
    sqlx::query("UPDATE counters SET value = value + 100 WHERE id = ?1")
        .bind(&cmd.id)
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Err("refused after writing".into())
}

fn default_retry() -> RetryPolicy {
    RetryPolicy::new(5).backoff(Duration::from_millis(2), Duration::from_millis(20))
}

struct Service {
    db: SqliteDatabase,
    bus: MessageBus,
    /// The test's file, removed on drop (`None` in memory).
    file: Option<TestSqlite>,
}

async fn bus_on(db: &SqliteDatabase, retry: RetryPolicy) -> MessageBus {
    sqlx::query(
        "CREATE TABLE counters (id TEXT PRIMARY KEY, value INTEGER NOT NULL, version INTEGER NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    bus_for(db, retry)
}

/// A bus on a database whose `counters` table exists.
fn bus_for(db: &SqliteDatabase, retry: RetryPolicy) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(db.clone())
        .adapter(Race {
            loaded: Notify::new(),
            runs: AtomicUsize::new(0),
        })
        .command_retry(retry)
        .build()
        .expect("wiring")
}

async fn service_with(retry: RetryPolicy, options: SqliteOptions) -> Service {
    let file = TestSqlite::start_with(options).await;
    let db = file.db.clone();
    let bus = bus_on(&db, retry).await;
    Service {
        db,
        bus,
        file: Some(file),
    }
}

async fn service() -> Service {
    service_with(default_retry(), SqliteOptions::default()).await
}

async fn in_memory(url: &str, options: SqliteOptions) -> Service {
    let db = SqliteDatabase::connect_with(url, options).await.unwrap();
    let bus = bus_on(&db, default_retry()).await;
    Service {
        db,
        bus,
        file: None,
    }
}

impl Service {
    async fn counter(&self, id: &str) -> Option<(i64, i64)> {
        sqlx::query("SELECT value, version FROM counters WHERE id = ?1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    async fn outbox(&self) -> Vec<(String, String)> {
        sqlx::query("SELECT name, payload FROM eda_outbox ORDER BY position")
            .fetch_all(self.db.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.db.pool())
            .await
            .unwrap()
            .get(0)
    }

    async fn add(&self, id: &str, by: u32) -> Result<u32, CommandError<BoxError>> {
        self.bus
            .handle(Add {
                id: id.into(),
                by,
                fail: false,
            })
            .await
    }

    /// `n` commands adding one, at once, on as many tasks.
    async fn add_concurrently(&self, n: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let bus = self.bus.clone();
            tasks.spawn(async move {
                bus.handle(Add {
                    id: "a".into(),
                    by: 1,
                    fail: false,
                })
                .await
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
            ok += 1;
        }
        assert_eq!(ok, n);
    }
}

#[tokio::test]
async fn units_of_work_one_after_another_run_on_one_connection_without_leaking_a_transaction() {
    // Kept far longer than this test's pauses between commands, however
    // loaded the machine: only the lease (a second) changes the connection.
    let s = service_with(
        RetryPolicy::never(),
        SqliteOptions::default().keep_idle_connections(Duration::from_secs(10)),
    )
    .await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let started = std::time::Instant::now();
    // The connection of each command that committed, and whether one that
    // failed ran just before it (its connection went back to the pool with
    // its rollback: the next one may take any).
    let mut connections = Vec::new();
    let mut after_failure = false;
    for i in 0..20 {
        let connection = s
            .bus
            .handle(AddOnConnection { id: "a".into() })
            .await
            .unwrap();
        connections.push((connection, after_failure));
        after_failure = false;
        if i % 5 == 0 {
            let err = s
                .bus
                .handle(WriteThenFail { id: "a".into() })
                .await
                .unwrap_err();
            assert!(err.to_string().contains("refused after writing"), "{err}");
            s.bus
                .handle(Add {
                    id: "a".into(),
                    by: 1000,
                    fail: true,
                })
                .await
                .unwrap_err();
            after_failure = true;
        }
    }
    let changes = connections
        .windows(2)
        .filter(|w| !w[1].1 && w[0].0 != w[1].0)
        .count();
    let leases = started.elapsed().as_secs() as usize;
    assert!(
        changes <= leases,
        "each unit of work took the connection the one before committed on, but for one \
         change a second at most: {changes} changes in {leases} s: {connections:?}"
    );
    assert_eq!(s.counter("a").await, Some((20, 20)), "only the commits");
    assert_eq!(s.outbox().await.len(), 20);
}

#[tokio::test]
async fn a_connection_kept_for_the_next_unit_of_work_goes_back_to_the_pool_when_idle() {
    let s = service_with(
        default_retry(),
        SqliteOptions::default()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2)),
    )
    .await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.bus
        .handle(AddOnConnection { id: "a".into() })
        .await
        .unwrap();
    // Code of the application's own takes every connection of the pool,
    // the one eda keeps for its next unit of work included.
    let first = s.db.pool().acquire().await.expect("a first connection");
    let second =
        s.db.pool()
            .acquire()
            .await
            .expect("the connection eda kept went back to the pool");
    drop((first, second));
    tokio::time::timeout(Duration::from_secs(2), s.db.pool().close())
        .await
        .expect("the pool closed");
}

#[tokio::test]
async fn a_pool_given_with_options_keeps_connections_as_they_say_and_refuses_the_pool_s_own_settings()
 {
    let s = service().await;
    let url = s.file.as_ref().expect("a file").url.clone();
    // The application's own pool, on the test's file.
    let app_pool = || {
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect(&url)
    };

    let refused = SqliteDatabase::from_pool_with(
        app_pool().await.unwrap(),
        SqliteOptions::default()
            .busy_timeout(Duration::from_secs(1))
            .max_connections(5),
    )
    .await
    .expect_err("settings of the pool's own are refused, not ignored");
    assert!(
        refused
            .to_string()
            .contains("busy_timeout, max_connections set on SqliteOptions"),
        "{refused}"
    );

    // Kept connections are out of the pool until they are given back: a
    // long keep holds one after a command; none kept gives it back at once.
    for (keep, kept) in [(Duration::from_secs(10), 1), (Duration::ZERO, 0)] {
        let pool = app_pool().await.unwrap();
        let db = SqliteDatabase::from_pool_with(
            pool.clone(),
            SqliteOptions::default().keep_idle_connections(keep),
        )
        .await
        .expect("the given pool is used");
        let bus = bus_for(&db, default_retry());
        bus.handle(Create {
            id: format!("kept-{kept}"),
        })
        .await
        .unwrap();
        // Past the default keep (20 ms). sqlx gives a connection back
        // through a task of its own (its ping), which a loaded machine may
        // run late: waited for, a while.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = || pool.size() as usize - pool.num_idle();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out() != kept && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            out(),
            kept,
            "connections out of the pool with keep_idle_connections({keep:?})"
        );
        drop((bus, db));
        pool.close().await;
    }
}

#[tokio::test]
async fn a_unit_of_work_saves_in_one_transaction_with_its_outbox_row() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    assert_eq!(s.add("a", 3).await.unwrap(), 3);
    assert_eq!(s.counter("a").await, Some((3, 1)));
    assert_eq!(
        s.outbox().await,
        vec![(
            "sqlitetest.added".to_string(),
            r#"{"id":"a","value":3}"#.to_string()
        )]
    );
}

#[tokio::test]
async fn the_outbox_row_exists_if_and_only_if_the_transaction_committed() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let err = s
        .bus
        .handle(Add {
            id: "a".into(),
            by: 3,
            fail: true,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Handler(_)), "{err:?}");
    assert_eq!(s.counter("a").await, Some((0, 0)), "rolled back");
    assert!(
        s.outbox().await.is_empty(),
        "no outbox row without a commit"
    );
    // The rolled-back transaction released the writer lock.
    assert_eq!(s.add("a", 1).await.unwrap(), 1);
}

#[tokio::test]
async fn outbox_rows_keep_the_events_order_and_metadata() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    // A command caused by another message: its id, its correlation id and
    // its cause's id all differ.
    let metadata = Metadata::new().caused_by();
    s.bus
        .handle_envelope(Envelope::with_metadata(
            AddEach {
                id: "a".into(),
                times: 3,
            },
            metadata,
        ))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT message_id, name, payload, correlation_id, causation_id, created_at, \
         sent_at, claimed_until, attempts FROM eda_outbox ORDER BY position",
    )
    .fetch_all(s.db.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let mut ids = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let id: String = row.get("message_id");
        let parsed: uuid::Uuid = id.parse().expect("a UUID");
        assert_eq!(
            id,
            parsed.hyphenated().to_string(),
            "hyphenated, lower case"
        );
        ids.push(id);
        assert_eq!(row.get::<String, _>("name"), "sqlitetest.added");
        assert_eq!(
            row.get::<String, _>("payload"),
            format!(r#"{{"id":"a","value":{}}}"#, i + 1),
            "in the order raised"
        );
        assert_eq!(
            row.get::<String, _>("correlation_id"),
            metadata.correlation_id.to_string()
        );
        assert_eq!(
            row.get::<Option<String>, _>("causation_id"),
            Some(metadata.message_id.to_string())
        );
        let created: String = row.get("created_at");
        assert_eq!(created.len(), "2024-05-01T12:00:00.000Z".len(), "{created}");
        assert!(
            created.starts_with("20") && created.ends_with('Z'),
            "{created}"
        );
        assert_eq!(row.get::<Option<String>, _>("sent_at"), None);
        assert_eq!(row.get::<Option<String>, _>("claimed_until"), None);
        assert_eq!(row.get::<i64, _>("attempts"), 0);
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 3, "three ids, all different: {ids:?}");
    // created_at is the events' time, in the framework's format.
    let recent: bool = sqlx::query_scalar(&format!(
        "SELECT min(created_at) > strftime('{TIMESTAMP_FORMAT}', 'now', '-1 minute') \
         AND max(created_at) <= strftime('{TIMESTAMP_FORMAT}', 'now') FROM eda_outbox"
    ))
    .fetch_one(s.db.pool())
    .await
    .unwrap();
    assert!(recent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_handled_once() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let metadata = Metadata::new();
    let body = br#"{"id":"a","by":1,"fail":false}"#;
    let (one, two) = tokio::join!(
        s.bus.handle_incoming("sqlitetest.add", metadata, body),
        s.bus.handle_incoming("sqlitetest.add", metadata, body)
    );
    one.unwrap();
    two.unwrap();
    s.bus
        .handle_incoming("sqlitetest.add", metadata, body)
        .await
        .unwrap();
    assert_eq!(s.counter("a").await, Some((1, 1)));
    assert_eq!(s.outbox().await.len(), 1);
    let inbox: Vec<String> = sqlx::query_scalar("SELECT message_id FROM eda_inbox")
        .fetch_all(s.db.pool())
        .await
        .unwrap();
    assert_eq!(inbox, vec![metadata.message_id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_units_of_work_take_turns_and_lose_nothing() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let (one, two) = tokio::join!(
        s.bus.handle(AddRacing { id: "a".into() }),
        s.bus.handle(AddRacing { id: "a".into() })
    );
    let mut values = vec![one.unwrap(), two.unwrap()];
    values.sort();
    assert_eq!(values, vec![1, 2]);
    assert_eq!(
        s.counter("a").await,
        Some((2, 2)),
        "version grew by the number of commits"
    );
    // BEGIN IMMEDIATE: the second waited for the first's commit before it
    // read, so neither had to be run again.
    assert_eq!(s.bus.metrics().command_conflicts, 0);
}

#[tokio::test]
async fn an_update_under_the_unit_of_works_feet_is_detected_and_retried() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let value = s.bus.handle(AddUnderFeet { id: "a".into() }).await.unwrap();
    assert_eq!(value, 1, "the second run read the counter again");
    assert_eq!(
        s.counter("a").await,
        Some((1, 1)),
        "the conflicting run was rolled back, the retry committed"
    );
    assert_eq!(s.bus.metrics().command_conflicts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_updates_lose_nothing() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.add_concurrently(25).await;
    assert_eq!(s.counter("a").await, Some((25, 25)));
    assert_eq!(s.outbox().await.len(), 25);
    assert_eq!(
        s.bus.metrics().command_conflicts,
        0,
        "writers waited for each other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_is_a_conflict_the_bus_retries() {
    let s = service_with(
        RetryPolicy::new(100).backoff(Duration::from_millis(5), Duration::from_millis(20)),
        SqliteOptions::default().busy_timeout(Duration::from_millis(20)),
    )
    .await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    // Another process holds the write lock for a while.
    let url = s.file.as_ref().unwrap().url.clone();
    let mut other = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other
    });
    assert_eq!(s.add("a", 1).await.unwrap(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the other writer"
    );
    assert!(s.bus.metrics().command_conflicts >= 1);
    assert_eq!(s.counter("a").await, Some((1, 1)));
    release.await.unwrap().close().await.unwrap();
}

#[tokio::test]
async fn a_busy_database_is_never_a_plain_failure() {
    let s = service_with(
        RetryPolicy::never(),
        SqliteOptions::default().busy_timeout(Duration::from_millis(20)),
    )
    .await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let url = s.file.as_ref().unwrap().url.clone();
    let mut other = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let err = s.add("a", 1).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(
        matches!(
            err,
            CommandError::Bus(Error::Repository(RepositoryError::Retryable(_)))
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("database is locked"), "{err}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    assert_eq!(s.add("a", 1).await.unwrap(), 1);
}

#[tokio::test]
async fn a_row_that_cannot_be_decoded_is_an_error_naming_table_and_column() {
    let s = service().await;
    sqlx::query("INSERT INTO counters VALUES ('negative', -5, 0), ('text', 'five', 0)")
        .execute(s.db.pool())
        .await
        .unwrap();
    for id in ["negative", "text"] {
        let err = s.add(id, 1).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("column `value` of table `counters`"),
            "{id}: {text}"
        );
        assert!(
            matches!(
                err,
                CommandError::Bus(Error::Repository(RepositoryError::Decode { .. }))
            ),
            "{id}: {err:?}"
        );
    }
}

/// Starts `n` instances on `url` at once, each on a task of its own (the
/// futures of `connect` and `connect_with` are `Send`), and checks that
/// they all started and migrated once.
async fn start_at_once(url: &str, n: usize) {
    let starts = (0..n).map(|i| {
        let url = url.to_owned();
        if i % 2 == 0 {
            tokio::spawn(async move { SqliteDatabase::connect(&url).await })
        } else {
            tokio::spawn(async move {
                SqliteDatabase::connect_with(&url, SqliteOptions::default()).await
            })
        }
    });
    let mut dbs = Vec::new();
    for start in starts.collect::<Vec<_>>() {
        dbs.push(start.await.unwrap().expect("concurrent start"));
    }
    let db = &dbs[0];
    db.migrate().await.expect("again");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(versions, 6, "{url}");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal", "{url}");
    for db in dbs {
        db.pool().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_when_processes_start_at_once() {
    let dir = TempDir::new();
    // Fresh files: the starts race to create them and to switch them to
    // WAL (which SQLite does not wait for when two try at once).
    for n in 0..4 {
        start_at_once(&TestSqlite::url_in(&dir, &format!("{n}.db")), 8).await;
    }
    // A file with migrations to apply, that another process is writing:
    // a start that read the applied version before taking the write lock
    // could not then write (SQLite does not wait to upgrade a reader).
    let url = TestSqlite::url_in(&dir, "busy.db");
    let mut other = SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    for sql in [
        "PRAGMA journal_mode = WAL",
        "CREATE TABLE eda_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)",
    ] {
        sqlx::query(sql).execute(&mut other).await.unwrap();
    }
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other.close().await.unwrap();
    });
    start_at_once(&url, 8).await;
    release.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_another_process_writing_the_file() {
    let dir = TempDir::new();
    let url = TestSqlite::url_in(&dir, "shared.db");
    // Another process created the file (in the rollback journal) and is
    // writing to it: switching to WAL must wait, and SQLite does not.
    let mut other = SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&mut other)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other.close().await.unwrap();
    });
    let db = SqliteDatabase::connect(&url).await.expect("waited");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    release.await.unwrap();
    db.pool().close().await;
}

#[tokio::test]
async fn a_database_file_is_created_with_the_connection_settings() {
    let dir = TempDir::new();
    let path = dir.join("new.db");
    assert!(!path.exists());
    let db = SqliteDatabase::connect_with(
        &format!("sqlite:{}", path.display()),
        SqliteOptions::default().busy_timeout(Duration::from_millis(1234)),
    )
    .await
    .unwrap();
    assert!(path.exists(), "created");
    assert!(!db.is_in_memory());
    let mut conn = db.pool().acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(busy_timeout, 1234);
    drop(conn);
    assert!(format!("{db:?}").contains("new.db"), "{db:?}");
    db.pool().close().await;
}

#[tokio::test]
async fn the_table_prefix_names_the_framework_tables() {
    let s = service_with(
        default_retry(),
        SqliteOptions::default().table_prefix("shop_"),
    )
    .await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%\\_%' ESCAPE '\\' \
         AND name NOT LIKE 'sqlite%' ORDER BY name",
    )
    .fetch_all(s.db.pool())
    .await
    .unwrap();
    assert_eq!(
        tables,
        vec![
            "shop_aggregates",
            "shop_inbox",
            "shop_migrations",
            "shop_outbox",
            "shop_relay_lease",
            "shop_scheduled"
        ]
    );
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.add("a", 1).await.unwrap();
    assert_eq!(s.count("shop_outbox").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_works_end_to_end() {
    // `max_connections` is ignored: every connection to `:memory:` would be
    // a database of its own.
    let s = in_memory(
        "sqlite::memory:",
        SqliteOptions::default().max_connections(8),
    )
    .await;
    assert!(s.db.is_in_memory());
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.add_concurrently(20).await;
    let metadata = Metadata::new();
    let body = br#"{"id":"a","by":1,"fail":false}"#;
    let (one, two) = tokio::join!(
        s.bus.handle_incoming("sqlitetest.add", metadata, body),
        s.bus.handle_incoming("sqlitetest.add", metadata, body)
    );
    one.unwrap();
    two.unwrap();
    assert_eq!(s.counter("a").await, Some((21, 21)));
    assert_eq!(s.outbox().await.len(), 21);
    assert_eq!(s.count("eda_inbox").await, 1);
    assert_eq!(s.db.pool().size(), 1);

    // Another in-memory database is another database.
    let other = SqliteDatabase::connect("sqlite::memory:").await.unwrap();
    let counters: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'counters'",
    )
    .fetch_one(other.pool())
    .await
    .unwrap();
    assert_eq!(counters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_with_a_private_cache_works_too() {
    // Each connection to it would be a separate, empty database.
    let s = in_memory(
        "sqlite://?mode=memory&cache=private",
        SqliteOptions::default(),
    )
    .await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.add_concurrently(10).await;
    assert_eq!(s.counter("a").await, Some((10, 10)));
    assert_eq!(s.outbox().await.len(), 10);
}

#[tokio::test]
async fn a_bad_url_or_path_is_a_clear_error_naming_it() {
    let dir = TempDir::new();
    let missing_dir = format!("sqlite://{}/no/such/dir/a.db", dir.display());
    let not_a_database = dir.join("notes.txt");
    std::fs::write(
        &not_a_database,
        "this is not a database, it is a text file ".repeat(50),
    )
    .unwrap();
    let not_a_database = format!("sqlite://{}", not_a_database.display());
    let cases = [
        (missing_dir.as_str(), "unable to open database file"),
        (not_a_database.as_str(), "file is not a database"),
        ("postgres://app:s3cr3t@db/shop", "not a SQLite URL"),
        ("sqlite://a.db?nonsense=1", "unknown query parameter"),
    ];
    for (url, why) in cases {
        let err = SqliteDatabase::connect(url).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Connect { .. }), "{url}: {err:?}");
        let shown = eda_core::adapters::redact_url(url);
        assert!(
            text.starts_with(&format!("cannot connect to {shown}: ")),
            "{text}"
        );
        assert!(text.contains(why), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}

#[tokio::test]
async fn old_inbox_rows_can_be_pruned() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    for _ in 0..2 {
        s.bus
            .handle_incoming(
                "sqlitetest.add",
                Metadata::new(),
                br#"{"id":"a","by":1,"fail":false}"#,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        s.db.prune_inbox(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    sqlx::query(&format!(
        "UPDATE eda_inbox SET handled_at = strftime('{TIMESTAMP_FORMAT}', 'now', '-2 hours') \
         WHERE rowid = (SELECT min(rowid) FROM eda_inbox)"
    ))
    .execute(s.db.pool())
    .await
    .unwrap();
    assert_eq!(
        s.db.prune_inbox(Duration::from_secs(3600)).await.unwrap(),
        1
    );
    assert_eq!(s.count("eda_inbox").await, 1, "the recent row stays");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.db.prune_inbox(Duration::ZERO).await.unwrap(), 1);
}

#[tokio::test]
async fn a_test_database_is_removed_afterwards() {
    let one = TestSqlite::start().await;
    let two = TestSqlite::start().await;
    assert_ne!(one.dir, two.dir);
    let (dir_one, dir_two) = (one.dir.clone(), two.dir.clone());
    assert!(dir_one.join("test.db").exists());
    one.cleanup().await;
    assert!(!dir_one.exists());
    drop(two);
    assert!(!dir_two.exists());
}

// The outbox relay on SQLite (rules 4 and 8): `SqliteDatabase` as the
// relay's `OutboxStore`, the in-process broker as its broker.

/// Polls every 20 ms; leases of 10 s (none expires during a test unless it
/// says so).
fn fast_relay() -> RelayOptions {
    RelayOptions {
        batch: 64,
        poll: Duration::from_millis(20),
        ..RelayOptions::default()
    }
}

/// A relay from `db` to an in-process broker of its own, and what a queue
/// bound to every name there receives.
fn relay_from(db: &SqliteDatabase, options: RelayOptions) -> (OutboxRelay, Received) {
    let broker = InProcessBroker::new();
    let publisher = broker.service(ConsumerOptions::new("relay")).publisher();
    broker.declare_queue("observer");
    broker.bind("observer", "eda.events", "#").unwrap();
    let relay = OutboxRelay::spawn(Arc::new(db.clone()), publisher, options);
    (relay, Received(broker))
}

/// The observer queue of [`relay_from`]'s broker.
struct Received(InProcessBroker);

impl Received {
    /// The next message, if one arrived.
    fn try_recv(&mut self) -> Result<ExternalMessage, ()> {
        self.0.take("observer").map(|m| m.message).ok_or(())
    }
}

/// What the receivers got, each: waits until `n` messages arrived in all
/// (or `within` ran out), then 200 ms more (ten polls), so that a message
/// published twice, or by a second relay, shows.
async fn collect(
    receivers: &mut [Received],
    n: usize,
    within: Duration,
) -> Vec<Vec<ExternalMessage>> {
    let mut got = vec![Vec::new(); receivers.len()];
    let drain = |receivers: &mut [Received], got: &mut Vec<Vec<ExternalMessage>>| {
        for (rx, got) in receivers.iter_mut().zip(got.iter_mut()) {
            while let Ok(m) = rx.try_recv() {
                got.push(m);
            }
        }
        got.iter().map(Vec::len).sum::<usize>()
    };
    let deadline = Instant::now() + within;
    while drain(receivers, &mut got) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain(receivers, &mut got);
    got
}

/// Shuts a relay down, failing (rather than hanging) if it does not stop.
async fn stop(relay: OutboxRelay) {
    tokio::time::timeout(Duration::from_secs(10), relay.shutdown())
        .await
        .expect("the relay stopped within 10 s");
}

/// The counter values of `Added` messages, in the order received.
fn values(messages: &[ExternalMessage]) -> Vec<u32> {
    messages
        .iter()
        .map(|m| {
            assert_eq!(m.name, "sqlitetest.added");
            serde_json::from_slice::<Added>(&m.payload).unwrap().value
        })
        .collect()
}

/// The milliseconds of a UUID v7 (message ids carry their message's
/// timestamp).
fn millis_of(id: eda_core::MessageId) -> u64 {
    let (secs, nanos) = id.as_uuid().get_timestamp().expect("a UUID v7").to_unix();
    secs * 1000 + u64::from(nanos) / 1_000_000
}

impl Service {
    fn url(&self) -> &str {
        &self.file.as_ref().expect("a file database").url
    }

    async fn unsent_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM eda_outbox WHERE sent_at IS NULL")
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_committed_events_in_order_with_their_metadata_and_marks_them_sent() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let before = eda_core::Timestamp::now();
    // Three events caused by a command of another conversation, then one
    // of a command that starts its own.
    let command = Metadata::new().caused_by();
    s.bus
        .handle_envelope(Envelope::with_metadata(
            AddEach {
                id: "a".into(),
                times: 3,
            },
            command,
        ))
        .await
        .unwrap();
    s.add("a", 10).await.unwrap();
    let after = eda_core::Timestamp::now();

    // What the store gives the relay: the rows in position order, `limit`
    // of them.
    let entries = s.db.unsent(10).await.unwrap();
    assert_eq!(entries.len(), 4);
    assert!(entries.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(s.db.unsent(2).await.unwrap(), entries[..2]);
    // The backlog counts in SQL what `unsent` gives, and the oldest's time.
    let backlog = eda_core::backend::OutboxStore::backlog(&s.db)
        .await
        .unwrap();
    assert_eq!(backlog.rows, 4);
    assert!(!backlog.capped);
    assert_eq!(
        backlog.oldest,
        entries.iter().map(|e| e.message.metadata.timestamp).min()
    );

    let (relay, received) = relay_from(&s.db, fast_relay());
    let got = collect(&mut [received], 4, Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(relay.metrics().published(), 4);
    stop(relay).await;

    assert_eq!(values(&got), [1, 2, 3, 13], "in outbox order, once each");
    let sent: Vec<ExternalMessage> = entries.into_iter().map(|e| e.message).collect();
    assert_eq!(got, sent, "as the outbox holds them");
    for m in &got[..3] {
        assert_eq!(m.metadata.correlation_id, command.correlation_id);
        assert_eq!(m.metadata.causation_id, Some(command.message_id));
    }
    let last = &got[3].metadata;
    assert_ne!(last.correlation_id, command.correlation_id);
    assert_eq!(
        last.causation_id,
        Some(last.correlation_id),
        "caused by the command that started its conversation"
    );
    for m in &got {
        let t = m.metadata.timestamp;
        assert_eq!(
            t.as_millis(),
            millis_of(m.metadata.message_id),
            "the event's own timestamp, to the millisecond"
        );
        assert!(before <= t && t <= after, "{t:?}");
    }
    let ids: std::collections::HashSet<_> = got.iter().map(|m| m.metadata.message_id).collect();
    assert_eq!(ids.len(), 4);

    assert_eq!(s.unsent_rows().await, 0, "marked sent");
    let sent_at: Vec<String> = sqlx::query_scalar("SELECT sent_at FROM eda_outbox")
        .fetch_all(s.db.pool())
        .await
        .unwrap();
    assert!(
        sent_at
            .iter()
            .all(|t| t.len() == "2024-05-01T12:00:00.000Z".len() && t.ends_with('Z')),
        "{sent_at:?}"
    );
    assert!(s.db.unsent(10).await.unwrap().is_empty());
    assert_eq!(
        eda_core::backend::OutboxStore::backlog(&s.db)
            .await
            .unwrap(),
        eda_core::backend::Backlog::default()
    );
}

/// Two processes on one file, each with a relay: one holds the lease and
/// publishes everything, whichever process committed it; the other
/// publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_file_publish_each_event_once_and_only_the_lease_holder_publishes() {
    let s = service().await;
    let other_db = SqliteDatabase::connect(s.url()).await.unwrap();
    let other_bus = bus_for(&other_db, default_retry());
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let (one, rx_one) = relay_from(&s.db, fast_relay());
    let (two, rx_two) = relay_from(&other_db, fast_relay());
    let mut receivers = [rx_one, rx_two];
    // Both relays asked for the lease: one holds it, the other polls.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Commits of both processes, each waking its own process's relay: were
    // the lease not exclusive, both relays would publish.
    for i in 0..20 {
        let bus = if i % 2 == 0 { &s.bus } else { &other_bus };
        bus.handle(Add {
            id: "a".into(),
            by: 1,
            fail: false,
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = collect(&mut receivers, 20, Duration::from_secs(10)).await;

    let counts = (got[0].len(), got[1].len());
    assert!(counts == (20, 0) || counts == (0, 20), "{counts:?}");
    let holder = if got[0].is_empty() { &got[1] } else { &got[0] };
    assert_eq!(values(holder), (1..=20).collect::<Vec<_>>());
    let metrics = (one.metrics().published(), two.metrics().published());
    assert!(metrics == (20, 0) || metrics == (0, 20), "{metrics:?}");
    assert_eq!(s.unsent_rows().await, 0);
    stop(one).await;
    stop(two).await;
    other_db.pool().close().await;
}

/// A relay shutting down gives the lease up: the other takes over at its
/// next poll, not when the lease (30 s here) would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_holder_shuts_down_the_other_relay_takes_over_at_once() {
    let s = service().await;
    let other_db = SqliteDatabase::connect(s.url()).await.unwrap();
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let options = RelayOptions {
        lease: Duration::from_secs(30),
        ..fast_relay()
    };
    let (one, rx_one) = relay_from(&s.db, options.clone());
    let (two, rx_two) = relay_from(&other_db, options);
    let mut receivers = [rx_one, rx_two];
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        s.add("a", 1).await.unwrap();
    }
    let got = collect(&mut receivers, 5, Duration::from_secs(10)).await;
    let (holder, standby, standby_rx) = match (got[0].len(), got[1].len()) {
        (5, 0) => (one, two, 1),
        (0, 5) => (two, one, 0),
        counts => panic!("{counts:?}"),
    };

    stop(holder).await;
    let stopped = Instant::now();
    for _ in 0..5 {
        s.add("a", 1).await.unwrap();
    }
    let got = collect(&mut receivers, 5, Duration::from_secs(10)).await;
    let taken_over = stopped.elapsed();
    assert_eq!(values(&got[standby_rx]), [6, 7, 8, 9, 10], "{got:?}");
    assert!(got[1 - standby_rx].is_empty(), "the holder stopped");
    assert!(
        taken_over < Duration::from_secs(5),
        "the released lease was taken at once: {taken_over:?}"
    );
    let holders: i64 = sqlx::query_scalar("SELECT count(*) FROM eda_relay_lease")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert_eq!(holders, 1);
    stop(standby).await;
    other_db.pool().close().await;
}

#[tokio::test]
async fn the_lease_changes_hands_only_when_it_expired_or_was_released() {
    let s = service().await;
    let ttl = Duration::from_secs(1);
    let start = Instant::now();
    assert!(s.db.lease("a", ttl).await.unwrap(), "nobody held it");
    assert!(!s.db.lease("b", ttl).await.unwrap(), "a holds it");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(s.db.lease("a", ttl).await.unwrap(), "renewed by its holder");
    tokio::time::sleep(
        Duration::from_millis(1000).saturating_sub(start.elapsed()) + Duration::from_millis(200),
    )
    .await;
    assert!(
        !s.db.lease("b", ttl).await.unwrap(),
        "past the first expiry, but renewed"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(s.db.lease("b", ttl).await.unwrap(), "expired: taken over");
    assert!(!s.db.lease("a", ttl).await.unwrap(), "a lost it");
    s.db.release("a").await.unwrap();
    assert!(
        !s.db.lease("c", ttl).await.unwrap(),
        "only its holder gives a lease up"
    );
    s.db.release("b").await.unwrap();
    assert!(
        s.db.lease("c", Duration::from_secs(60)).await.unwrap(),
        "given up: taken at once"
    );
    let (holder, lasts): (String, bool) = sqlx::query_as(&format!(
        "SELECT holder, expires_at > strftime('{TIMESTAMP_FORMAT}', 'now', '+50 seconds') \
         FROM eda_relay_lease"
    ))
    .fetch_one(s.db.pool())
    .await
    .unwrap();
    assert_eq!((holder.as_str(), lasts), ("c", true));
}

/// A process that took the lease and died (nobody renews it): a relay
/// publishes nothing until the lease expired, then takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_takes_over_from_a_holder_that_stopped_renewing() {
    let s = service().await;
    let before = Instant::now();
    assert!(
        s.db.lease("crashed", Duration::from_millis(500))
            .await
            .unwrap()
    );
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.add("a", 1).await.unwrap();
    let (relay, received) = relay_from(&s.db, fast_relay());
    let mut receivers = [received];
    let got = collect(&mut receivers, 1, Duration::from_secs(10)).await;
    let published = relay.metrics().published();
    stop(relay).await;
    assert_eq!(values(&got[0]), [1]);
    assert_eq!(published, 1);
    let waited = before.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "not before the lease expired: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_what_is_left_and_gives_the_lease_up() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.bus
        .handle(AddEach {
            id: "a".into(),
            times: 300,
        })
        .await
        .unwrap();
    // Batches of 64, and no poll before the end of the test: all of it is
    // published by `shutdown`.
    let (relay, mut received) = relay_from(
        &s.db,
        RelayOptions {
            batch: 64,
            poll: Duration::from_secs(60),
            ..RelayOptions::default()
        },
    );
    stop(relay).await;
    let mut got = Vec::new();
    while let Ok(m) = received.try_recv() {
        got.push(m);
    }
    assert_eq!(values(&got), (1..=300).collect::<Vec<_>>());
    assert_eq!(s.unsent_rows().await, 0);
    assert_eq!(s.count("eda_relay_lease").await, 0, "given up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_without_waiting_for_its_poll() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let (relay, received) = relay_from(
        &s.db,
        RelayOptions {
            poll: Duration::from_secs(60),
            ..fast_relay()
        },
    );
    let mut receivers = [received];
    // The relay found nothing and waits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for value in 1..=2 {
        let committed = Instant::now();
        s.add("a", 1).await.unwrap();
        let got = collect(&mut receivers, 1, Duration::from_secs(5)).await;
        assert_eq!(values(&got[0]), [value], "published on commit");
        assert!(committed.elapsed() < Duration::from_secs(5));
    }
    stop(relay).await;
}

#[tokio::test]
async fn published_outbox_rows_can_be_pruned_and_positions_are_not_reused() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    for _ in 0..3 {
        s.add("a", 1).await.unwrap();
    }
    let entries = s.db.unsent(10).await.unwrap();
    let positions: Vec<i64> = entries.iter().map(|e| e.position).collect();
    s.db.mark_sent(&positions[..2]).await.unwrap();
    assert_eq!(s.db.unsent(10).await.unwrap(), entries[2..]);
    assert_eq!(
        s.db.prune_outbox(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    sqlx::query(&format!(
        "UPDATE eda_outbox SET sent_at = strftime('{TIMESTAMP_FORMAT}', 'now', '-2 hours') \
         WHERE position = ?1"
    ))
    .bind(positions[0])
    .execute(s.db.pool())
    .await
    .unwrap();
    assert_eq!(
        s.db.prune_outbox(Duration::from_secs(3600)).await.unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.db.prune_outbox(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(
        s.db.unsent(10).await.unwrap(),
        entries[2..],
        "unsent rows stay"
    );
    s.db.mark_sent(&positions[2..]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.db.prune_outbox(Duration::ZERO).await.unwrap(), 1);
    s.add("a", 1).await.unwrap();
    let next = s.db.unsent(10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(
        next[0].position > positions[2],
        "a position is never reused"
    );
}

#[tokio::test]
async fn a_database_of_the_first_migration_gets_the_lease_table() {
    let file = TestSqlite::start().await;
    for sql in [
        "DROP TABLE eda_relay_lease",
        "DROP TABLE eda_scheduled",
        "DROP INDEX eda_outbox_undispatched",
        "ALTER TABLE eda_outbox DROP COLUMN dispatched_at",
        "ALTER TABLE eda_outbox DROP COLUMN trace_context",
        "DROP TABLE eda_aggregates",
        "DELETE FROM eda_migrations WHERE version >= 2",
    ] {
        sqlx::query(sql).execute(file.pool()).await.unwrap();
    }
    let again = SqliteDatabase::connect(&file.url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM eda_migrations ORDER BY version")
            .fetch_all(again.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert!(again.lease("x", Duration::from_secs(1)).await.unwrap());
    again.pool().close().await;
}

#[tokio::test]
async fn a_database_of_the_second_migration_gets_the_dispatch_journal() {
    let file = TestSqlite::start().await;
    for sql in [
        "DROP INDEX eda_outbox_undispatched",
        "ALTER TABLE eda_outbox DROP COLUMN dispatched_at",
        // Before the scheduled messages (6), the trace context (5) and the
        // aggregate store (4) as well.
        "DROP TABLE eda_scheduled",
        "ALTER TABLE eda_outbox DROP COLUMN trace_context",
        "DROP TABLE eda_aggregates",
        "DELETE FROM eda_migrations WHERE version >= 3",
        // A row written before the journal existed.
        "INSERT INTO eda_outbox (message_id, name, payload, correlation_id, created_at) \
         VALUES ('0190b0a4-0000-7000-8000-000000000001', 'old', '{}', \
         '0190b0a4-0000-7000-8000-000000000001', '2024-01-01T00:00:00.000Z')",
    ] {
        sqlx::query(sql).execute(file.pool()).await.unwrap();
    }
    let again = SqliteDatabase::connect(&file.url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM eda_migrations ORDER BY version")
            .fetch_all(again.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert!(
        again
            .undispatched(&["old"], Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty(),
        "rows before the journal count as dispatched"
    );
    // A row from before the trace context is read with none.
    let unsent = again.unsent(10).await.unwrap();
    assert_eq!(unsent.len(), 1);
    assert!(unsent[0].message.trace.is_empty());
    again.pool().close().await;
}

/// An event the broker could not route is kept unsent, left out of
/// `unsent` until due, and counts its attempts.
#[tokio::test]
async fn a_deferred_row_is_left_out_until_due_and_counts_its_attempts() {
    let s = service().await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.bus
        .handle(Add {
            id: "a".into(),
            by: 1,
            fail: false,
        })
        .await
        .unwrap();
    let rows = s.db.unsent(10).await.unwrap();
    assert_eq!((rows.len(), rows[0].attempts), (1, 0));
    let position = rows[0].position;
    s.db.defer(&[(position, Duration::from_secs(3600))])
        .await
        .unwrap();
    assert!(s.db.unsent(10).await.unwrap().is_empty(), "not due");
    s.db.defer(&[(position, Duration::ZERO)]).await.unwrap();
    let rows = s.db.unsent(10).await.unwrap();
    assert_eq!((rows.len(), rows[0].attempts), (1, 2));
    s.db.mark_sent(&[position]).await.unwrap();
    assert!(s.db.unsent(10).await.unwrap().is_empty());
}
