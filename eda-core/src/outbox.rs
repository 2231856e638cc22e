//! The outbox: external events written in the same transaction as the state
//! change, and published to other services after the commit.

use crate::domain_error::BoxError;
use crate::message::{AnyEvent, Metadata};

/// An event on its way to other services: what an outbox row holds and what
/// the external bus publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalMessage {
    /// The message name (the routing key).
    pub name: String,
    /// Id, correlation, causation, timestamp.
    pub metadata: Metadata,
    /// The message in JSON.
    pub payload: Vec<u8>,
}

/// A row a unit of work writes at commit: an event to publish (the relay
/// sends it to other services), an event to dispatch in this process (the
/// dispatch journal: kept until its handlers here have run, and run again by
/// [`MessageBus::recover_undispatched`](crate::MessageBus::recover_undispatched)
/// if the process died first), or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxWrite {
    /// The event, as it is stored.
    pub message: ExternalMessage,
    /// For the relay.
    pub publish: bool,
    /// For this process's handlers.
    pub dispatch: bool,
}

impl ExternalMessage {
    /// The outbox form of a committed event.
    pub fn from_event(event: &dyn AnyEvent) -> Result<Self, BoxError> {
        Ok(ExternalMessage {
            name: event.name().to_owned(),
            metadata: *event.metadata(),
            payload: event.to_json()?,
        })
    }
}
