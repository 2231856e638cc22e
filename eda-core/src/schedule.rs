//! Scheduled messages: a command or an event a unit of work schedules for
//! later, kept by the database in the same transaction as the state change
//! until it is due, then delivered by the bus's scheduler
//! ([`MessageBus::deliver_due`](crate::MessageBus::deliver_due)).

use std::time::{Duration, SystemTime};

use crate::message::{Message, MessageId, Metadata, Timestamp};
use crate::outbox::ExternalMessage;
use crate::trace_context::TraceContext;

/// A message a unit of work scheduled, as a database keeps it until it is
/// delivered (see [`backend`](crate::backend)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledMessage {
    /// The message: its name, metadata (its id is what cancels it), JSON
    /// and trace.
    pub message: ExternalMessage,
    /// When it is due.
    pub due: Timestamp,
    /// How many times its delivery began: 0 until a scheduler first claims
    /// it (only then can it be cancelled).
    pub attempts: u32,
}

impl ScheduledMessage {
    /// The row of `message`, caused by the message being handled
    /// (`cause`), due at `due`.
    pub(crate) fn new<M: Message>(
        message: &M,
        cause: &Metadata,
        due: SystemTime,
        trace: TraceContext,
    ) -> Result<Self, serde_json::Error> {
        let payload = serde_json::to_vec(message)?;
        Ok(ScheduledMessage {
            message: ExternalMessage {
                name: M::NAME.to_owned(),
                metadata: cause.caused_by(),
                payload,
                trace,
            },
            due: Timestamp::from_system_time(due),
            attempts: 0,
        })
    }

    /// Its id: what a unit of work's `cancel_scheduled` takes (the derive
    /// of [`UnitOfWork`](macro@crate::UnitOfWork) writes it).
    pub fn id(&self) -> MessageId {
        self.message.metadata.message_id
    }
}

/// How the bus's scheduler delivers scheduled messages
/// ([`MessageBus::scheduler`](crate::MessageBus::scheduler)).
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// How often it looks for due messages (250 ms): a message is
    /// delivered at most this long after it is due, at light load.
    pub poll: Duration,
    /// How long a claimed message is left to the instance that claimed it
    /// (30 s): if that instance dies, another delivers it after this.
    pub lease: Duration,
    /// How many messages one round claims (256).
    pub batch: usize,
    /// How often a command whose handler fails is tried (its first
    /// delivery included), and how long the scheduler waits between
    /// tries; after the last, it is parked (kept, never tried again, and
    /// logged as an error). Default: 10 attempts, 1 s to 5 min.
    pub retry: crate::RetryPolicy,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            poll: Duration::from_millis(250),
            lease: Duration::from_secs(30),
            batch: 256,
            retry: crate::RetryPolicy::new(10)
                .backoff(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}
