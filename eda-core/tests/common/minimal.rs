//! A database of the user's that does only what a database must: no
//! aggregate store, no scheduled messages, no journal. What the default
//! methods of `eda_core::backend` give such a database is tested with it.

use eda_core::backend::{BoxFuture, Database, DatabaseTransaction};
use eda_core::{Adapter, Error, ExternalMessage, MessageId};

/// The database (it keeps nothing).
#[derive(Clone)]
pub(crate) struct Minimal;

struct MinimalTransaction;

impl Adapter for Minimal {
    fn as_database(&self) -> Option<&dyn Database> {
        Some(self)
    }
}

impl Database for Minimal {
    fn describe(&self) -> String {
        "minimal".into()
    }
    fn connection_type(&self) -> (std::any::TypeId, &'static str) {
        (std::any::TypeId::of::<()>(), "()")
    }
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn DatabaseTransaction + '_>, Error>> {
        Box::pin(async { Ok(Box::new(MinimalTransaction) as Box<dyn DatabaseTransaction>) })
    }
}

impl DatabaseTransaction for MinimalTransaction {
    fn connection(&mut self) -> &mut (dyn std::any::Any + Send) {
        self
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
        Box::pin(async { Ok(()) })
    }
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}
