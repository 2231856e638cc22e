//! Messages from outside the service (a broker): whether the service takes
//! them, and [`MessageBus::handle_incoming`], which decodes each by name and
//! runs it as a command or an event.

use super::{MessageBus, Report};
use crate::error::{CommandError, Error, IncomingError};
use crate::future::BoxFuture;
use crate::message::{Command, Envelope, Event, Message, MessageKind, Metadata};
use crate::registry::MessageInfo;
use crate::topology::{ordering_slot, slot_routing_key};

/// How a message of one type is run when it arrives from outside.
pub(crate) type DispatchFn =
    for<'a> fn(&'a MessageBus, Metadata, &'a [u8]) -> BoxFuture<'a, Result<(), IncomingError>>;

/// A message type, as the `Command` and `Event` derives register it: what
/// it is, and how it is run when it arrives from outside (decoded by name).
#[doc(hidden)]
pub struct MessageRegistration {
    pub info: MessageInfo,
    pub dispatch: DispatchFn,
}

impl MessageRegistration {
    pub const fn new<M: Message>(
        kind: MessageKind,
        external: bool,
        type_name: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
        dispatch: DispatchFn,
    ) -> Self {
        MessageRegistration {
            info: MessageInfo::new::<M>(kind, external, type_name, module, file, line),
            dispatch,
        }
    }
}

inventory::collect!(MessageRegistration);

/// Where a broker publishes a message whose type declares an ordering
/// key: to its key's slot.
pub(crate) struct KeyedRoute {
    /// The key (RabbitMQ carries it in `x-eda-key`).
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) key: String,
    /// `<name>.k<slot>`.
    pub(crate) routing_key: String,
}

/// The route of a message by its name and JSON: `None` (its name is its
/// routing key) for a type not linked into this binary, not ordered, or
/// whose body does not decode.
pub(crate) fn keyed_route(name: &str, payload: &[u8]) -> Option<KeyedRoute> {
    let key = ordering_key(name, payload)?;
    let routing_key = slot_routing_key(name, ordering_slot(&key));
    Some(KeyedRoute { key, routing_key })
}

/// The ordering key of a message by its name and JSON.
fn ordering_key(name: &str, payload: &[u8]) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static KEYS: OnceLock<HashMap<&'static str, crate::message::KeyFn>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        inventory::iter::<MessageRegistration>
            .into_iter()
            .filter_map(|r| Some((r.info.name, r.info.ordering_key?)))
            .collect()
    });
    keys.get(name).and_then(|key| key(payload))
}

impl MessageBus {
    /// Handles a message that arrived from outside the service (a broker):
    /// decodes it by name and handles it as a command or an event.
    ///
    /// Errors say why it was not handled: an unknown name or a malformed body
    /// (the consumer dead-letters those at once), or a handler error (the
    /// consumer retries).
    pub async fn handle_incoming(
        &self,
        name: &str,
        metadata: Metadata,
        payload: &[u8],
    ) -> Result<(), IncomingError> {
        let Some(registration) = self.inner.messages.get(name) else {
            return Err(IncomingError::UnknownMessage {
                name: name.to_owned(),
            });
        };
        (registration.dispatch)(self, metadata, payload).await
    }

    /// A message that came from the broker: whether this service takes it
    /// (see [`Topology`](crate::Topology)). `Ok(false)`: an event this
    /// service published itself, handled in-process by the instance that
    /// committed it: acknowledge it, do not handle it again.
    pub(crate) fn admit(
        &self,
        name: &str,
        published_by: Option<&str>,
        service: &str,
    ) -> Result<bool, IncomingError> {
        let Some(m) = self.inner.messages.get(name) else {
            return Err(IncomingError::UnknownMessage {
                name: name.to_owned(),
            });
        };
        let m = &m.info;
        if !self.consumes(name) {
            return Err(IncomingError::NotConsumed {
                name: m.name,
                why: self.why_not_consumed(name),
            });
        }
        Ok(!(m.kind == crate::message::MessageKind::Event && published_by == Some(service)))
    }
}

/// Runs an incoming command (see [`MessageBus::handle_incoming`]).
pub(crate) async fn dispatch_command<C: Command>(
    bus: &MessageBus,
    metadata: Metadata,
    payload: &[u8],
) -> Result<(), IncomingError> {
    let command: C =
        serde_json::from_slice(payload).map_err(|source| IncomingError::Malformed {
            name: C::NAME,
            source,
        })?;
    let envelope = Envelope::with_metadata(command, metadata);
    let mut report = Report::default();
    match bus.run_command(&envelope, &mut report, true).await {
        Ok(_) | Err(CommandError::Bus(Error::AlreadyHandled(_))) => Ok(()),
        Err(CommandError::Handler(e)) => Err(IncomingError::Handler {
            name: C::NAME,
            error: e.to_string(),
            conflict: false,
        }),
        // A version conflict that outlived the command's retries.
        Err(CommandError::Bus(e)) if e.is_conflict() => Err(IncomingError::Handler {
            name: C::NAME,
            error: e.to_string(),
            conflict: true,
        }),
        Err(CommandError::Bus(e)) => Err(IncomingError::Framework {
            name: C::NAME,
            source: Box::new(e),
        }),
    }
}

/// Runs an incoming event (see [`MessageBus::handle_incoming`]).
pub(crate) async fn dispatch_event<E: Event>(
    bus: &MessageBus,
    metadata: Metadata,
    payload: &[u8],
) -> Result<(), IncomingError> {
    let event: E = serde_json::from_slice(payload).map_err(|source| IncomingError::Malformed {
        name: E::NAME,
        source,
    })?;
    let report = bus
        .run_event(Envelope::with_metadata(event, metadata), true)
        .await;
    match report.failures.first() {
        None => Ok(()),
        Some(first) => Err(IncomingError::EventHandlers {
            name: E::NAME,
            failed: report.failures.len(),
            first: first.to_string(),
        }),
    }
}
