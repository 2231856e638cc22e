//! The Postgres adapter against the real Postgres (127.0.0.1:5432 or
//! `DATABASE_URL`), each test in a schema of its own: rules 1, 3, 4 and 5 of
//! DESIGN.md on a real database, the framework's migrations, and its faults.
#![allow(missing_docs)]

use std::time::Duration;

use eda_core::adapters::postgres::{PostgresDatabase, PostgresOptions};
use eda_core::adapters::sql::RowExt;
use eda_core::backend::{Database, OutboxStore};
use eda_core::prelude::*;
use eda_core::sqlx::{self, PgConnection, PgPool, Row};
use eda_core::testing::TestPostgres;
use eda_core::{Error, Metadata, RetryPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

#[derive(Debug, Clone, PartialEq, Aggregate)]
pub struct Counter {
    #[aggregate(id)]
    pub id: String,
    pub value: u32,
    pub version: u64,
    pub events: Events,
}

pub struct PgCounters;

#[repository]
impl Repository for PgCounters {
    type Aggregate = Counter;
    type Connection = PgConnection;

    async fn get(conn: &mut PgConnection, id: &String) -> Result<Option<Counter>, RepositoryError> {
        let Some(row) = sqlx::query("SELECT value, version FROM counters WHERE id = $1")
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

    async fn add(conn: &mut PgConnection, c: &Counter) -> Result<(), RepositoryError> {
        sqlx::query("INSERT INTO counters (id, value, version) VALUES ($1, $2, $3)")
            .bind(&c.id)
            .bind(i64::from(c.value))
            .bind(c.version as i64)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn update(
        conn: &mut PgConnection,
        c: &Counter,
        expected: u64,
    ) -> Result<bool, RepositoryError> {
        let done = sqlx::query(
            "UPDATE counters SET value = $2, version = $3 WHERE id = $1 AND version = $4",
        )
        .bind(&c.id)
        .bind(i64::from(c.value))
        .bind(c.version as i64)
        .bind(expected as i64)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[derive(UnitOfWork)]
pub struct CounterUow {
    #[uow(transaction)]
    tx: UowTransaction,
    counters: IdentityMap<Counter>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.create")]
pub struct Create {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.add", output = u32)]
pub struct Add {
    pub id: String,
    pub by: u32,
    /// Fail after changing the counter (and raising its event).
    pub fail: bool,
}

/// Adds one twice, raising two events: two outbox rows in one commit.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.add_twice")]
pub struct AddTwice {
    pub id: String,
}

/// Adds one; the first two runs wait for each other after loading.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.add_racing", output = u32)]
pub struct AddRacing {
    pub id: String,
}

/// Adds one, then loses its connection before committing.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.add_then_disconnect")]
pub struct AddThenDisconnect {
    pub id: String,
}

/// Adds one, and says which server process (`pg_backend_pid`) ran it.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.add_on_backend", output = i32)]
pub struct AddOnBackend {
    pub id: String,
}

/// Writes to the counter's row by hand, on the unit of work's connection,
/// then fails without committing.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "pgtest.write_then_fail")]
pub struct WriteThenFail {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "pgtest.added", external)]
pub struct Added {
    pub id: String,
    pub value: u32,
}

pub struct Race {
    barrier: Barrier,
    runs: std::sync::atomic::AtomicUsize,
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
async fn add_twice(cmd: AddTwice, uow: &mut CounterUow) -> Handled<()> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    for _ in 0..2 {
        counter.value += 1;
        let value = counter.value;
        counter.events.raise(Added {
            id: cmd.id.clone(),
            value,
        });
    }
    Ok(uow.commit().await?)
}

#[command_handler]
async fn add_racing(cmd: AddRacing, uow: &mut CounterUow, race: &Race) -> Handled<u32> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    counter.value += 1;
    let value = counter.value;
    if race.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
        race.barrier.wait().await;
    }
    uow.commit().await?;
    Ok(value)
}

#[command_handler]
async fn add_then_disconnect(cmd: AddThenDisconnect, uow: &mut CounterUow) -> Handled<()> {
    uow.counters()
        .get(&cmd.id)
        .await?
        .ok_or("no counter")?
        .value += 1;
    // The unit of work's own connection is terminated: as if the network
    // dropped between the handler's work and its commit.
    let conn = uow
        .tx
        .connection::<PgConnection>()
        .expect("a Postgres transaction");
    let _ = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut *conn)
        .await;
    Ok(uow.commit().await?)
}

#[command_handler]
async fn add_on_backend(cmd: AddOnBackend, uow: &mut CounterUow) -> Handled<i32> {
    let counter = uow.counters().get(&cmd.id).await?.ok_or("no counter")?;
    counter.value += 1;
    let value = counter.value;
    counter.events.raise(Added { id: cmd.id, value });
    let conn = uow
        .tx
        .connection::<PgConnection>()
        .expect("a Postgres transaction");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    uow.commit().await?;
    Ok(pid)
}

#[command_handler]
async fn write_then_fail(cmd: WriteThenFail, uow: &mut CounterUow) -> Handled<()> {
    let conn = uow
        .tx
        .connection::<PgConnection>()
        .expect("a Postgres transaction");
    sqlx::query("UPDATE counters SET value = value + 100 WHERE id = $1")
        .bind(&cmd.id)
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Err("refused after writing".into())
}

struct Service {
    pg: TestPostgres,
    bus: MessageBus,
}

async fn service_with(retry: RetryPolicy) -> Option<Service> {
    Some(service_on(TestPostgres::start().await?, retry).await)
}

async fn service_on(pg: TestPostgres, retry: RetryPolicy) -> Service {
    sqlx::query("CREATE TABLE counters (id TEXT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)")
        .execute(pg.pool())
        .await
        .unwrap();
    let bus = bus_on(pg.db.clone(), retry);
    Service { pg, bus }
}

/// This test binary's handlers on `db`.
fn bus_on(db: PostgresDatabase, retry: RetryPolicy) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(db)
        .adapter(Race {
            barrier: Barrier::new(2),
            runs: Default::default(),
        })
        .command_retry(retry)
        .build()
        .expect("wiring")
}

async fn service() -> Option<Service> {
    service_with(RetryPolicy::new(5).backoff(Duration::from_millis(2), Duration::from_millis(20)))
        .await
}

impl Service {
    async fn counter(&self, id: &str) -> Option<(i64, i64)> {
        sqlx::query("SELECT value, version FROM counters WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pg.pool())
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    async fn outbox(&self) -> Vec<(String, String)> {
        sqlx::query("SELECT name, payload FROM eda_outbox ORDER BY position")
            .fetch_all(self.pg.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

#[tokio::test]
async fn a_unit_of_work_saves_in_one_transaction_with_its_outbox_row() {
    let Some(s) = service().await else { return };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let value = s
        .bus
        .handle(Add {
            id: "a".into(),
            by: 3,
            fail: false,
        })
        .await
        .unwrap();
    assert_eq!(value, 3);
    assert_eq!(s.counter("a").await, Some((3, 1)));
    assert_eq!(
        s.outbox().await,
        vec![(
            "pgtest.added".to_string(),
            r#"{"id":"a","value":3}"#.to_string()
        )]
    );
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn several_events_of_one_commit_are_written_in_order_with_their_metadata() {
    let Some(s) = service().await else { return };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let envelope = eda_core::Envelope::new(AddTwice { id: "a".into() });
    let command = envelope.metadata;
    s.bus.handle_envelope(envelope).await.unwrap();
    assert_eq!(
        s.outbox().await,
        vec![
            (
                "pgtest.added".to_string(),
                r#"{"id":"a","value":1}"#.to_string()
            ),
            (
                "pgtest.added".to_string(),
                r#"{"id":"a","value":2}"#.to_string()
            ),
        ]
    );
    let metadata: Vec<(uuid::Uuid, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT correlation_id, causation_id FROM eda_outbox ORDER BY position")
            .fetch_all(s.pg.pool())
            .await
            .unwrap();
    for (correlation, causation) in metadata {
        assert_eq!(correlation, command.correlation_id.as_uuid());
        assert_eq!(causation, Some(command.message_id.as_uuid()));
    }
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn the_outbox_row_exists_if_and_only_if_the_transaction_committed() {
    let Some(s) = service().await else { return };
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
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn a_redelivered_message_is_handled_once() {
    let Some(s) = service().await else { return };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let metadata = Metadata::new();
    let body = br#"{"id":"a","by":1,"fail":false}"#;
    let (one, two) = tokio::join!(
        s.bus.handle_incoming("pgtest.add", metadata, body),
        s.bus.handle_incoming("pgtest.add", metadata, body)
    );
    one.unwrap();
    two.unwrap();
    s.bus
        .handle_incoming("pgtest.add", metadata, body)
        .await
        .unwrap();
    assert_eq!(s.counter("a").await, Some((1, 1)));
    assert_eq!(s.outbox().await.len(), 1);
    let inbox: i64 = sqlx::query("SELECT count(*) FROM eda_inbox")
        .fetch_one(s.pg.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(inbox, 1);
    s.pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_update_is_detected_and_retried_never_lost() {
    let Some(s) = service().await else { return };
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
    assert_eq!(s.bus.metrics().command_conflicts, 1);
    s.pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_updates_lose_nothing() {
    let Some(s) = service_with(
        RetryPolicy::new(50).backoff(Duration::from_millis(1), Duration::from_millis(20)),
    )
    .await
    else {
        return;
    };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let bus = s.bus.clone();
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
    assert_eq!(ok, 20);
    assert_eq!(s.counter("a").await, Some((20, 20)));
    assert_eq!(s.outbox().await.len(), 20);
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn a_connection_lost_before_commit_fails_the_command_and_writes_nothing() {
    let Some(s) = service_with(RetryPolicy::never()).await else {
        return;
    };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let err = s
        .bus
        .handle(AddThenDisconnect { id: "a".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Bus(_)),
        "the framework's failure: {err:?}"
    );
    assert_eq!(s.counter("a").await, Some((0, 0)), "nothing half-written");
    // The pool replaced the dead connection.
    let value = s
        .bus
        .handle(Add {
            id: "a".into(),
            by: 1,
            fail: false,
        })
        .await
        .unwrap();
    assert_eq!(value, 1);
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn units_of_work_one_after_another_run_on_one_connection_without_leaking_a_transaction() {
    // Kept far longer than this test's pauses between commands, however
    // loaded the machine: only the lease (a second) changes the connection.
    let Some(pg) = TestPostgres::start_with(
        PostgresOptions::default().keep_idle_connections(Duration::from_secs(10)),
    )
    .await
    else {
        return;
    };
    let s = service_on(pg, RetryPolicy::never()).await;
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    let started = std::time::Instant::now();
    // The backend of each command that committed, and whether one that
    // failed ran just before it (its connection went back to the pool with
    // its rollback: the next one may take any).
    let mut backends = Vec::new();
    let mut after_failure = false;
    for i in 0..20 {
        let backend = s.bus.handle(AddOnBackend { id: "a".into() }).await.unwrap();
        backends.push((backend, after_failure));
        after_failure = false;
        // A unit of work that wrote and failed, and one that changed an
        // aggregate and failed: both roll back, and the next one does not
        // run inside what they left.
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
    let changes = backends
        .windows(2)
        .filter(|w| !w[1].1 && w[0].0 != w[1].0)
        .count();
    let leases = started.elapsed().as_secs() as usize;
    assert!(
        changes <= leases,
        "each unit of work took the connection the one before committed on, but for one \
         change a second at most: {changes} changes in {leases} s: {backends:?}"
    );
    assert_eq!(s.counter("a").await, Some((20, 20)), "only the commits");
    assert_eq!(s.outbox().await.len(), 20);
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn a_connection_kept_for_the_next_unit_of_work_goes_back_to_the_pool_when_idle() {
    let Some(pg) = TestPostgres::start_with(
        PostgresOptions::default()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2)),
    )
    .await
    else {
        return;
    };
    let Service { pg, bus } = service_on(pg, RetryPolicy::never()).await;
    bus.handle(Create { id: "a".into() }).await.unwrap();
    bus.handle(AddOnBackend { id: "a".into() }).await.unwrap();
    // Code of the application's own takes every connection of the pool,
    // the one eda keeps for its next unit of work included: it gets it
    // back well within the pool's acquire timeout.
    let first = pg.pool().acquire().await.expect("a first connection");
    let second = pg
        .pool()
        .acquire()
        .await
        .expect("the connection eda kept went back to the pool");
    drop((first, second));
    // Closing the pool does not wait for eda either.
    tokio::time::timeout(Duration::from_secs(2), pg.drop_schema())
        .await
        .expect("the pool closed");
}

#[tokio::test]
async fn a_pool_given_with_options_keeps_connections_as_they_say_and_refuses_the_pool_s_own_settings()
 {
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    let s = service_on(pg, RetryPolicy::never()).await;
    // The application's own pool, on the test's schema.
    let app_pool = || {
        let schema = s.pg.schema.clone();
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                let sql = format!("SET search_path TO \"{schema}\"");
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sql.as_str())
                        .await
                        .map(|_| ())
                })
            })
            .connect(&s.pg.url)
    };
    let options = || PostgresOptions::default().schema(&s.pg.schema);

    let refused = PostgresDatabase::from_pool_with(
        app_pool().await.unwrap(),
        options()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(1)),
    )
    .await
    .expect_err("settings of the pool's own are refused, not ignored");
    assert!(
        refused
            .to_string()
            .contains("max_connections, acquire_timeout set on PostgresOptions"),
        "{refused}"
    );

    // Kept connections are out of the pool until they are given back: a
    // long keep holds one after a command; none kept gives it back at once.
    for (keep, kept) in [(Duration::from_secs(10), 1), (Duration::ZERO, 0)] {
        let pool = app_pool().await.unwrap();
        let db =
            PostgresDatabase::from_pool_with(pool.clone(), options().keep_idle_connections(keep))
                .await
                .expect("the given pool is used");
        let bus = bus_on(db, RetryPolicy::never());
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
        drop(bus);
        pool.close().await;
    }
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn pooled_connections_killed_while_idle_are_replaced_without_failing_a_command() {
    let Some(s) = service_with(RetryPolicy::never()).await else {
        return;
    };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    // The server ends every idle connection of this service's pool (a
    // restart, a proxy's idle timeout): the pool does not ping them.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&s.pg.schema)
    .fetch_one(&PgPool::connect(&s.pg.url).await.unwrap())
    .await
    .unwrap();
    assert!(killed >= 1, "the pool had idle connections");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let value = s
        .bus
        .handle(Add {
            id: "a".into(),
            by: 1,
            fail: false,
        })
        .await
        .expect("begin found the dead connection and took another");
    assert_eq!(value, 1);
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn a_row_that_cannot_be_decoded_is_an_error_naming_table_and_column() {
    let Some(s) = service().await else { return };
    sqlx::query("INSERT INTO counters VALUES ('bad', -5, 0)")
        .execute(s.pg.pool())
        .await
        .unwrap();
    let err = s
        .bus
        .handle(Add {
            id: "bad".into(),
            by: 1,
            fail: false,
        })
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("column `value` of table `counters`"),
        "{text}"
    );
    assert!(matches!(
        err,
        CommandError::Bus(Error::Repository(RepositoryError::Decode { .. }))
    ));
    s.pg.drop_schema().await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_when_instances_start_at_once() {
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    let options = PostgresOptions::default().schema(pg.schema.clone());
    let starts = (0..5).map(|_| {
        let (url, options) = (pg.url.clone(), options.clone());
        tokio::spawn(async move { PostgresDatabase::connect_with(&url, options).await })
    });
    for start in starts.collect::<Vec<_>>() {
        start.await.unwrap().expect("concurrent start");
    }
    // Each migration ran exactly once: versions 1..=n, no gap, no repeat.
    let (count, distinct, max): (i64, i64, i32) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT version), max(version) FROM eda_migrations",
    )
    .fetch_one(pg.pool())
    .await
    .unwrap();
    assert!(
        max >= 3,
        "the relay lease and dispatch journal migrations ran"
    );
    assert_eq!((count, distinct), (i64::from(max), i64::from(max)));
    pg.drop_schema().await;
}

#[tokio::test]
async fn a_database_of_the_second_migration_gets_the_dispatch_journal() {
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    for sql in [
        "ALTER TABLE eda_outbox DROP COLUMN dispatched_at",
        // Before the scheduled messages (6), the trace context (5) and the
        // aggregate store (4) as well.
        "DROP TABLE eda_scheduled",
        "ALTER TABLE eda_outbox DROP COLUMN trace_context",
        "DROP TABLE eda_aggregates",
        "DELETE FROM eda_migrations WHERE version >= 3",
        // A row written before the journal existed.
        "INSERT INTO eda_outbox (message_id, name, payload, correlation_id, created_at) \
         VALUES (gen_random_uuid(), 'old', '{}', gen_random_uuid(), now() - interval '1 hour')",
    ] {
        sqlx::query(sql).execute(pg.pool()).await.unwrap();
    }
    let options = PostgresOptions::default().schema(pg.schema.clone());
    let again = PostgresDatabase::connect_with(&pg.url, options)
        .await
        .unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM eda_migrations ORDER BY version")
            .fetch_all(pg.pool())
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
    pg.drop_schema().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let url = "postgres://app:s3cr3t@127.0.0.1:1/shop";
    let err = PostgresDatabase::connect_with(
        url,
        PostgresOptions::default().acquire_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot connect to postgres://app:***@127.0.0.1:1/shop"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(!format!("{err:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn old_inbox_rows_can_be_pruned() {
    let Some(s) = service().await else { return };
    s.bus.handle(Create { id: "a".into() }).await.unwrap();
    s.bus
        .handle_incoming(
            "pgtest.add",
            Metadata::new(),
            br#"{"id":"a","by":1,"fail":false}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        s.pg.db
            .prune_inbox(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    sqlx::query("UPDATE eda_inbox SET handled_at = now() - interval '2 hours'")
        .execute(s.pg.pool())
        .await
        .unwrap();
    assert_eq!(
        s.pg.db
            .prune_inbox(Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    s.pg.drop_schema().await;
}

// The outbox relay on Postgres (to the in-process broker, so that only the
// database is under test here; RabbitMQ has its own tests).

mod relay {
    use std::sync::Arc;

    /// An event the broker could not route is kept unsent, left out of
    /// `unsent` until due, and counts its attempts.
    #[tokio::test]
    async fn a_deferred_row_is_left_out_until_due_and_counts_its_attempts() {
        let Some(s) = service().await else { return };
        s.bus.handle(Create { id: "a".into() }).await.unwrap();
        s.bus
            .handle(Add {
                id: "a".into(),
                by: 1,
                fail: false,
            })
            .await
            .unwrap();
        let db = &s.pg.db;
        let rows = db.unsent(10).await.unwrap();
        assert_eq!((rows.len(), rows[0].attempts), (1, 0));
        // The backlog counts in SQL what `unsent` gives.
        let backlog = db.backlog().await.unwrap();
        assert_eq!(backlog.rows, 1);
        assert!(!backlog.capped);
        assert_eq!(backlog.oldest, Some(rows[0].message.metadata.timestamp));
        let position = rows[0].position;
        db.defer(&[(position, Duration::from_secs(3600))])
            .await
            .unwrap();
        assert!(db.unsent(10).await.unwrap().is_empty(), "not due");
        assert_eq!(db.backlog().await.unwrap().rows, 0, "not due");
        db.defer(&[(position, Duration::ZERO)]).await.unwrap();
        let rows = db.unsent(10).await.unwrap();
        assert_eq!((rows.len(), rows[0].attempts), (1, 2));
        db.mark_sent(&[position]).await.unwrap();
        assert!(db.unsent(10).await.unwrap().is_empty());
        assert_eq!(
            db.backlog().await.unwrap(),
            eda_core::backend::Backlog::default()
        );
        s.pg.drop_schema().await;
    }

    use eda_core::adapters::in_process::InProcessBroker;
    use eda_core::backend::OutboxStore;
    use eda_core::backend::Publisher;
    use eda_core::entrypoints::ConsumerOptions;
    use eda_core::{ExternalMessage, OutboxRelay, RelayOptions};

    use super::*;

    fn fast() -> RelayOptions {
        RelayOptions {
            poll: Duration::from_millis(50),
            lease: Duration::from_secs(2),
            ..RelayOptions::default()
        }
    }

    /// A relay's broker: in-process, with a queue bound to every name, as
    /// other services' would be.
    struct Observed {
        broker: InProcessBroker,
        publisher: Arc<dyn Publisher>,
    }

    impl Observed {
        fn new() -> Self {
            let broker = InProcessBroker::new();
            let publisher = broker.service(ConsumerOptions::new("relay")).publisher();
            broker.declare_queue("observer");
            broker.bind("observer", "eda.events", "#").unwrap();
            Observed { broker, publisher }
        }

        fn try_recv(&self) -> Option<ExternalMessage> {
            self.broker.take("observer").map(|m| m.message)
        }

        async fn received(&self, n: usize) -> Vec<ExternalMessage> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut out = Vec::new();
            while out.len() < n {
                match self.try_recv() {
                    Some(m) => out.push(m),
                    None if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    None => panic!("only {} messages of {n}", out.len()),
                }
            }
            out
        }
    }

    async fn deposit(s: &Service, n: u32) {
        for _ in 0..n {
            s.bus
                .handle(Add {
                    id: "a".into(),
                    by: 1,
                    fail: false,
                })
                .await
                .unwrap();
        }
    }

    async fn unsent(s: &Service) -> i64 {
        sqlx::query("SELECT count(*) FROM eda_outbox WHERE sent_at IS NULL")
            .fetch_one(s.pg.pool())
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn the_relay_publishes_committed_events_in_order_and_marks_them_sent() {
        let Some(s) = service().await else { return };
        s.bus.handle(Create { id: "a".into() }).await.unwrap();
        let inbox = Observed::new();
        let relay = OutboxRelay::spawn(Arc::new(s.pg.db.clone()), inbox.publisher.clone(), fast());
        deposit(&s, 30).await;
        let messages = inbox.received(30).await;
        let values: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8(m.payload.clone()).unwrap())
            .collect();
        let expected: Vec<String> = (1..=30)
            .map(|v| format!(r#"{{"id":"a","value":{v}}}"#))
            .collect();
        assert_eq!(values, expected, "in commit order");
        let ids: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT message_id FROM eda_outbox ORDER BY position")
                .fetch_all(s.pg.pool())
                .await
                .unwrap();
        let published: Vec<uuid::Uuid> = messages
            .iter()
            .map(|m| m.metadata.message_id.as_uuid())
            .collect();
        assert_eq!(published, ids, "with the ids (and metadata) of their rows");
        relay.shutdown().await;
        assert_eq!(unsent(&s).await, 0);
        s.pg.drop_schema().await;
    }

    #[tokio::test]
    async fn one_instance_publishes_and_another_takes_over_when_it_stops() {
        let Some(s) = service().await else { return };
        s.bus.handle(Create { id: "a".into() }).await.unwrap();
        // A second instance of the service: another pool on the same schema.
        let other = PostgresDatabase::connect_with(
            &s.pg.url,
            PostgresOptions::default().schema(s.pg.schema.clone()),
        )
        .await
        .unwrap();
        let (first_inbox, second_inbox) = (Observed::new(), Observed::new());
        let first = OutboxRelay::spawn(
            Arc::new(s.pg.db.clone()),
            first_inbox.publisher.clone(),
            fast(),
        );
        // The first relay takes the lease before the second starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = OutboxRelay::spawn(Arc::new(other), second_inbox.publisher.clone(), fast());
        deposit(&s, 20).await;
        first_inbox.received(20).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            second.metrics().published(),
            0,
            "only the lease holder publishes"
        );

        first.shutdown().await; // releases the lease
        deposit(&s, 5).await;
        let taken_over = second_inbox.received(5).await;
        assert_eq!(taken_over.len(), 5);
        assert!(
            first_inbox.try_recv().is_none(),
            "the stopped relay published nothing more"
        );
        second.shutdown().await;
        assert_eq!(unsent(&s).await, 0);
        s.pg.drop_schema().await;
    }

    #[tokio::test]
    async fn a_lease_that_was_not_renewed_is_taken_over() {
        let Some(pg) = TestPostgres::start().await else {
            return;
        };
        let store = &pg.db;
        assert!(store.lease("a", Duration::from_millis(400)).await.unwrap());
        assert!(
            !store.lease("b", Duration::from_millis(400)).await.unwrap(),
            "held by a"
        );
        assert!(
            store.lease("a", Duration::from_millis(400)).await.unwrap(),
            "a renews its own"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            store.lease("b", Duration::from_secs(10)).await.unwrap(),
            "a's lease expired"
        );
        assert!(
            !store.lease("a", Duration::from_secs(10)).await.unwrap(),
            "now b holds it"
        );
        store.release("b").await.unwrap();
        assert!(
            store.lease("a", Duration::from_secs(10)).await.unwrap(),
            "released"
        );
        pg.drop_schema().await;
    }

    #[tokio::test]
    async fn published_rows_can_be_pruned() {
        let Some(s) = service().await else { return };
        s.bus.handle(Create { id: "a".into() }).await.unwrap();
        deposit(&s, 3).await;
        let relay =
            OutboxRelay::spawn(Arc::new(s.pg.db.clone()), Observed::new().publisher, fast());
        relay.shutdown().await;
        assert_eq!(
            s.pg.db
                .prune_outbox(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "too recent"
        );
        sqlx::query("UPDATE eda_outbox SET sent_at = now() - interval '2 hours'")
            .execute(s.pg.pool())
            .await
            .unwrap();
        assert_eq!(
            s.pg.db
                .prune_outbox(Duration::from_secs(3600))
                .await
                .unwrap(),
            3
        );
        s.pg.drop_schema().await;
    }
}
