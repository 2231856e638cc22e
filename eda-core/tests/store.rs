//! Aggregates stored without a repository (issue 13, item 2): on the
//! in-memory database, on SQLite, on Postgres, and on a database written
//! here, outside eda-core, through the adapter-author API only. The same
//! version checks and events as a repository (rules 3 and 5 of DESIGN.md),
//! and an aggregate that did not change is not written.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eda_core::adapters::sqlite::SqliteDatabase;
use eda_core::backend::{AggregateStorage, AggregateType, Save, Stored};
use eda_core::backend::{BoxFuture, Database, DatabaseTransaction};
use eda_core::prelude::*;
use eda_core::testing::{TestPostgres, TestSqlite};
use eda_core::{Error, ExternalMessage, MessageId, WiringProblem};
use serde::{Deserialize, Serialize};

mod accounts {
    use super::*;

    /// An account: serializable, and no repository anywhere.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
    pub(crate) struct Account {
        #[aggregate(id)]
        pub(crate) id: String,
        pub(crate) owner: String,
        pub(crate) balance: i64,
        pub(crate) version: u64,
        pub(crate) events: Events,
    }

    #[derive(UnitOfWork)]
    pub(crate) struct Bank {
        tx: UowTransaction,
        accounts: IdentityMap<Account>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "store_test.open")]
    pub(crate) struct Open {
        pub(crate) id: String,
        pub(crate) owner: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "store_test.charge", output = bool)]
    pub(crate) struct Charge {
        pub(crate) id: String,
        pub(crate) amount: i64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(name = "store_test.charged", external)]
    pub(crate) struct Charged {
        pub(crate) id: String,
        pub(crate) amount: i64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(name = "store_test.charge_rejected", external)]
    pub(crate) struct ChargeRejected {
        pub(crate) id: String,
        pub(crate) amount: i64,
    }

    #[command_handler]
    async fn open(cmd: Open, uow: &mut Bank) -> Result<(), Error> {
        uow.accounts().add(Account {
            id: cmd.id,
            owner: cmd.owner,
            balance: 100,
            version: 0,
            events: Events::new(),
        })?;
        uow.commit().await
    }

    /// Charges, or rejects the charge without changing the account (the
    /// event says so).
    #[command_handler]
    async fn charge(cmd: &Charge, uow: &mut Bank) -> Result<bool, CommandError<BoxError>> {
        let account = uow
            .accounts()
            .get(&cmd.id)
            .await?
            .ok_or("no such account")?;
        let charged = account.balance >= cmd.amount;
        if charged {
            account.balance -= cmd.amount;
            account.events.raise(Charged {
                id: cmd.id.clone(),
                amount: cmd.amount,
            });
        } else {
            account.events.raise(ChargeRejected {
                id: cmd.id.clone(),
                amount: cmd.amount,
            });
        }
        uow.commit().await?;
        Ok(charged)
    }

    /// Finds an account by its owner: no repository answers it, the store's
    /// aggregates are looked through.
    pub(crate) struct OwnedBy(pub(crate) String);

    impl Finder<Account> for OwnedBy {
        fn matches(&self, account: &Account) -> bool {
            account.owner == self.0
        }
    }
}

use accounts::{Account, Bank, Charge, ChargeRejected, Charged, Open, OwnedBy};

fn bus(db: impl Adapter) -> MessageBus {
    MessageBus::builder()
        .scope(concat!(module_path!(), "::accounts"))
        .adapter(db)
        .build()
        .unwrap()
}

/// The same behaviour on every database; `stored` reads an account's
/// committed version outside the bus.
async fn scenario<F>(bus: &MessageBus, stored: F)
where
    F: AsyncFn(&str) -> Option<u64>,
{
    bus.handle(Open {
        id: "a1".into(),
        owner: "ann".into(),
    })
    .await
    .unwrap();
    assert_eq!(stored("a1").await, Some(0), "inserted at version 0");

    // Loaded and saved with a version check; the event is handed on.
    assert!(
        bus.handle(Charge {
            id: "a1".into(),
            amount: 30
        })
        .await
        .unwrap()
    );
    assert_eq!(stored("a1").await, Some(1));
    let mut uow: Bank = bus.begin().await.unwrap();
    let account = uow.accounts().read(&"a1".into()).await.unwrap().unwrap();
    assert_eq!((account.balance, account.version), (70, 1));
    assert!(account.events.is_empty());
    drop(uow);

    // A rejected charge changes nothing: not written, no version raised,
    // and its event still goes out.
    assert!(
        !bus.handle(Charge {
            id: "a1".into(),
            amount: 1000
        })
        .await
        .unwrap()
    );
    assert_eq!(
        stored("a1").await,
        Some(1),
        "an unchanged account is not written"
    );

    // A second account of the same id is a conflict (already exists).
    let mut uow: Bank = bus.begin().await.unwrap();
    uow.accounts()
        .add(Account {
            id: "a1".into(),
            owner: "bob".into(),
            balance: 0,
            version: 0,
            events: Events::new(),
        })
        .unwrap();
    let err = uow.commit().await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(err.to_string().contains("a1 already exists"), "{err}");

    // A finder looks through the stored ones.
    bus.handle(Open {
        id: "b1".into(),
        owner: "bob".into(),
    })
    .await
    .unwrap();
    let mut uow: Bank = bus.begin().await.unwrap();
    let found = uow.accounts().find(&OwnedBy("bob".into())).await.unwrap();
    assert_eq!(found.map(|a| a.id.clone()), Some("b1".into()));
    assert!(
        uow.accounts()
            .find(&OwnedBy("cy".into()))
            .await
            .unwrap()
            .is_none()
    );
    drop(uow);

    // Rolled back: nothing written.
    let mut uow: Bank = bus.begin().await.unwrap();
    uow.accounts()
        .get(&"b1".into())
        .await
        .unwrap()
        .unwrap()
        .balance = 0;
    uow.rollback().await.unwrap();
    assert_eq!(stored("b1").await, Some(0));
    assert_eq!(stored("nobody").await, None);
}

/// Two units of work that load the same account: the second to save it
/// conflicts; one that only looked at it (or changed nothing) does not.
async fn concurrent(bus: &MessageBus) {
    bus.handle(Open {
        id: "c1".into(),
        owner: "cy".into(),
    })
    .await
    .unwrap();
    let mut first: Bank = bus.begin().await.unwrap();
    let mut second: Bank = bus.begin().await.unwrap();
    let mut idle: Bank = bus.begin().await.unwrap();
    first
        .accounts()
        .get(&"c1".into())
        .await
        .unwrap()
        .unwrap()
        .balance -= 10;
    second
        .accounts()
        .get(&"c1".into())
        .await
        .unwrap()
        .unwrap()
        .balance -= 20;
    let untouched = idle.accounts().get(&"c1".into()).await.unwrap().unwrap();
    assert_eq!(untouched.balance, 100);
    first.commit().await.unwrap();
    let err = second.commit().await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    idle.commit().await.unwrap();
    let mut uow: Bank = bus.begin().await.unwrap();
    let account = uow.accounts().read(&"c1".into()).await.unwrap().unwrap();
    assert_eq!((account.balance, account.version), (90, 1));
}

#[tokio::test]
async fn in_memory() {
    let db = InMemoryDatabase::new();
    let bus = bus(db.clone());
    scenario(&bus, async |id: &str| {
        db.get::<Account>(id).map(|a| a.version)
    })
    .await;
    concurrent(&bus).await;
    let names: Vec<_> = db.outbox().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["store_test.charged", "store_test.charge_rejected"]);
}

#[tokio::test]
async fn on_sqlite() {
    let file = TestSqlite::start().await;
    let bus = bus(file.db.clone());
    let pool = file.pool().clone();
    scenario(&bus, async |id: &str| {
        eda_core::sqlx::query_scalar::<_, i64>(
            "SELECT version FROM eda_aggregates WHERE aggregate = 'Account' AND id = ?1",
        )
        .bind(id)
        .fetch_optional(&pool)
        .await
        .unwrap()
        .map(|v| v as u64)
    })
    .await;
    // SQLite takes its writer lock at `begin`: two units of work cannot
    // both load before one saves, so there is no conflict to show.
    let body: String = eda_core::sqlx::query_scalar(
        "SELECT body FROM eda_aggregates WHERE aggregate = 'Account' AND id = 'a1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["balance"], 70);
    assert_eq!(json["owner"], "ann");
    let outbox: Vec<String> =
        eda_core::sqlx::query_scalar("SELECT name FROM eda_outbox ORDER BY position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(outbox, ["store_test.charged", "store_test.charge_rejected"]);
    file.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let Some(pg) = TestPostgres::start().await else {
        return;
    };
    let bus = bus(pg.db.clone());
    let pool = pg.pool().clone();
    scenario(&bus, async |id: &str| {
        eda_core::sqlx::query_scalar::<_, i64>(
            "SELECT version FROM eda_aggregates WHERE aggregate = 'Account' AND id = $1",
        )
        .bind(id)
        .fetch_optional(&pool)
        .await
        .unwrap()
        .map(|v| v as u64)
    })
    .await;
    concurrent(&bus).await;
    pg.drop_schema().await;
}

/// A database written outside eda-core, with only what eda-core offers
/// adapter authors: it keeps aggregates as documents, the outbox and the
/// inbox in maps, and checks versions at commit.
#[derive(Clone, Default)]
struct MapDatabase {
    data: Arc<Mutex<MapData>>,
}

#[derive(Default)]
struct MapData {
    documents: HashMap<(String, String), (u64, String)>,
    outbox: Vec<ExternalMessage>,
    inbox: Vec<(MessageId, String)>,
}

struct MapTransaction {
    db: MapDatabase,
    documents: Vec<(String, String, Option<u64>, u64, String)>,
    outbox: Vec<ExternalMessage>,
    inbox: Vec<(MessageId, String)>,
    connection: (),
}

impl Adapter for MapDatabase {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

impl Database for MapDatabase {
    fn describe(&self) -> String {
        "maps".into()
    }

    fn connection_type(&self) -> (std::any::TypeId, &'static str) {
        (std::any::TypeId::of::<()>(), "()")
    }

    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        let tx: Box<dyn DatabaseTransaction> = Box::new(MapTransaction {
            db: self.clone(),
            documents: Vec::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            connection: (),
        });
        Box::pin(async move { Ok(tx) })
    }

    fn aggregate_storage(&self) -> AggregateStorage {
        AggregateStorage::Documents
    }
}

impl DatabaseTransaction for MapTransaction {
    fn connection(&mut self) -> &mut (dyn std::any::Any + Send) {
        &mut self.connection
    }

    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.outbox.extend_from_slice(messages);
        Box::pin(async { Ok(()) })
    }

    fn record_inbox<'a>(
        &'a mut self,
        id: MessageId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let key = (id, handler.to_owned());
        let new = !self.db.data.lock().unwrap().inbox.contains(&key) && !self.inbox.contains(&key);
        if new {
            self.inbox.push(key);
        }
        Box::pin(async move { Ok(new) })
    }

    fn load_aggregate<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, Error>> {
        let found = self
            .db
            .data
            .lock()
            .unwrap()
            .documents
            .get(&(aggregate_type.name().to_owned(), key.to_owned()))
            .map(|(version, body)| Stored::Document {
                version: *version,
                body: body.clone(),
            });
        Box::pin(async move { Ok(found) })
    }

    fn aggregates<'a>(
        &'a mut self,
        aggregate_type: AggregateType,
    ) -> BoxFuture<'a, Result<Vec<Stored>, Error>> {
        let all = self
            .db
            .data
            .lock()
            .unwrap()
            .documents
            .iter()
            .filter(|((name, _), _)| name == aggregate_type.name())
            .map(|(_, (version, body))| Stored::Document {
                version: *version,
                body: body.clone(),
            })
            .collect();
        Box::pin(async move { Ok(all) })
    }

    fn save_aggregate<'a>(&'a mut self, save: Save<'a>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let current = self
                .db
                .data
                .lock()
                .unwrap()
                .documents
                .get(&(
                    save.aggregate_type().name().to_owned(),
                    save.key().to_owned(),
                ))
                .map(|d| d.0);
            match (save.expected(), current) {
                (None, Some(_)) => return Err(save.already_exists()),
                (Some(expected), current) if current != Some(expected) => {
                    return Err(save.conflict());
                }
                _ => {}
            }
            self.documents.push((
                save.aggregate_type().name().to_owned(),
                save.key().to_owned(),
                save.expected(),
                save.version(),
                save.document()?,
            ));
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let mut data = self.db.data.lock().unwrap();
            for (name, key, expected, _, _) in &self.documents {
                let current = data
                    .documents
                    .get(&(name.clone(), key.clone()))
                    .map(|d| d.0);
                if current != *expected {
                    return Err(Error::Repository(RepositoryError::Conflict {
                        aggregate: "a document",
                        id: format!("{name} {key}"),
                        expected: expected.unwrap_or_default(),
                    }));
                }
            }
            for (name, key, _, version, body) in self.documents {
                data.documents.insert((name, key), (version, body));
            }
            data.outbox.extend(self.outbox);
            data.inbox.extend(self.inbox);
            Ok(())
        })
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn on_a_database_written_outside_eda_core() {
    let db = MapDatabase::default();
    let bus = bus(db.clone());
    scenario(&bus, async |id: &str| {
        db.data
            .lock()
            .unwrap()
            .documents
            .get(&("Account".to_owned(), id.to_owned()))
            .map(|d| d.0)
    })
    .await;
    let events: Vec<_> = db
        .data
        .lock()
        .unwrap()
        .outbox
        .iter()
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(events, ["store_test.charged", "store_test.charge_rejected"]);
    let rejected: ChargeRejected =
        serde_json::from_slice(&db.data.lock().unwrap().outbox[1].payload).unwrap();
    assert_eq!(rejected.amount, 1000);
    let _: Charged = serde_json::from_slice(&db.data.lock().unwrap().outbox[0].payload).unwrap();
}

mod gauges {
    use super::*;

    /// Not serializable, and no repository: a document store cannot keep it.
    #[derive(Debug, Clone, Aggregate)]
    pub(crate) struct Gauge {
        #[aggregate(id)]
        pub(crate) id: u32,
        pub(crate) version: u64,
        pub(crate) events: Events,
    }

    #[derive(UnitOfWork)]
    pub(crate) struct Gauges {
        tx: UowTransaction,
        gauges: IdentityMap<Gauge>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "store_test.read_gauge")]
    pub(crate) struct ReadGauge {
        pub(crate) id: u32,
    }

    #[command_handler]
    async fn read_gauge(cmd: &ReadGauge, uow: &mut Gauges) -> Result<(), Error> {
        uow.gauges().read(&cmd.id).await?;
        Ok(())
    }
}

#[tokio::test]
async fn an_aggregate_a_document_store_cannot_keep_stops_the_build() {
    let file = TestSqlite::start().await;
    let build = |db: SqliteDatabase| {
        MessageBus::builder()
            .scope(concat!(module_path!(), "::gauges"))
            .adapter(db)
            .build()
    };
    let err = build(file.db.clone()).unwrap_err();
    assert!(
        matches!(
            &err.problems[..],
            [WiringProblem::MissingRepository {
                aggregate: "Gauge",
                documents: true,
                ..
            }]
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("serde::Serialize"), "{message}");
    assert!(message.contains("read_gauge"), "{message}");
    // The in-memory database keeps any aggregate, serializable or not.
    MessageBus::builder()
        .scope(concat!(module_path!(), "::gauges"))
        .adapter(InMemoryDatabase::new())
        .build()
        .unwrap();
    file.cleanup().await;
}

/// Two aggregate types named alike, both kept as documents.
mod namesakes {
    use super::*;

    pub(crate) mod shop {
        use super::*;

        #[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
        pub(crate) struct Item {
            #[aggregate(id)]
            pub(crate) id: String,
            pub(crate) version: u64,
            pub(crate) events: Events,
        }
    }

    pub(crate) mod warehouse {
        use super::*;

        #[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
        pub(crate) struct Item {
            #[aggregate(id)]
            pub(crate) id: String,
            pub(crate) version: u64,
            pub(crate) events: Events,
        }
    }

    #[derive(UnitOfWork)]
    pub(crate) struct Both {
        tx: UowTransaction,
        sold: IdentityMap<shop::Item>,
        stored: IdentityMap<warehouse::Item>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "store_test.count_items")]
    pub(crate) struct CountItems;

    #[command_handler]
    async fn count_items(_: &CountItems, uow: &mut Both) -> Result<(), Error> {
        uow.sold().read(&"a".into()).await?;
        uow.stored().read(&"a".into()).await?;
        Ok(())
    }
}

#[tokio::test]
async fn two_aggregates_of_one_name_in_a_document_store_stop_the_build() {
    let file = TestSqlite::start().await;
    let err = MessageBus::builder()
        .scope(concat!(module_path!(), "::namesakes"))
        .adapter(file.db.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            &err.problems[..],
            [WiringProblem::DuplicateAggregateName { name: "Item", types }] if types.len() == 2
        ),
        "{err}"
    );
    assert!(err.to_string().contains("#[aggregate(name"), "{err}");
    // The in-memory database keys values by their type: no clash.
    MessageBus::builder()
        .scope(concat!(module_path!(), "::namesakes"))
        .adapter(InMemoryDatabase::new())
        .build()
        .unwrap();
    file.cleanup().await;
}
