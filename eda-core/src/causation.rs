//! What a handler causes: the commands it sends while handling a message,
//! once only however often that message is delivered (rule 11 of
//! DESIGN.md).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bus::{MessageBus, Report};
use crate::context::Context;
use crate::dependency::{DepSlot, Dependency, Requirements};
use crate::error::{CommandError, Error};
use crate::message::{Command, Envelope, MessageId, Metadata, Timestamp};

/// The message a handler is handling, as the cause of the commands it
/// sends: take `&Causation` as a handler parameter and
/// [`send`](Self::send) them through it.
///
/// A command sent this way continues the conversation (its correlation id
/// is the cause's, its causation id the cause's id) and has an id derived
/// from the cause, the handler's stable id and its place among the
/// handler's sends ([`MessageId::caused`]). When the cause is delivered
/// again (a broker's redelivery, the dispatch journal's recovery), the
/// handler sends the same commands with the same ids, and each command's
/// handler, whose unit of work records its message in the inbox, knows it
/// handled it already: the command is applied once.
///
/// ```standalone_crate
/// use eda_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "shop.reserve")]
/// pub struct Reserve { pub sku: String }
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// #[event(name = "shop.order_placed", external)]
/// pub struct OrderPlaced { pub skus: Vec<String> }
///
/// #[command_handler]
/// async fn reserve(cmd: Reserve) -> Result<(), BoxError> { Ok(()) }
///
/// #[event_handler]
/// async fn reserve_each(event: &OrderPlaced, cause: &Causation) -> Result<(), CommandError<BoxError>> {
///     for sku in &event.skus {
///         cause.send(Reserve { sku: sku.clone() }).await?;
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The ids depend on the order of the sends: a handler that sends
/// different commands, or in another order, when it handles the same
/// message again (because it reads the time, or state that changed) gets
/// new ids for them.
pub struct Causation {
    bus: MessageBus,
    metadata: Metadata,
    handler: &'static str,
    incoming: bool,
    sent: AtomicU32,
}

impl fmt::Debug for Causation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Causation")
            .field("cause", &self.metadata.message_id)
            .field("handler", &self.handler)
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .finish()
    }
}

impl Causation {
    /// The metadata of the message being handled (the cause).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The stable id of the handler that is handling it.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Handles `command` as caused by the message being handled: runs its
    /// handler and the events it raises, before this returns.
    ///
    /// `Ok(None)`: this command (same cause, handler and place among its
    /// sends) was handled before, when the cause was first delivered, and
    /// its output is not kept. Failures of the handlers of the events it
    /// raised are logged and counted, not returned.
    pub async fn send<C: Command>(
        &self,
        command: C,
    ) -> Result<Option<C::Output>, CommandError<C::Error>> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let metadata = Metadata {
            message_id: MessageId::caused(self.metadata.message_id, self.handler, n),
            correlation_id: self.metadata.correlation_id,
            causation_id: Some(self.metadata.message_id),
            timestamp: Timestamp::now(),
        };
        let envelope = Envelope::with_metadata(command, metadata);
        let mut report = Report::default();
        // A cause that can come again (from a broker, or the journal's
        // recovery) has its commands recorded in their handlers' inboxes.
        match self
            .bus
            .run_command(&envelope, &mut report, self.incoming)
            .await
        {
            Ok(output) => Ok(Some(output)),
            Err(CommandError::Bus(Error::AlreadyHandled(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[diagnostic::do_not_recommend]
impl Dependency for Causation {
    fn __sealed(_: crate::dependency::sealed::Token) {}
    fn __resolve<'c>(
        _: &'c Option<std::sync::Arc<Causation>>,
        ctx: &'c Context<'_>,
    ) -> Result<DepSlot<'c, Causation>, Error> {
        Ok(DepSlot::Made(Causation {
            bus: ctx.bus().clone(),
            metadata: *ctx.metadata,
            handler: ctx.handler,
            incoming: ctx.incoming,
            sent: AtomicU32::new(0),
        }))
    }
    fn __require(_: &mut Requirements) {}
}
