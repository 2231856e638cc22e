//! The sqlx adapters' transactions, on connections that units of work ended
//! on cleanly, kept for the next ones.
//!
//! sqlx gives a connection back to its pool through a task of its own that
//! first pings the connection ("test the connection on-release … and flush
//! anything time-sensitive like transaction rollbacks"): one more round trip
//! per transaction (over the socket for Postgres, to the connection's thread
//! for SQLite). A unit of work that begins while another's connection is
//! kept here takes that connection instead, with no ping and no task.
//!
//! So that nothing else waits on a kept connection, one is kept only while
//! the pool could serve another caller (it has an idle connection or room
//! for a new one), for at most `idle_for` unused (a sweeper task gives it
//! back), and at most [`KEEP_LEASE`] from when it left the pool, so that the
//! pool's own checks (its connections' lifetime, its ping) still see every
//! connection each second.

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::{Pool, PoolConnection};
use sqlx::{Database, TransactionManager};

/// How long a connection stays out of the pool, from when a unit of work
/// took it there, before it goes back.
pub(crate) const KEEP_LEASE: Duration = Duration::from_secs(1);

/// How long a kept connection waits for the next unit of work, by default.
pub(crate) const KEEP_IDLE: Duration = Duration::from_millis(20);

/// The connections of one pool that units of work ended on, kept for the
/// next ones.
pub(crate) struct Kept<DB: Database> {
    pool: Pool<DB>,
    idle_for: Duration,
    state: Mutex<State<DB>>,
}

struct State<DB: Database> {
    /// Most recently kept last: the next unit of work takes the warmest.
    idle: Vec<KeptConnection<DB>>,
    /// A sweeper task is running (it stops when nothing is kept).
    sweeping: bool,
}

struct KeptConnection<DB: Database> {
    conn: PoolConnection<DB>,
    /// When a unit of work took it from the pool.
    leased: Instant,
    /// When it was kept.
    since: Instant,
}

impl<DB: Database> Kept<DB> {
    /// Keeps connections of `pool` for up to `idle_for` (zero: none).
    pub(crate) fn new(pool: Pool<DB>, idle_for: Duration) -> Arc<Self> {
        Arc::new(Kept {
            pool,
            idle_for,
            state: Mutex::new(State {
                idle: Vec::new(),
                sweeping: false,
            }),
        })
    }

    /// Begins a transaction (with `statement` instead of `BEGIN`, if any)
    /// on a kept connection, or on one of the pool if none is kept.
    pub(crate) async fn begin(
        &self,
        statement: Option<&'static str>,
    ) -> Result<Lent<DB>, sqlx::Error> {
        let (mut conn, leased) = match self.take() {
            Some(kept) => kept,
            None => (self.pool.acquire().await?, Instant::now()),
        };
        DB::TransactionManager::begin(&mut conn, statement.map(Cow::Borrowed)).await?;
        Ok(Lent {
            conn: Some(conn),
            leased,
        })
    }

    /// The most recently kept connection still within its lease, with when
    /// it was taken from the pool. Older ones go back to the pool.
    fn take(&self) -> Option<(PoolConnection<DB>, Instant)> {
        let mut expired = Vec::new();
        let found = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                match state.idle.pop() {
                    None => break None,
                    Some(kept) if kept.leased.elapsed() < KEEP_LEASE => break Some(kept),
                    Some(kept) => expired.push(kept),
                }
            }
        };
        // Dropped outside the lock: each starts sqlx's return to the pool.
        drop(expired);
        found.map(|kept| (kept.conn, kept.leased))
    }

    /// Keeps a connection a unit of work ended on cleanly (outside any
    /// transaction, nothing pending), or gives it back to the pool.
    fn keep(self: &Arc<Self>, conn: PoolConnection<DB>, leased: Instant) {
        let now = Instant::now();
        let pool = &self.pool;
        let pool_can_serve_others =
            pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections();
        let runtime = tokio::runtime::Handle::try_current();
        if self.idle_for.is_zero()
            || pool.is_closed()
            || now.duration_since(leased) >= KEEP_LEASE
            || !pool_can_serve_others
            || runtime.is_err()
        {
            return;
        }
        let start_sweeper = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.idle.push(KeptConnection {
                conn,
                leased,
                since: now,
            });
            !std::mem::replace(&mut state.sweeping, true)
        };
        if let (true, Ok(runtime)) = (start_sweeper, runtime) {
            runtime.spawn(Arc::clone(self).sweep());
        }
    }

    /// Gives back to the pool what waited `idle_for` or outlived its lease,
    /// every `idle_for` (every lease at most), until nothing is kept.
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.idle_for.min(KEEP_LEASE)).await;
            let now = Instant::now();
            let (expired, done) = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                let (fresh, expired): (Vec<_>, Vec<_>) = state.idle.drain(..).partition(|kept| {
                    now.duration_since(kept.since) < self.idle_for
                        && now.duration_since(kept.leased) < KEEP_LEASE
                });
                state.idle = fresh;
                state.sweeping = !state.idle.is_empty();
                (expired, !state.sweeping)
            };
            drop(expired);
            if done {
                return;
            }
        }
    }
}

/// A transaction's connection, lent until the transaction ends. Dropped
/// before it ended (the unit of work failed, or its future was dropped),
/// the transaction is rolled back as sqlx's own `Transaction` does: the
/// `ROLLBACK` is queued, and sent before the connection's next use (the
/// pool's ping when it goes back there).
pub(crate) struct Lent<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    /// When the connection was taken from the pool.
    leased: Instant,
}

impl<DB: Database> Lent<DB> {
    /// Commits, and keeps the connection for the next unit of work.
    pub(crate) async fn commit(&mut self, kept: &Arc<Kept<DB>>) -> Result<(), sqlx::Error> {
        DB::TransactionManager::commit(&mut **self).await?;
        self.ended(kept);
        Ok(())
    }

    /// Rolls back, and keeps the connection for the next unit of work.
    pub(crate) async fn rollback(&mut self, kept: &Arc<Kept<DB>>) -> Result<(), sqlx::Error> {
        DB::TransactionManager::rollback(&mut **self).await?;
        self.ended(kept);
        Ok(())
    }

    /// The connection is kept if it is outside any transaction (a savepoint
    /// a repository left open keeps it inside: it is rolled back on drop).
    fn ended(&mut self, kept: &Arc<Kept<DB>>) {
        if let Some(conn) = self
            .conn
            .take_if(|conn| DB::TransactionManager::get_transaction_depth(conn) == 0)
        {
            kept.keep(conn, self.leased);
        }
    }
}

impl<DB: Database> Drop for Lent<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_deref_mut()
            && DB::TransactionManager::get_transaction_depth(conn) > 0
        {
            DB::TransactionManager::start_rollback(conn);
        }
    }
}

impl<DB: Database> Deref for Lent<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn
            .as_deref()
            .expect("a transaction's connection is only taken when it ends")
    }
}

impl<DB: Database> DerefMut for Lent<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("a transaction's connection is only taken when it ends")
    }
}
