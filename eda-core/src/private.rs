//! What the macros' generated code names, and nothing else. Not a public
//! API: it changes without notice.
#![allow(missing_docs)]

pub use inventory;

pub use crate::bus::MessageRegistration;
pub use crate::context::Context;
pub use crate::dependency::{Adapters, DepSlot, Requirements};
pub use crate::handler::{
    ByRef, ByValue, CommandHandlerError, CommandHandlerResult, Dep, EventHandlerResult,
    TakeByValue, Uow, by_ref, by_value, command_handler, dep, event_handler, uow,
};
pub use crate::registry::{CommandHandlerRegistration, EventHandlerRegistration};
pub use crate::repository::{FinderVTableOf, RepositoryRegistration, RepositoryVTableOf};

use crate::MessageBus;
use crate::domain_error::BoxError;
use crate::error::IncomingError;
use crate::message::{Command, Event, Metadata};

pub use crate::future::BoxFuture;

/// Decodes and runs an incoming command.
pub fn dispatch_command<'a, C: Command>(
    bus: &'a MessageBus,
    metadata: Metadata,
    payload: &'a [u8],
) -> BoxFuture<'a, Result<(), IncomingError>> {
    Box::pin(crate::bus::dispatch_command::<C>(bus, metadata, payload))
}

/// Decodes and runs an incoming event.
pub fn dispatch_event<'a, E: Event>(
    bus: &'a MessageBus,
    metadata: Metadata,
    payload: &'a [u8],
) -> BoxFuture<'a, Result<(), IncomingError>> {
    Box::pin(crate::bus::dispatch_event::<E>(bus, metadata, payload))
}

pub type DefaultError = BoxError;

pub use crate::aggregate::{Aggregate, Events};
pub use crate::aggregate::{Codec, Probe, ViaSerde, WithoutSerde};
pub use crate::dependency::Dependency;
pub use crate::error::Error;
pub use crate::message::{Message, MessageId, MessageKind};
pub use crate::repository::{Find, FinderVTable, Repository, RepositoryVTable};
pub use crate::uow::{Begun, UowField, UowTransaction};
pub use crate::{Command as CommandTrait, Event as EventTrait, UnitOfWork as UnitOfWorkTrait};

pub use crate::process::{OnMissing, ProcessKey, ProcessState as ProcessStateTrait};
