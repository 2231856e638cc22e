//! The outbox: external events written in the same transaction as the state
//! change, and published to other services after the commit.

use crate::error::BoxError;
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
