//! Rule 6 of DESIGN.md: `build()` rejects a command with no handler, two
//! handlers for one command, and a dependency no adapter provides, naming the
//! source locations, all in one error. And the path a database adapter
//! takes: repositories and finders registered with `#[repository]` for the
//! database's connection type.
#![allow(missing_docs)]

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eda_core::backend::{Database, DatabaseTransaction};
use eda_core::prelude::*;
use eda_core::{Error, ExternalMessage, Find, MessageId, WiringProblem};
use serde::{Deserialize, Serialize};

pub mod unhandled {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.nobody_handles_me")]
    pub struct NobodyHandlesMe {}
    pub const LINE: u32 = line!() - 1;
}

pub mod twice {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.handled_twice")]
    pub struct HandledTwice {}

    pub mod first {
        use super::*;
        #[command_handler]
        async fn first(_: HandledTwice) -> Result<(), BoxError> {
            Ok(())
        }
        pub const LINE: u32 = line!() - 3;
    }

    pub mod second {
        use super::*;
        #[command_handler]
        async fn second(_: HandledTwice) -> Result<(), BoxError> {
            Ok(())
        }
        pub const LINE: u32 = line!() - 3;
    }
}

pub mod needs {
    use super::*;

    pub struct Mailer;
    impl Adapter for Mailer {}

    #[derive(Debug, Clone, Aggregate)]
    pub struct Gadget {
        #[aggregate(id)]
        pub id: u32,
        pub version: u64,
        pub events: Events,
    }

    #[derive(UnitOfWork)]
    pub struct GadgetUow {
        tx: UowTransaction,
        gadgets: IdentityMap<Gadget>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.mail")]
    pub struct Mail {}

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    #[event(name = "wiring.gadget_seen")]
    pub struct GadgetSeen {}

    #[command_handler]
    async fn mail(_: Mail, _mailer: &Mailer) -> Result<(), BoxError> {
        Ok(())
    }
    pub const MAIL_LINE: u32 = line!() - 3;

    #[event_handler]
    async fn see(_: &GadgetSeen, uow: &mut GadgetUow) -> Result<(), Error> {
        uow.gadgets().get(&1).await?;
        Ok(())
    }
}

fn problems(scope: &str) -> Vec<WiringProblem> {
    MessageBus::builder()
        .scope(scope)
        .build()
        .expect_err("miswired")
        .problems
}

#[test]
fn a_command_without_a_handler_is_rejected_with_its_location() {
    let problems = problems("wiring::unhandled");
    assert_eq!(problems.len(), 1, "{problems:?}");
    match &problems[0] {
        WiringProblem::CommandWithoutHandler {
            command,
            type_name,
            location,
        } => {
            assert_eq!(*command, "wiring.nobody_handles_me");
            assert_eq!(*type_name, "NobodyHandlesMe");
            assert!(location.file.ends_with("wiring.rs"), "{location}");
            assert_eq!(location.line, unhandled::LINE);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn two_handlers_for_one_command_are_rejected_naming_both() {
    let problems = problems("wiring::twice");
    assert_eq!(problems.len(), 1, "{problems:?}");
    match &problems[0] {
        WiringProblem::DuplicateCommandHandler { command, handlers } => {
            assert_eq!(*command, "wiring.handled_twice");
            let mut names: Vec<_> = handlers
                .iter()
                .map(|h| (h.name, h.module, h.location.line))
                .collect();
            names.sort();
            assert_eq!(
                names,
                vec![
                    ("first", "wiring::twice::first", twice::first::LINE),
                    ("second", "wiring::twice::second", twice::second::LINE)
                ]
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn missing_dependencies_are_rejected_naming_the_handler() {
    let problems = problems("wiring::needs");
    assert!(
        problems.iter().any(|p| matches!(p,
            WiringProblem::MissingAdapter { handler, adapter }
                if handler.name == "mail" && adapter.ends_with("needs::Mailer") && handler.location.line == needs::MAIL_LINE)),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| matches!(p,
            WiringProblem::MissingDatabase { handler, unit_of_work }
                if handler.name == "see" && *unit_of_work == "GadgetUow")),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 2, "{problems:#?}");
}

#[test]
fn every_problem_is_reported_at_once_one_per_line() {
    let err = MessageBus::builder()
        .scope("wiring::unhandled")
        .scope("wiring::twice")
        .scope("wiring::needs")
        .build()
        .unwrap_err();
    assert_eq!(err.problems.len(), 4, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("the message bus is miswired (4 problems):"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 5, "{text}");
    for needle in [
        "command `wiring.nobody_handles_me` (NobodyHandlesMe, ",
        "command `wiring.handled_twice` has 2 handlers",
        "handler `wiring::needs::mail` (",
        "needs adapter `wiring::needs::Mailer`",
        "takes unit of work `GadgetUow`, which needs a database adapter",
        "wiring.rs:",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn providing_the_dependencies_fixes_the_wiring() {
    let bus = MessageBus::builder()
        .scope("wiring::needs")
        .adapter(needs::Mailer)
        .adapter(InMemoryDatabase::new())
        .build();
    assert!(bus.is_ok(), "{:?}", bus.err());
}

#[test]
fn a_command_sent_elsewhere_can_be_allowed_unhandled() {
    let bus = MessageBus::builder()
        .scope("wiring::unhandled")
        .allow_unhandled::<unhandled::NobodyHandlesMe>()
        .build();
    assert!(bus.is_ok());
}

#[test]
fn two_databases_are_rejected() {
    let err = MessageBus::builder()
        .scope("wiring::unhandled")
        .allow_unhandled::<unhandled::NobodyHandlesMe>()
        .adapter(InMemoryDatabase::new())
        .adapter(FakeDatabase::default())
        .build()
        .unwrap_err();
    assert_eq!(
        err.problems,
        vec![WiringProblem::DuplicateAdapter {
            adapter: "database"
        }]
    );
}

// A database adapter of our own: what the Postgres and SQLite adapters do,
// in memory. Its connection autocommits; enough to check that the unit of
// work reaches the repositories registered for its connection type.

#[derive(Default)]
pub struct Store {
    widgets: HashMap<String, (u64, u32)>,
    outbox: Vec<ExternalMessage>,
    inbox: Vec<(MessageId, String)>,
    commits: u32,
    rollbacks: u32,
}

pub struct FakeConnection(Arc<Mutex<Store>>);

#[derive(Default, Clone)]
pub struct FakeDatabase(Arc<Mutex<Store>>);

impl Adapter for FakeDatabase {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

impl Database for FakeDatabase {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn connection_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<FakeConnection>(), "FakeConnection")
    }
    fn begin(
        &self,
    ) -> eda_core::__private::BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        let conn = FakeConnection(self.0.clone());
        Box::pin(async move { Ok(Box::new(conn) as Box<dyn DatabaseTransaction>) })
    }
}

impl DatabaseTransaction for FakeConnection {
    fn connection(&mut self) -> &mut (dyn Any + Send) {
        self
    }
    fn write_outbox<'a>(
        &'a mut self,
        messages: &'a [ExternalMessage],
    ) -> eda_core::__private::BoxFuture<'a, Result<(), Error>> {
        self.0.lock().unwrap().outbox.extend_from_slice(messages);
        Box::pin(async { Ok(()) })
    }
    fn record_inbox<'a>(
        &'a mut self,
        id: MessageId,
        handler: &'a str,
    ) -> eda_core::__private::BoxFuture<'a, Result<bool, Error>> {
        let mut store = self.0.lock().unwrap();
        let key = (id, handler.to_string());
        let new = !store.inbox.contains(&key);
        if new {
            store.inbox.push(key);
        }
        Box::pin(async move { Ok(new) })
    }
    fn commit(self: Box<Self>) -> eda_core::__private::BoxFuture<'static, Result<(), Error>> {
        self.0.lock().unwrap().commits += 1;
        Box::pin(async { Ok(()) })
    }
    fn rollback(self: Box<Self>) -> eda_core::__private::BoxFuture<'static, Result<(), Error>> {
        self.0.lock().unwrap().rollbacks += 1;
        Box::pin(async { Ok(()) })
    }
}

pub mod widgets {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Aggregate)]
    pub struct Widget {
        #[aggregate(id)]
        pub name: String,
        pub size: u32,
        pub version: u64,
        pub events: Events,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    #[event(name = "wiring.widget_grown", external)]
    pub struct WidgetGrown {
        pub name: String,
        pub size: u32,
    }

    pub struct BySize(pub u32);
    impl Finder<Widget> for BySize {
        fn matches(&self, w: &Widget) -> bool {
            w.size == self.0
        }
    }

    /// A finder no repository of the fake database implements.
    pub struct Smallest;
    impl Finder<Widget> for Smallest {
        fn matches(&self, _: &Widget) -> bool {
            true
        }
    }

    pub struct FakeWidgets;

    fn widget(name: &str, (version, size): (u64, u32)) -> Widget {
        Widget {
            name: name.into(),
            size,
            version,
            events: Events::new(),
        }
    }

    #[repository]
    impl Repository for FakeWidgets {
        type Aggregate = Widget;
        type Connection = FakeConnection;

        async fn get(
            conn: &mut FakeConnection,
            name: &String,
        ) -> Result<Option<Widget>, RepositoryError> {
            let store = conn.0.lock().unwrap();
            Ok(store.widgets.get(name).map(|row| widget(name, *row)))
        }

        async fn add(conn: &mut FakeConnection, w: &Widget) -> Result<(), RepositoryError> {
            let mut store = conn.0.lock().unwrap();
            if store.widgets.contains_key(&w.name) {
                return Err(RepositoryError::AlreadyExists {
                    aggregate: "Widget",
                    id: w.name.clone(),
                });
            }
            store.widgets.insert(w.name.clone(), (w.version, w.size));
            Ok(())
        }

        async fn update(
            conn: &mut FakeConnection,
            w: &Widget,
            expected: u64,
        ) -> Result<bool, RepositoryError> {
            let mut store = conn.0.lock().unwrap();
            match store.widgets.get_mut(&w.name) {
                Some(row) if row.0 == expected => {
                    *row = (w.version, w.size);
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
    }

    #[repository]
    impl Find<BySize> for FakeWidgets {
        async fn find(
            conn: &mut FakeConnection,
            by: &BySize,
        ) -> Result<Option<Widget>, RepositoryError> {
            let store = conn.0.lock().unwrap();
            Ok(store
                .widgets
                .iter()
                .find(|(_, row)| row.1 == by.0)
                .map(|(name, row)| widget(name, *row)))
        }
    }

    #[derive(UnitOfWork)]
    pub struct WidgetUow {
        #[uow(transaction)]
        tx: UowTransaction,
        pub widgets: IdentityMap<Widget>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.make_widget")]
    pub struct MakeWidget {
        pub name: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.grow_widget", output = u32)]
    pub struct GrowWidget {
        pub size: u32,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.find_smallest")]
    pub struct FindSmallest {}

    #[derive(Debug, Clone, Serialize, Deserialize, Command)]
    #[command(name = "wiring.grow_after_someone_else", output = u32)]
    pub struct GrowAfterSomeoneElse {
        pub name: String,
    }

    #[command_handler]
    async fn make(cmd: MakeWidget, uow: &mut WidgetUow) -> Result<(), BoxError> {
        uow.widgets().add(widget(&cmd.name, (0, 1)))?;
        Ok(uow.commit().await?)
    }

    #[command_handler]
    async fn grow(cmd: GrowWidget, uow: &mut WidgetUow) -> Result<u32, BoxError> {
        let w = uow
            .widgets()
            .find(&BySize(cmd.size))
            .await?
            .ok_or("no widget of that size")?;
        w.size += 1;
        let size = w.size;
        w.events.raise(WidgetGrown {
            name: w.name.clone(),
            size,
        });
        uow.commit().await?;
        Ok(size)
    }

    #[command_handler]
    async fn smallest(_: FindSmallest, uow: &mut WidgetUow) -> Result<(), BoxError> {
        uow.widgets().find(&Smallest).await?;
        Ok(())
    }

    /// Loads a widget, lets "someone else" save it meanwhile, then commits.
    #[command_handler]
    async fn grow_late(
        cmd: GrowAfterSomeoneElse,
        uow: &mut WidgetUow,
        db: &FakeDatabase,
    ) -> Result<u32, Error> {
        let w = uow.widgets().get(&cmd.name).await?.expect("exists");
        w.size += 10;
        let size = w.size;
        db.0.lock().unwrap().widgets.get_mut(&cmd.name).unwrap().0 += 1;
        uow.commit().await?;
        Ok(size)
    }
}

fn widget_bus(db: &FakeDatabase) -> MessageBus {
    MessageBus::builder()
        .scope("wiring::widgets")
        .adapter(db.clone())
        .command_retry(eda_core::RetryPolicy::never())
        .build()
        .expect("wiring")
}

#[tokio::test]
async fn a_database_adapter_reaches_the_repositories_of_its_connection_type() {
    let db = FakeDatabase::default();
    let bus = widget_bus(&db);
    bus.handle(widgets::MakeWidget { name: "w".into() })
        .await
        .unwrap();
    assert_eq!(
        bus.handle(widgets::GrowWidget { size: 1 }).await.unwrap(),
        2
    );

    let store = db.0.lock().unwrap();
    assert_eq!(store.widgets["w"], (1, 2), "saved with version 1");
    assert_eq!(store.outbox.len(), 1);
    assert_eq!(store.outbox[0].name, "wiring.widget_grown");
    assert_eq!(store.commits, 2);
}

#[tokio::test]
async fn a_stale_update_on_a_database_adapter_is_a_conflict() {
    let db = FakeDatabase::default();
    let bus = widget_bus(&db);
    bus.handle(widgets::MakeWidget { name: "w".into() })
        .await
        .unwrap();
    let err = bus
        .handle(widgets::GrowAfterSomeoneElse { name: "w".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Bus(ref e) if e.is_conflict()),
        "{err:?}"
    );
    let store = db.0.lock().unwrap();
    assert_eq!(store.widgets["w"].1, 1, "the stale write was refused");
    assert_eq!(store.rollbacks, 1);
}

#[tokio::test]
async fn a_finder_without_an_implementation_is_a_clear_error() {
    let db = FakeDatabase::default();
    let bus = widget_bus(&db);
    let err = bus.handle(widgets::FindSmallest {}).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no finder `wiring::widgets::Smallest` for Widget on FakeConnection"),
        "{text}"
    );
}

#[test]
fn an_aggregate_without_a_repository_for_the_database_is_rejected() {
    let err = MessageBus::builder()
        .scope("wiring::needs")
        .adapter(needs::Mailer)
        .adapter(FakeDatabase::default())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err.problems[..], [WiringProblem::MissingRepository { handler, aggregate: "Gadget", backend: "FakeConnection", .. }] if handler.name == "see"),
        "{err}"
    );
}
