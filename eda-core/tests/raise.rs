//! Events a unit of work raises itself, not through an aggregate (an order
//! line that names no product): rules 1 and 3 of DESIGN.md hold for them as
//! for aggregates' events. And rule 10: forgetting to commit a unit of work
//! that holds changes is not silent.
#![allow(missing_docs)]

use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

/// Events a unit of work raises itself, not through one of its aggregates.
mod raised_by_the_unit_of_work {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(UnitOfWork)]
    pub(crate) struct Ledger {
        tx: UowTransaction,
        entries: IdentityMap<Entry>,
    }

    #[derive(Debug, Clone, Aggregate)]
    pub(crate) struct Entry {
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) version: u64,
        pub(crate) events: Events,
    }

    /// Adds an entry, then forgets to commit (or rolls back, meaning it).
    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "ledger.forget")]
    pub(crate) struct Forget {
        pub(crate) roll_back: bool,
    }

    #[command_handler]
    async fn forget(cmd: Forget, uow: &mut Ledger) -> Result<(), CommandError<BoxError>> {
        uow.entries().add(Entry {
            id: "e1".into(),
            version: 0,
            events: Events::new(),
        })?;
        if cmd.roll_back {
            uow.rollback().await?;
        }
        Ok(())
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "ledger.refused", external)]
    pub(crate) struct Refused {
        pub(crate) reason: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "ledger.noted")]
    pub(crate) struct Noted {}

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "ledger.refuse")]
    pub(crate) struct Refuse {
        pub(crate) commit: bool,
    }

    #[derive(Default)]
    pub(crate) struct Notes(AtomicUsize);
    impl Adapter for Notes {}

    #[command_handler]
    async fn refuse(cmd: Refuse, uow: &mut Ledger) -> Result<(), CommandError<BoxError>> {
        uow.raise(Refused {
            reason: "unknown sku".into(),
        })?;
        uow.raise(Noted {})?;
        if cmd.commit {
            uow.commit().await?;
        }
        Ok(())
    }

    #[event_handler]
    async fn note(_: &Noted, notes: &Notes) {
        notes.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Its handler adds an entry, and forgets to commit.
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "ledger.reminded")]
    pub(crate) struct Reminded {}

    #[event_handler]
    async fn remember(_: &Reminded, uow: &mut Ledger) -> Result<(), eda_core::Error> {
        uow.entries().add(Entry {
            id: "e2".into(),
            version: 0,
            events: Events::new(),
        })?;
        Ok(())
    }

    fn ledger() -> (InMemoryDatabase, MessageBus) {
        let db = InMemoryDatabase::new();
        let bus = MessageBus::builder()
            .scope(module_path!())
            .adapter(db.clone())
            .adapter(Notes::default())
            .build()
            .unwrap();
        (db, bus)
    }

    #[tokio::test]
    async fn are_published_and_handled_when_it_commits_and_discarded_when_not() {
        let (db, bus) = ledger();
        bus.handle(Refuse { commit: false }).await.unwrap();
        assert!(db.outbox().is_empty());
        assert_eq!(bus.adapter::<Notes>().unwrap().0.load(Ordering::SeqCst), 0);
        assert_eq!(bus.metrics().uncommitted, 1, "not silent");

        bus.handle(Refuse { commit: true }).await.unwrap();
        let outbox = db.outbox();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].name, "ledger.refused");
        assert_eq!(outbox[0].payload, br#"{"reason":"unknown sku"}"#);
        assert_eq!(bus.adapter::<Notes>().unwrap().0.load(Ordering::SeqCst), 1);
        assert_eq!(bus.metrics().uncommitted, 1);
    }

    #[tokio::test]
    async fn a_handler_that_forgets_to_commit_its_changes_is_reported() {
        let (db, bus) = ledger();
        bus.handle(Forget { roll_back: true }).await.unwrap();
        assert_eq!(bus.metrics().uncommitted, 0, "rolled back on purpose");
        bus.handle(Forget { roll_back: false }).await.unwrap();
        assert_eq!(bus.metrics().uncommitted, 1);
        assert!(db.get::<Entry>("e1").is_none(), "rolled back");
        // An event handler too.
        bus.publish(eda_core::Envelope::new(Reminded {})).await;
        assert_eq!(bus.metrics().uncommitted, 2);
        assert!(db.get::<Entry>("e2").is_none(), "rolled back");
    }
}
