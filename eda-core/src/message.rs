//! Messages: commands and events, the metadata they travel with, and the
//! type-erased form events take between an aggregate and their handlers.

use std::any::Any;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain_error::{BoxError, DomainError};

/// What commands and events have in common: a stable name and a serde form.
///
/// Derive it through [`Command`](macro@crate::Command) or
/// [`Event`](macro@crate::Event), which also register the message so that it
/// can be decoded by name when it arrives from a broker.
pub trait Message: fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The message's stable name, e.g. `allocation.allocated`. It is the
    /// routing key on the broker and the `type` of a serialised message, so it
    /// must not change when the Rust type is renamed or moved.
    const NAME: &'static str;

    /// Whether messages of this type are handled in order per
    /// [key](Self::ordering_key) (`key = field` in the derive).
    const ORDERED: bool = false;

    /// The message's ordering key (the derive's `key = field`: that
    /// field, as a string): messages with the same key are handled one
    /// after another, in the order they were published, by every service
    /// that consumes them (on RabbitMQ, through the service's ordered
    /// partitions: see the `rabbitmq` adapter).
    fn ordering_key(&self) -> Option<String> {
        None
    }
}

/// Reads the ordering key of a message from its JSON.
pub(crate) type KeyFn = fn(&[u8]) -> Option<String>;

/// The ordering key of a message of type `M` from its JSON, if it is
/// ordered and decodes.
pub(crate) fn ordering_key_of<M: Message>(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<M>(payload).ok()?.ordering_key()
}

/// A request to change the state of the service. It has exactly one handler,
/// whose result is returned to the caller of
/// [`MessageBus::handle`](crate::MessageBus::handle).
///
/// ```
/// use eda_core::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "allocation.allocate", output = Option<String>)]
/// pub struct Allocate { pub orderid: String, pub sku: String, pub qty: u32 }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not a command",
    note = "derive it: `#[derive(Debug, Clone, Serialize, Deserialize, eda_core::Command)]`"
)]
pub trait Command: Message {
    /// What the command's handler returns on success.
    type Output: Send + 'static;
    /// The domain error the command's handler reports; [`BoxError`] unless
    /// the derive says `error = MyError`.
    type Error: DomainError;
}

/// Something that happened. It has zero or more handlers, each run in its own
/// unit of work. An external event is also written to the outbox and
/// published to the broker, for other services.
///
/// ```
/// use eda_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// #[event(name = "allocation.allocated", external)]
/// pub struct Allocated { pub orderid: String, pub batchref: String }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "derive it: `#[derive(Debug, Clone, Serialize, Deserialize, eda_core::Event)]`"
)]
pub trait Event: Message + Clone {
    /// Whether the event is published to other services through the outbox.
    const EXTERNAL: bool;
}

/// The unique id of one message (UUID v7: ordered by creation time).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new id.
    pub fn new() -> Self {
        Self::at(Timestamp::now())
    }

    /// A new id for a message created at `timestamp`: UUID v7, with the
    /// timestamp's milliseconds and 74 random bits. The bits come from a
    /// thread-local generator seeded from the OS: `Uuid::now_v7` asks the OS
    /// for randomness on every id, which costs more than the rest of the
    /// dispatch of a message.
    #[inline]
    pub fn at(timestamp: Timestamp) -> Self {
        // The layout of RFC 9562, section 5.7, built in one integer (what
        // `uuid::Builder` does byte by byte, at six times the cost):
        // unix_ts_ms (48 bits) | ver = 7 (4) | rand_a (12) | var = 0b10 (2) |
        // rand_b (62).
        let random = fastrand::u128(..);
        let millis = u128::from(timestamp.as_millis() & 0xFFFF_FFFF_FFFF);
        let rand_a = (random >> 64) & 0xFFF;
        let rand_b = random & 0x3FFF_FFFF_FFFF_FFFF;
        MessageId(Uuid::from_u128(
            millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b,
        ))
    }

    /// The id of the `n`th message (from 0) that `handler` (its stable id)
    /// caused while handling the message `cause`: the same whenever the
    /// handler handles `cause` again, so that a redelivery causes nothing
    /// new (the inbox of the caused message's handler knows the id). A
    /// UUID version 8 whose 122 free bits are the 128-bit FNV-1a hash of
    /// the three, a function that stays the same across builds.
    pub fn caused(cause: MessageId, handler: &str, n: u32) -> Self {
        const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
        const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
        let mut hash = OFFSET;
        let n = n.to_le_bytes();
        let bytes = cause
            .0
            .as_bytes()
            .iter()
            .chain(handler.as_bytes())
            // A byte that no UTF-8 string holds: "ab" + 1 and "a" + "b1"
            // hash apart.
            .chain(&[0xff])
            .chain(&n);
        for byte in bytes {
            hash ^= u128::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
        // Version 8 (bits 48..52 from the top), RFC 9562 variant (0b10).
        let hash = (hash & !(0xF << 76) & !(0b11 << 62)) | (0x8 << 76) | (0b10 << 62);
        MessageId(Uuid::from_u128(hash))
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_unique_and_carry_their_time() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| MessageId::at(t)).collect();
        assert_eq!(ids.len(), 10_000);
        let id = MessageId::at(t).as_uuid();
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_700_000_000_123
        );
    }

    #[test]
    fn ids_have_the_rfc_variant_and_the_random_bits_vary() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        let ids: Vec<Uuid> = (0..64).map(|_| MessageId::at(t).as_uuid()).collect();
        for id in &ids {
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
        }
        // Each of the 74 random bits is set in some id and clear in another.
        let rand_mask: u128 = (0xFFF << 64) | 0x3FFF_FFFF_FFFF_FFFF;
        let ones = ids.iter().fold(0, |acc, id| acc | id.as_u128());
        let zeros = ids.iter().fold(0, |acc, id| acc | !id.as_u128());
        assert_eq!(ones & rand_mask, rand_mask);
        assert_eq!(zeros & rand_mask, rand_mask);
    }

    #[test]
    fn now_is_the_system_clock_in_millis() {
        let before = system_time_millis();
        let now = Timestamp::now().as_millis();
        let after = system_time_millis();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn ids_are_ordered_by_time() {
        let a = MessageId::at(Timestamp::from_millis(1));
        let b = MessageId::at(Timestamp::from_millis(2));
        assert!(a < b);
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(id: Uuid) -> Self {
        MessageId(id)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// When a message was created, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// Now.
    #[inline]
    pub fn now() -> Self {
        Timestamp(now_millis())
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// From a [`SystemTime`] (one before 1970 reads as 1970).
    pub fn from_system_time(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(&self) -> u64 {
        self.0
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

/// Milliseconds since the Unix epoch, from the real-time clock. On Unix,
/// straight from `clock_gettime` (the clock `SystemTime::now` reads):
/// `SystemTime::now().duration_since(..)` adds about 10 ns of conversions
/// to the clock's 25 (on the benchmark machine), for every message.
#[cfg(unix)]
fn now_millis() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `timespec`, and CLOCK_REALTIME is
    // a clock every Unix has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    if rc != 0 {
        return system_time_millis();
    }
    // Before 1970 (a clock set wrong) reads as 1970, as `system_time_millis`.
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(millis)
}

#[cfg(not(unix))]
fn now_millis() -> u64 {
    system_time_millis()
}

fn system_time_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Where a message comes from: its id, the conversation it belongs to
/// (correlation), the message that caused it (causation), and when.
///
/// A handler can take `&Metadata` as a parameter to read the metadata of the
/// message it handles.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Metadata {
    /// This message's id.
    pub message_id: MessageId,
    /// The id of the first message of the conversation (a command from an
    /// entrypoint starts one: its correlation id is its own id).
    pub correlation_id: MessageId,
    /// The id of the message whose handling raised this one.
    pub causation_id: Option<MessageId>,
    /// When it was created.
    pub timestamp: Timestamp,
}

impl Metadata {
    /// The metadata of a message that starts a conversation.
    #[inline]
    pub fn new() -> Self {
        let timestamp = Timestamp::now();
        let id = MessageId::at(timestamp);
        Metadata {
            message_id: id,
            correlation_id: id,
            causation_id: None,
            timestamp,
        }
    }

    /// The metadata of a message raised while handling the message with this
    /// metadata.
    #[inline]
    pub fn caused_by(&self) -> Self {
        let timestamp = Timestamp::now();
        Metadata {
            message_id: MessageId::at(timestamp),
            correlation_id: self.correlation_id,
            causation_id: Some(self.message_id),
            timestamp,
        }
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

/// A message with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<M> {
    /// Id, correlation, causation, timestamp.
    pub metadata: Metadata,
    /// The message.
    pub message: M,
}

impl<M> Envelope<M> {
    /// A message that starts a conversation.
    pub fn new(message: M) -> Self {
        Envelope {
            metadata: Metadata::new(),
            message,
        }
    }

    /// A message with the given metadata (e.g. as it arrived from a broker).
    pub fn with_metadata(message: M, metadata: Metadata) -> Self {
        Envelope { metadata, message }
    }
}

/// An event whose type has been erased: what an aggregate holds in its
/// [`Events`](crate::Events) and what the bus queues. Only eda implements
/// it (for every [`Event`], when it is raised): it is sealed.
pub trait AnyEvent: sealed::Sealed + fmt::Debug + Send + Sync + 'static {
    /// The event's [`Message::NAME`].
    fn name(&self) -> &'static str;
    /// Whether the event goes to the outbox.
    fn is_external(&self) -> bool;
    /// The event, to downcast.
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    /// The event in JSON, as it is written to the outbox.
    fn to_json(&self) -> Result<Vec<u8>, BoxError>;
    /// Metadata given when its unit of work committed.
    fn metadata(&self) -> &Metadata;
    #[doc(hidden)]
    fn __set_metadata(&mut self, metadata: Metadata);
    #[doc(hidden)]
    fn __clone_box(&self) -> Box<dyn AnyEvent>;
    #[doc(hidden)]
    fn __type_id(&self) -> std::any::TypeId;
    /// Whether its commit wrote it to the dispatch journal (it has handlers
    /// in this process, and the database keeps a journal).
    #[doc(hidden)]
    fn __journaled(&self) -> bool {
        false
    }
    #[doc(hidden)]
    fn __set_journaled(&mut self) {}
}

impl dyn AnyEvent {
    /// The event as `E`, if it is one.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        self.as_any().downcast_ref::<E>()
    }

    /// Whether the event is an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.as_any().is::<E>()
    }
}

/// An event with its metadata, boxed once when raised: the same box travels
/// from the aggregate through the unit of work to the bus's queue.
pub(crate) struct Raised<E> {
    pub(crate) metadata: Metadata,
    pub(crate) event: E,
    pub(crate) journaled: bool,
}

impl<E: Event> fmt::Debug for Raised<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.event.fmt(f)
    }
}

/// What seals [`AnyEvent`]: a trait outside eda cannot name it.
mod sealed {
    pub trait Sealed {}
}

impl<E: Event> sealed::Sealed for Raised<E> {}

impl<E: Event> AnyEvent for Raised<E> {
    fn name(&self) -> &'static str {
        E::NAME
    }
    fn is_external(&self) -> bool {
        E::EXTERNAL
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        &self.event
    }
    fn to_json(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(&self.event)?)
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn __set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }
    fn __clone_box(&self) -> Box<dyn AnyEvent> {
        Box::new(Raised {
            metadata: self.metadata,
            event: self.event.clone(),
            journaled: self.journaled,
        })
    }
    fn __type_id(&self) -> std::any::TypeId {
        std::any::TypeId::of::<E>()
    }
    fn __journaled(&self) -> bool {
        self.journaled
    }
    fn __set_journaled(&mut self) {
        self.journaled = true;
    }
}

/// The kind of a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MessageKind {
    /// A [`Command`].
    Command,
    /// An [`Event`].
    Event,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        })
    }
}
