//! A database whose transactions borrow it (the `'_` of
//! [`Database::begin`]), as the in-memory one's do: a unit of work keeps
//! the database alive for as long as its transaction, in a handler and
//! when begun outside one, even after the bus and every other handle to
//! the database are dropped.

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use eda_core::backend::{BoxFuture, Database, DatabaseTransaction};
use eda_core::prelude::*;
use eda_core::{Error, ExternalMessage, MessageId};
use serde::{Deserialize, Serialize};

/// What the test reads of the database, outliving it.
#[derive(Default)]
struct Seen {
    dropped: AtomicBool,
    begun: AtomicUsize,
    committed: AtomicUsize,
    /// Transactions dropped (committed or not).
    ended: AtomicUsize,
    /// Every transaction begun on it had ended when it was dropped.
    outlived_its_transactions: AtomicBool,
}

/// The database: the bus holds the only handle to it.
struct Ledger {
    seen: Arc<Seen>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let ended = self.seen.ended.load(Ordering::SeqCst);
        let begun = self.seen.begun.load(Ordering::SeqCst);
        self.seen
            .outlived_its_transactions
            .store(ended == begun, Ordering::SeqCst);
        self.seen.dropped.store(true, Ordering::SeqCst);
    }
}

/// Its transaction borrows it.
struct LedgerTransaction<'a> {
    db: &'a Ledger,
    connection: (),
}

impl Drop for LedgerTransaction<'_> {
    fn drop(&mut self) {
        // Through the borrow (a rollback, when it did not commit).
        self.db.seen.ended.fetch_add(1, Ordering::SeqCst);
    }
}

impl Adapter for Ledger {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

impl Database for Ledger {
    fn describe(&self) -> String {
        "ledger".into()
    }
    fn connection_type(&self) -> (std::any::TypeId, &'static str) {
        (std::any::TypeId::of::<()>(), "()")
    }
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        Box::pin(async move {
            self.seen.begun.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(LedgerTransaction {
                db: self,
                connection: (),
            }) as Box<dyn DatabaseTransaction + '_>)
        })
    }
}

impl DatabaseTransaction for LedgerTransaction<'_> {
    fn connection(&mut self) -> &mut (dyn std::any::Any + Send) {
        &mut self.connection
    }
    fn write_outbox<'a>(
        &'a mut self,
        _: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn record_inbox<'a>(
        &'a mut self,
        _: MessageId,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async { Ok(true) })
    }
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        // Through the borrow: the database is still there.
        self.db.seen.committed.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "borrowing.record", output = ())]
pub struct Record;

#[derive(UnitOfWork)]
pub struct LedgerUow {
    #[uow(transaction)]
    tx: UowTransaction,
}

#[command_handler]
async fn record(_: Record, uow: &mut LedgerUow) -> Result<(), BoxError> {
    uow.commit().await?;
    Ok(())
}

fn bus(seen: &Arc<Seen>) -> MessageBus {
    MessageBus::builder()
        .scope(module_path!())
        .adapter(Ledger { seen: seen.clone() })
        .build()
        .expect("the bus builds")
}

#[tokio::test]
async fn a_handler_s_unit_of_work_commits_on_a_database_its_transaction_borrows() {
    let seen = Arc::new(Seen::default());
    let bus = bus(&seen);
    for _ in 0..3 {
        bus.handle(Record).await.expect("the command is handled");
    }
    assert_eq!(seen.begun.load(Ordering::SeqCst), 3);
    assert_eq!(seen.committed.load(Ordering::SeqCst), 3);
    assert_eq!(seen.ended.load(Ordering::SeqCst), 3);
    assert!(!seen.dropped.load(Ordering::SeqCst));
    drop(bus);
    assert!(
        seen.dropped.load(Ordering::SeqCst),
        "the bus held the last handle"
    );
    assert!(seen.outlived_its_transactions.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_unit_of_work_keeps_the_database_its_transaction_borrows_after_the_bus_is_dropped() {
    let seen = Arc::new(Seen::default());
    let bus = bus(&seen);
    let mut committed: LedgerUow = bus.begin().await.expect("a unit of work begins");
    let rolled_back: LedgerUow = bus.begin().await.expect("a unit of work begins");
    drop(bus);
    assert!(
        !seen.dropped.load(Ordering::SeqCst),
        "the units of work keep the database their transactions borrow"
    );

    committed
        .commit()
        .await
        .expect("it commits after the bus is gone");
    assert_eq!(seen.committed.load(Ordering::SeqCst), 1);
    assert_eq!(seen.ended.load(Ordering::SeqCst), 1);
    drop(committed);
    assert!(
        !seen.dropped.load(Ordering::SeqCst),
        "one unit of work is left"
    );

    // Dropped uncommitted: its transaction is dropped (rolled back), and
    // then the database.
    drop(rolled_back);
    assert_eq!(seen.committed.load(Ordering::SeqCst), 1);
    assert!(
        seen.dropped.load(Ordering::SeqCst),
        "the last unit of work held the last handle"
    );
    assert!(
        seen.outlived_its_transactions.load(Ordering::SeqCst),
        "the database was dropped before a transaction that borrows it"
    );
}
