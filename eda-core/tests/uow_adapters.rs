//! A unit of work's `Arc<Adapter>` fields: resolved once, when the bus is
//! built, and the very adapter the bus was given, in a handler's unit of
//! work and in one begun outside any handler.

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eda_core::prelude::*;
use eda_core::{IdentityMap, WiringProblem};
use serde::{Deserialize, Serialize};

/// An adapter that counts what the handlers did with it.
#[derive(Default)]
pub struct Mailer {
    sent: AtomicUsize,
}

impl Adapter for Mailer {}

#[derive(Debug, Clone, PartialEq, Aggregate)]
pub struct Account {
    #[aggregate(id)]
    pub id: String,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct MailUow {
    #[uow(transaction)]
    tx: UowTransaction,
    accounts: IdentityMap<Account>,
    mailer: Arc<Mailer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.uow_adapters.notify", output = usize)]
pub struct Notify;

#[command_handler]
async fn notify(_: Notify, uow: &mut MailUow) -> Result<usize, BoxError> {
    let sent = uow.mailer().sent.fetch_add(1, Ordering::Relaxed) + 1;
    uow.accounts().add(Account {
        id: format!("account-{sent}"),
        version: 0,
        events: Events::new(),
    })?;
    uow.commit().await?;
    Ok(sent)
}

fn bus(mailer: bool) -> Result<MessageBus, eda_core::WiringError> {
    let mut builder = MessageBus::builder()
        .scope(module_path!())
        .adapter(InMemoryDatabase::new());
    if mailer {
        builder = builder.adapter(Mailer::default());
    }
    builder.build()
}

#[tokio::test]
async fn a_unit_of_work_s_adapter_is_the_one_the_bus_was_given() {
    let bus = bus(true).unwrap();
    assert_eq!(bus.handle(Notify).await.unwrap(), 1);
    assert_eq!(bus.handle(Notify).await.unwrap(), 2);
    let mailer = bus.adapter::<Mailer>().unwrap();
    assert_eq!(mailer.sent.load(Ordering::Relaxed), 2);

    // Outside a handler, the same adapter.
    let mut uow = bus.begin::<MailUow>().await.unwrap();
    assert!(std::ptr::eq(uow.mailer(), mailer));
    assert!(
        uow.accounts()
            .get(&"account-2".to_owned())
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_unit_of_work_s_adapter_missing_is_a_wiring_error() {
    let err = bus(false).unwrap_err();
    assert!(
        err.problems.iter().any(|p| matches!(
            p,
            WiringProblem::MissingAdapter { adapter, .. } if adapter.ends_with("Mailer")
        )),
        "{err}"
    );
}
