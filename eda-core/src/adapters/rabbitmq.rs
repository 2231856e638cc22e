//! RabbitMQ (feature `rabbitmq`), through lapin: the external bus between
//! services.
//!
//! Topology (declared idempotently at start, names configurable):
//!
//! - one durable **topic exchange** (default `eda.events`); a message's
//!   routing key is its name (`allocation.allocated`);
//! - one durable **service queue** (the service's name), bound to the names
//!   of the messages the service consumes: the external events it handles
//!   and the commands it accepts (see [`topology`](crate::Topology)).
//!   Bindings it no longer needs (a handler removed, a command no longer
//!   accepted) are removed at start: the names it bound are kept in a
//!   one-message queue `<queue>.bindings`;
//! - **retry queues** `<queue>.retry.<delay>ms`, one per delay of the retry
//!   policy: a message that failed waits there (a queue TTL) and is then
//!   dead-lettered back to the service queue;
//! - a **parking queue** `<exchange>.unrouted`, declared when first used:
//!   events that no queue took for as long as the relay tried (see
//!   [`relay`](crate::OutboxRelay)), with the reason in `x-eda-error`;
//! - a **dead-letter queue** `<queue>.dlq`: messages that cannot be handled
//!   (malformed, unknown, too large) or that failed every attempt, with the
//!   reason and the attempt count in their headers (`x-eda-error`,
//!   `x-eda-attempts`).
//!
//! **Queue types.** Every queue above is a [quorum](QueueType) queue unless
//! the options ask for classic ones ([`RabbitMqOptions::queue_type`],
//! `EDA_QUEUE_TYPE` on the host): replicated across a cluster, the only
//! replicated type on RabbitMQ 4. Nothing declared needs a plugin, and
//! every queue is durable (RabbitMQ 4.3 refuses transient ones). A queue
//! that exists as the other type is used as it is, with a warning at start
//! that says how to move it; a queue that exists with other arguments (a
//! retry queue with another delay, another delivery limit) stops the
//! service at start with an [`Error::Topology`] that quotes the broker and
//! says what to change, rather than a consumer that reconnects forever.
//!
//! **The delivery limit.** A quorum service queue is declared with an
//! explicit `x-delivery-limit` ([`RabbitMqOptions::delivery_limit`], 20 by
//! default, never below the consumer's attempts) and dead-letters, at
//! least once, into the service's dead-letter queue: past the limit the
//! broker moves a message there (`x-first-death-reason: delivery_limit`),
//! it never drops one. The consumer reaches the limit first: a delivery
//! that was never settled (its consumer died, or lost the broker, while
//! handling it) counts as a failed attempt, from the queue's
//! `x-delivery-count`, and once the attempts are spent the message is
//! dead-lettered by the consumer, unhandled, with the reason. A failure
//! the consumer sees (an error, a panic) never counts against the limit:
//! the message is acknowledged once its copy is in a retry queue.
//!
//! **A cluster.** The URL may list the nodes of a cluster, separated by
//! commas. Connections (the relay's and the consumer's share one) go to
//! the first node that accepts one; when a connection breaks, the next one
//! starts with the following node. What was in flight is redelivered and
//! deduplicated by the inbox, as after a broker's restart.
//!
//! **Order per key.** A message type that declares an ordering key
//! (`#[command(name = "…", key = sku)]`, `#[event(…, key = orderid)]`) is
//! published to its key's slot: the routing key `<name>.k<slot>`
//! ([`ordering_slot`](crate::backend::ordering_slot): FNV-1a of the key, modulo 64), with
//! the key in the header `x-eda-key`. A service that consumes it binds each
//! slot to one of its **ordered partitions** `<queue>.ordered.<i>`
//! ([`ConsumerOptions::ordered_partitions`], 8 by default): durable
//! classic queues with a single active consumer, so that one instance at a
//! time consumes a partition, one message after another, while the
//! partitions (and so the keys) proceed in parallel. The messages of a key
//! are handled in the order the relay published them: the order their
//! units of work committed in the publishing service.
//!
//! - A failure is retried **in place**, after the retry delays, while the
//!   messages behind it in its partition wait (a retry queue would let
//!   them overtake it); after the last attempt the message is
//!   dead-lettered, and the next message of its key is handled: a gap in
//!   the key's sequence, never a swap.
//! - An instance that dies or stops returns what it took and had not
//!   handled to its place, and another instance's consumer takes over
//!   from there (a partition's channel is closed, not cancelled first, so
//!   that the broker returns those messages before it activates the next
//!   consumer).
//! - The partitions are classic queues whatever the service's queue
//!   type: a quorum queue (RabbitMQ 3.10, this project's broker) hands the
//!   messages a stopped consumer held back *after* the ones behind them
//!   (the test `a_keys_messages_stay_in_order_when_an_instance_stops`
//!   fails with quorum partitions), so a partition is not replicated: the
//!   loss of its node stops its keys until the node is back (its messages
//!   are on disk).
//! - A message published without a key (by a version whose type had none)
//!   still reaches the service queue, unordered.
//!
//! Messages are persistent (delivery mode 2) and carry their metadata in
//! AMQP properties: `message_id` (the event's id), `type` (its name),
//! `content_type` `application/json`, `correlation_id`, `timestamp`,
//! `app_id` (the publishing service: its queue's name), and headers
//! `x-causation-id` and `x-eda-timestamp-ms`.
//!
//! [`RabbitMq::publisher`] is the outbox relay's [`Publisher`] (publisher
//! confirms, mandatory flag, pipelined); [`RabbitMq::consumer`] is the
//! consumer entrypoint.
//!
//! An event the broker returns as unroutable is logged by the relay, once,
//! with its name and id. lapin also logs every returned message, at WARN
//! under the target `lapin::returned_messages`, with its body as bytes:
//! turn that target off in your subscriber's filter (the examples do, see
//! `examples/allocation/src/main.rs`).
//!
//! ```no_run
//! # async fn run(bus: eda_core::MessageBus, db: eda_core::adapters::postgres::PostgresDatabase) -> Result<(), eda_core::Error> {
//! use std::sync::Arc;
//! use eda_core::adapters::rabbitmq::{RabbitMq, RabbitMqOptions};
//! use eda_core::{OutboxRelay, RelayOptions};
//!
//! let rabbitmq = RabbitMq::connect(RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f", "allocation")).await?;
//! let relay = OutboxRelay::spawn(Arc::new(db), rabbitmq.publisher(), RelayOptions::default());
//! rabbitmq.consumer(bus).run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! relay.shutdown().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::RedactedUrl;
use crate::adapter::Adapter;
use crate::bus::{KeyedRoute, MessageBus, keyed_route};
use crate::entrypoints::ConsumerOptions;
use crate::error::Error;
use crate::future::BoxFuture;
use crate::message::{MessageId, Metadata, Timestamp};
use crate::outbox::ExternalMessage;
use crate::relay::{Delivery, Publisher};
use crate::topology::Topology;
use crate::topology::{ORDERING_SLOTS, slot_routing_key};
use crate::trace_context::TraceContext;

/// Header: the id of the message that caused this one.
pub const CAUSATION_HEADER: &str = "x-causation-id";
/// Header: the message's timestamp in milliseconds (the AMQP `timestamp`
/// property has seconds).
pub const TIMESTAMP_HEADER: &str = "x-eda-timestamp-ms";
/// Header: how many times handling the message failed.
pub const ATTEMPTS_HEADER: &str = "x-eda-attempts";
/// Header: why the message was dead-lettered (or retried).
pub const ERROR_HEADER: &str = "x-eda-error";
/// Header: the ordering key of a message whose type declares one.
pub const KEY_HEADER: &str = "x-eda-key";

/// Where the broker is and how the service uses it: the connection's
/// settings, and the [`ConsumerOptions`] every broker shares.
#[derive(Clone)]
pub struct RabbitMqOptions {
    nodes: Vec<RedactedUrl>,
    pub(crate) consumer: ConsumerOptions,
    pub(crate) prefetch: u16,
    pub(crate) reconnect: (Duration, Duration),
    queue_type: QueueType,
    delivery_limit: Option<u32>,
}

/// The type of the queues eda declares: the service queue, its retry
/// queues, its dead-letter queue, the record of its bindings and the
/// exchange's parking queue.
///
/// Quorum is the default for new queues: a quorum queue is replicated to
/// the nodes of a cluster and survives the loss of a minority of them
/// (on RabbitMQ 4, classic queues are never replicated). Classic is for a
/// single broker where replication buys nothing, or a queue that exists
/// already as classic.
///
/// A queue's type cannot change once it exists. A service that finds its
/// queue of the other type keeps using it as it is and says so at start,
/// at WARN, with what to do (see the [module](self)).
///
/// ```
/// use eda_core::adapters::rabbitmq::QueueType;
///
/// assert_eq!("classic".parse::<QueueType>(), Ok(QueueType::Classic));
/// assert_eq!(QueueType::default().to_string(), "quorum");
/// assert!("mirrored".parse::<QueueType>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// Replicated (Raft) queues, `x-queue-type: quorum`.
    #[default]
    Quorum,
    /// A node's own queue, the broker's default type.
    Classic,
}

impl QueueType {
    /// `quorum` or `classic`, as RabbitMQ names them.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }

    fn other(self) -> QueueType {
        match self {
            QueueType::Quorum => QueueType::Classic,
            QueueType::Classic => QueueType::Quorum,
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(QueueType::Quorum),
            "classic" => Ok(QueueType::Classic),
            _ => Err(format!("expected quorum or classic, got {s:?}")),
        }
    }
}

/// A quorum service queue's delivery limit when none is set: RabbitMQ 4's
/// default, or the consumer's attempts if they are more.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// How long one node is given to accept a connection before the next one
/// is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a queue is for: its arguments follow.
#[derive(Clone, Copy)]
enum Role {
    Service,
    Retry(Duration),
    DeadLetter,
    /// `<queue>.bindings`.
    Record,
    /// `<exchange>.unrouted`.
    Unrouted,
    /// `<queue>.ordered.<i>`.
    Partition,
}

impl fmt::Debug for RabbitMqOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqOptions")
            .field("nodes", &self.nodes)
            .field("consumer", &self.consumer)
            .field("prefetch", &self.prefetch)
            .field("reconnect", &self.reconnect)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .finish()
    }
}

impl RabbitMqOptions {
    /// The broker at `url`, for the service whose queue is `queue`.
    ///
    /// `url` may list the nodes of a cluster, separated by commas
    /// (`amqp://u:p@mq1:5672/%2f,amqp://u:p@mq2:5672/%2f`): a connection
    /// goes to the first that accepts it (each is given 5 s), and when it
    /// breaks the next connection starts with the following node.
    ///
    /// Defaults: those of [`ConsumerOptions::new`], prefetch 32,
    /// reconnection after 100 ms to 5 s, [quorum](QueueType) queues with a
    /// delivery limit of [`DEFAULT_DELIVERY_LIMIT`] (or the consumer's
    /// attempts, if they are more).
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        let url: String = url.into();
        RabbitMqOptions {
            nodes: url
                .split(',')
                .map(str::trim)
                .filter(|node| !node.is_empty())
                .map(|node| RedactedUrl(node.to_owned()))
                .collect(),
            consumer: ConsumerOptions::new(queue),
            prefetch: 32,
            reconnect: (Duration::from_millis(100), Duration::from_secs(5)),
            queue_type: QueueType::default(),
            delivery_limit: None,
        }
    }

    /// How many ordered partitions the service has
    /// ([`ConsumerOptions::ordered_partitions`]).
    pub fn ordered_partitions(self, partitions: u32) -> Self {
        self.consumer_with(|c| c.ordered_partitions(partitions))
    }

    /// The type of the queues the service declares (quorum by default).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The delivery limit of a quorum service queue (`x-delivery-limit`):
    /// how many times the broker delivers a message that is never settled
    /// (the consumer died or lost its connection while handling it) before
    /// it dead-letters it, to the dead-letter queue. It must be at least
    /// the consumer's [attempts](Self::max_attempts): the consumer counts
    /// such deliveries as failed attempts, and dead-letters the message
    /// itself, with the reason, when they are spent, before the broker
    /// would. [`RabbitMq::connect`] refuses a lower limit.
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = Some(limit);
        self
    }

    /// The delivery limit a quorum service queue is declared with: the one
    /// set, or [`DEFAULT_DELIVERY_LIMIT`] (the attempts, if more).
    pub fn effective_delivery_limit(&self) -> u32 {
        self.delivery_limit
            .unwrap_or_else(|| DEFAULT_DELIVERY_LIMIT.max(self.consumer.max_attempts))
    }

    /// The broker at `url`, for the service these [`ConsumerOptions`]
    /// describe (the same options serve the in-process broker), with the
    /// connection's defaults.
    pub fn from_consumer(url: impl Into<String>, consumer: ConsumerOptions) -> Self {
        RabbitMqOptions {
            consumer,
            ..RabbitMqOptions::new(url, "")
        }
    }

    fn consumer_with(mut self, f: impl FnOnce(ConsumerOptions) -> ConsumerOptions) -> Self {
        self.consumer = f(self.consumer);
        self
    }

    /// The topic exchange ([`ConsumerOptions::exchange`]).
    pub fn exchange(self, exchange: impl Into<String>) -> Self {
        self.consumer_with(|c| c.exchange(exchange))
    }

    /// How many unacknowledged deliveries the broker sends at once.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How many messages are handled at once
    /// ([`ConsumerOptions::concurrency`]).
    pub fn concurrency(self, concurrency: usize) -> Self {
        self.consumer_with(|c| c.concurrency(concurrency))
    }

    /// The delays before attempts 2, 3, …; the last one repeats
    /// ([`ConsumerOptions::retry_delays`]). Each has its retry queue.
    pub fn retry_delays(self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.consumer_with(|c| c.retry_delays(delays))
    }

    /// After this many failed attempts, a message is dead-lettered
    /// ([`ConsumerOptions::max_attempts`]).
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.consumer_with(|c| c.max_attempts(attempts))
    }

    /// Larger messages are dead-lettered at once, unread
    /// ([`ConsumerOptions::max_message_bytes`]).
    pub fn max_message_bytes(self, bytes: usize) -> Self {
        self.consumer_with(|c| c.max_message_bytes(bytes))
    }

    /// The first and the longest delay between reconnection attempts (it
    /// doubles; each wait is drawn between half and all of it).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect = (initial, max.max(initial));
        self
    }

    /// Bind the service queue to these message names instead of those the
    /// bus consumes ([`ConsumerOptions::bind`]).
    pub fn bind(self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.consumer_with(|c| c.bind(names))
    }

    /// How long a shutdown waits for in-flight messages before returning
    /// them to the broker ([`ConsumerOptions::shutdown_grace`]).
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        self.consumer_with(|c| c.shutdown_grace(grace))
    }

    /// What every broker shares: the queue's names, the consumer's policy.
    pub fn consumer(&self) -> &ConsumerOptions {
        &self.consumer
    }

    /// The retry queue of a delay: `<queue>.retry.<ms>ms`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.consumer.queue, delay.as_millis())
    }

    /// The retry queues, one per delay.
    pub fn retry_queues(&self) -> Vec<String> {
        self.consumer
            .retry_delays
            .iter()
            .map(|d| self.retry_queue(*d))
            .collect()
    }

    /// The URL (the nodes', separated by commas), passwords hidden.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What cannot work, found before the broker is asked: no URL, or a
    /// delivery limit below the consumer's attempts.
    fn check(&self) -> Result<(), Error> {
        if self.nodes.is_empty() {
            return Err(Error::Connect {
                url: String::new(),
                source: "no RabbitMQ URL".into(),
            });
        }
        let limit = self.effective_delivery_limit();
        if self.queue_type == QueueType::Quorum && limit < self.consumer.max_attempts {
            return Err(Error::Topology {
                queue: self.consumer.queue.clone(),
                problem: format!(
                    "its delivery limit ({limit}) is below the consumer's attempts ({}): the \
                     broker would dead-letter a message that kills its consumer before the \
                     service has spent its attempts; raise the limit (EDA_DELIVERY_LIMIT) to \
                     at least the attempts (EDA_MAX_ATTEMPTS)",
                    self.consumer.max_attempts
                ),
            });
        }
        Ok(())
    }

    /// The arguments of a queue of `role` and type `kind`.
    fn arguments(&self, role: Role, kind: QueueType) -> FieldTable {
        let o = &self.consumer;
        let quorum = kind == QueueType::Quorum;
        let mut args = FieldTable::default();
        if quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
        // Dead-lettered at least once (quorum): the broker keeps the
        // message until the queue it goes to has it, which needs the
        // overflow that refuses publishes rather than dropping the oldest.
        let dead_letter_to = |args: &mut FieldTable, queue: String| {
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(queue));
            if quorum {
                args.insert(
                    "x-dead-letter-strategy".into(),
                    long_string("at-least-once"),
                );
                args.insert("x-overflow".into(), long_string("reject-publish"));
            }
        };
        match role {
            Role::Service if quorum => {
                dead_letter_to(&mut args, o.dead_letter_queue());
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(i64::from(self.effective_delivery_limit())),
                );
            }
            Role::Retry(delay) => {
                dead_letter_to(&mut args, o.queue.clone());
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(delay.as_millis() as i64),
                );
            }
            // A classic record keeps one message (as before quorum queues);
            // a quorum one is drained whole at each start.
            Role::Record if !quorum => {
                args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
            }
            // One instance at a time, in order: classic whatever the
            // service's type, because a quorum queue (RabbitMQ 3.10 to
            // 3.12 at least) gives a message its dead consumer held back
            // after the ones behind it, and the order is lost.
            Role::Partition => {
                args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
            Role::Service | Role::DeadLetter | Role::Record | Role::Unrouted => {}
        }
        args
    }

    /// The type a queue of `role` is declared as.
    fn type_of(&self, role: Role) -> QueueType {
        match role {
            Role::Partition => QueueType::Classic,
            _ => self.queue_type,
        }
    }
}

/// A connection to RabbitMQ, shared by the relay's publisher and the
/// consumer; re-established when it breaks. Cheap to clone.
#[derive(Clone)]
pub struct RabbitMq {
    inner: Arc<Shared>,
}

struct Shared {
    options: RabbitMqOptions,
    connection: Mutex<Option<Arc<Connection>>>,
    /// The node the next connection tries first.
    next_node: std::sync::atomic::AtomicUsize,
    /// The topology's warnings were logged.
    warned: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMq")
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Adapter for RabbitMq {}

impl RabbitMq {
    /// Connects and declares the exchange. An error names the URL, with its
    /// password hidden; options that cannot work (a delivery limit below
    /// the attempts) are refused before the broker is asked.
    pub async fn connect(options: RabbitMqOptions) -> Result<Self, Error> {
        options.check()?;
        let rabbitmq = RabbitMq {
            inner: Arc::new(Shared {
                options,
                connection: Mutex::new(None),
                next_node: std::sync::atomic::AtomicUsize::new(0),
                warned: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let channel = rabbitmq.channel().await.map_err(|e| Error::Connect {
            url: rabbitmq.inner.options.url(),
            source: e.into(),
        })?;
        rabbitmq.declare_exchange(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(rabbitmq)
    }

    /// The options.
    pub fn options(&self) -> &RabbitMqOptions {
        &self.inner.options
    }

    fn error(&self, e: lapin::Error) -> Error {
        Error::Broker(format!("{}: {e}", self.inner.options.url()).into())
    }

    /// A new channel, on the current connection or, if it broke, on a new
    /// one (one attempt: callers retry with their own backoff).
    pub async fn channel(&self) -> Result<Channel, Error> {
        let mut current = self.inner.connection.lock().await;
        if let Some(connection) = current.as_ref()
            && connection.status().connected()
        {
            match connection.create_channel().await {
                Ok(channel) => return Ok(channel),
                Err(e) => tracing::debug!(error = %e, "channel failed, reconnecting"),
            }
        }
        let connection = self.connect_any().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.error(e))?;
        *current = Some(Arc::new(connection));
        Ok(channel)
    }

    /// A connection to the first node that accepts one, starting with the
    /// node after the one connected last (so that a dead node is not the
    /// first tried again).
    async fn connect_any(&self) -> Result<Connection, Error> {
        use std::sync::atomic::Ordering;
        let nodes = &self.inner.options.nodes;
        let first = self.inner.next_node.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..nodes.len() {
            let i = (first + k) % nodes.len();
            let node = &nodes[i];
            // Named after the service queue: visible as such in the
            // broker's tools (and closable alone, as the fault tests do).
            let properties = ConnectionProperties::default()
                .with_connection_name(self.inner.options.consumer.queue.as_str().into());
            match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&node.0, properties))
                .await
            {
                Ok(Ok(connection)) => {
                    self.inner
                        .next_node
                        .store((i + 1) % nodes.len(), Ordering::Relaxed);
                    if nodes.len() > 1 {
                        tracing::info!(node = %node, "connected to RabbitMQ");
                    }
                    return Ok(connection);
                }
                Ok(Err(e)) => failures.push(format!("{node}: {e}")),
                Err(_) => failures.push(format!("{node}: no answer in {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(Error::Broker(failures.join("; ").into()))
    }

    /// A channel in confirm mode.
    pub(crate) async fn confirm_channel(&self) -> Result<Channel, Error> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.error(e))?;
        Ok(channel)
    }

    async fn declare_exchange(&self, channel: &Channel) -> Result<(), Error> {
        channel
            .exchange_declare(
                self.inner.options.consumer.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(e))
    }

    /// Declares the exchange, the service queue bound to the topology's
    /// names (and unbound from the stale ones), its retry queues and its
    /// dead-letter queue. Idempotent. Returns the service queue's type
    /// (the one found, if it existed as the other).
    pub(crate) async fn declare_service_topology(
        &self,
        channel: &Channel,
        topology: &Topology,
    ) -> Result<QueueType, Error> {
        let options = &self.inner.options;
        let o = &options.consumer;
        topology.log_once(&o.queue, &self.inner.warned);
        self.declare_exchange(channel).await?;
        // The dead-letter queue first: the service queue's (quorum)
        // dead-lettering goes there.
        self.declare_queue(&o.dead_letter_queue(), Role::DeadLetter)
            .await?;
        let service = self.declare_queue(&o.queue, Role::Service).await?;
        for delay in &o.retry_delays {
            self.declare_queue(&options.retry_queue(*delay), Role::Retry(*delay))
                .await?;
        }
        for name in topology.bindings() {
            self.bind(channel, &o.queue, name).await?;
        }
        // The ordered messages' slots, each to its partition (the name
        // itself stays bound to the service queue: a message published
        // without a key, by a version that had none, is still taken).
        let ordered = topology.ordered();
        if !ordered.is_empty() {
            for queue in o.partition_queues() {
                self.declare_queue(&queue, Role::Partition).await?;
            }
            for name in ordered {
                for slot in 0..ORDERING_SLOTS {
                    let queue = o.partition_of_slot(slot);
                    self.bind(channel, &queue, &slot_routing_key(name, slot))
                        .await?;
                }
            }
        }
        self.remove_stale_bindings(channel, topology).await?;
        Ok(service)
    }

    async fn bind(&self, channel: &Channel, queue: &str, routing_key: &str) -> Result<(), Error> {
        channel
            .queue_bind(
                queue.into(),
                self.inner.options.consumer.exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(e))
    }

    /// Declares a queue of the configured type, on a channel of its own
    /// (a refusal closes the channel). A queue that exists as the other
    /// type is kept as it is, with a warning; one that exists with other
    /// arguments is an [`Error::Topology`].
    async fn declare_queue(&self, queue: &str, role: Role) -> Result<QueueType, Error> {
        let options = &self.inner.options;
        let wanted = options.type_of(role);
        let refused = match self
            .try_declare(queue, options.arguments(role, wanted))
            .await?
        {
            None => return Ok(wanted),
            Some(refused) => refused,
        };
        // Refused: it exists, as the other type (the broker names the
        // first argument that differs, not always the type) or with other
        // arguments. The other type's declaration tells which.
        let found = wanted.other();
        match self
            .try_declare(queue, options.arguments(role, found))
            .await?
        {
            None => {
                tracing::warn!(
                    queue,
                    found = %found,
                    configured = %wanted,
                    "the queue exists as a {found} queue, and a queue's type cannot change: \
                     it is used as it is. To move it to {wanted}, stop the service's \
                     instances, let the queue empty (or move its messages), delete it, and \
                     start again; or set EDA_QUEUE_TYPE={found} to silence this"
                );
                Ok(found)
            }
            // Of the other type, and with other arguments than it would
            // have: the second refusal names what differs.
            Some(again) if refused.contains("'x-queue-type'") => Err(self.mismatch(queue, &again)),
            Some(_) => Err(self.mismatch(queue, &refused)),
        }
    }

    /// Declares a durable queue: `None` if done, `Some(the broker's words)`
    /// if it refused (the queue exists with other arguments).
    async fn try_declare(&self, queue: &str, args: FieldTable) -> Result<Option<String>, Error> {
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "declared".into()).await;
                Ok(None)
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(
                        amqp.kind(),
                        lapin::protocol::AMQPErrorKind::Soft(
                            lapin::protocol::AMQPSoftError::PRECONDITIONFAILED
                        )
                    ) =>
                {
                    Ok(Some(amqp.get_message().to_string()))
                }
                _ => Err(self.error(e)),
            },
        }
    }

    fn mismatch(&self, queue: &str, refused: &str) -> Error {
        Error::Topology {
            queue: queue.to_owned(),
            problem: format!(
                "it exists with other arguments than this service declares, and a queue's \
                 arguments cannot change (the broker said: {refused}). Configure the service \
                 as the queue was declared (EDA_DELIVERY_LIMIT for x-delivery-limit, \
                 EDA_RETRY_DELAYS_MS for a retry queue's x-message-ttl, EDA_QUEUE_TYPE), or \
                 delete the queue once it is empty so that it is declared again"
            ),
        }
    }

    /// Unbinds what the queue no longer needs, and records what it is bound
    /// to now. AMQP cannot list a queue's bindings: the names bound are
    /// kept as the one message of `<queue>.bindings` (a durable queue of
    /// length 1), read at the next start; and every name linked into this
    /// binary that the queue does not need is unbound too (unbinding what
    /// is not bound does nothing), which covers a queue bound by a version
    /// that kept no record.
    async fn remove_stale_bindings(
        &self,
        channel: &Channel,
        topology: &Topology,
    ) -> Result<(), Error> {
        let o = &self.inner.options.consumer;
        let record = o.bindings_queue();
        self.declare_queue(&record, Role::Record).await?;
        // Every record there (one, unless a start crashed between writing
        // the new one and taking the old), unacknowledged until the new
        // one is written.
        let mut previous = Vec::new();
        let mut before: Vec<String> = Vec::new();
        while let Some(message) = channel
            .basic_get(record.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| self.error(e))?
        {
            if let Ok(names) = serde_json::from_slice::<Vec<String>>(&message.delivery.data) {
                before.extend(names);
            }
            previous.push(message);
        }
        before.sort();
        before.dedup();
        for name in topology.stale(before.iter().map(String::as_str)) {
            channel
                .queue_unbind(
                    o.queue.as_str().into(),
                    o.exchange.as_str().into(),
                    name.as_str().into(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.error(e))?;
            if before.contains(&name) {
                tracing::info!(
                    queue = %o.queue,
                    name,
                    "removed a binding this service no longer needs"
                );
            }
        }
        let now = serde_json::to_vec(topology.bindings()).map_err(Error::database)?;
        channel
            .basic_publish(
                short(""),
                short(&record),
                BasicPublishOptions::default(),
                &now,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| self.error(e))?;
        // The new record replaces the old, which is acknowledged only now,
        // so that a crash in between loses neither.
        for previous in previous {
            previous
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Declares the service's topology for `bus` (exchange, queue bound to
    /// the messages the bus consumes, retry and dead-letter queues) on a
    /// channel of its own, and logs what is probably wrong with it. The
    /// consumer does it too when it starts; call it first when messages
    /// may be published before the consumer runs.
    pub async fn declare_topology(&self, bus: &MessageBus) -> Result<(), Error> {
        let channel = self.channel().await?;
        let topology = self.topology(bus);
        self.declare_service_topology(&channel, &topology).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// The topology of `bus` on this broker: bound to what the bus
    /// consumes, or to the names given to [`RabbitMqOptions::bind`].
    /// Declaring it logs its warnings, once.
    pub fn topology(&self, bus: &MessageBus) -> Topology {
        self.inner.options.consumer.topology(bus)
    }

    /// The outbox relay's publisher: publisher confirms, mandatory flag, a
    /// pipelined window of unconfirmed messages.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(RabbitMqPublisher {
            rabbitmq: self.clone(),
            channel: Mutex::new(None),
        })
    }
}

/// The AMQP properties of a message: its metadata, which [`metadata`]
/// reads back as it was (the timestamp to the millisecond up to `i64::MAX`
/// ms, to the second past it).
pub fn properties(message: &ExternalMessage) -> BasicProperties {
    let m = &message.metadata;
    let mut headers = FieldTable::default();
    if let Some(causation) = m.causation_id {
        headers.insert(
            CAUSATION_HEADER.into(),
            AMQPValue::LongString(causation.to_string().into()),
        );
    }
    // A long-long-int is signed: past `i64::MAX` ms (292 million years),
    // the `timestamp` property alone carries the time, to the second,
    // rather than a header that wrapped to a negative number.
    if let Ok(ms) = i64::try_from(m.timestamp.as_millis()) {
        headers.insert(TIMESTAMP_HEADER.into(), AMQPValue::LongLongInt(ms));
    }
    // The trace it continues, a header per field (W3C: `traceparent`,
    // `tracestate`, `baggage`).
    for (name, value) in message.trace.iter() {
        headers.insert(name.into(), long_string(value));
    }
    BasicProperties::default()
        .with_message_id(m.message_id.to_string().into())
        .with_type(message.name.as_str().into())
        .with_content_type("application/json".into())
        .with_correlation_id(m.correlation_id.to_string().into())
        .with_timestamp(m.timestamp.as_millis() / 1000)
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// The metadata of a delivered message, from its properties. A message
/// without a valid `message_id` cannot be deduplicated, and is refused.
pub fn metadata(properties: &BasicProperties) -> Result<Metadata, String> {
    let id: MessageId = properties
        .message_id()
        .as_ref()
        .ok_or("no message_id property")?
        .as_str()
        .parse()
        .map_err(|e| format!("message_id is not a UUID: {e}"))?;
    let header = |name: &str| {
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name).cloned())
    };
    let correlation_id = properties
        .correlation_id()
        .as_ref()
        .and_then(|c| c.as_str().parse().ok())
        .unwrap_or(id);
    let causation_id = match header(CAUSATION_HEADER) {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.parse().ok()),
        _ => None,
    };
    let timestamp = match header(TIMESTAMP_HEADER) {
        Some(AMQPValue::LongLongInt(ms)) if ms >= 0 => Timestamp::from_millis(ms as u64),
        _ => properties
            .timestamp()
            .map(|s| Timestamp::from_millis(s.saturating_mul(1000)))
            .unwrap_or_else(Timestamp::now),
    };
    Ok(Metadata {
        message_id: id,
        correlation_id,
        causation_id,
        timestamp,
    })
}

/// The trace context of a delivered message: the headers named by the
/// global propagator's fields (empty without the feature `otel`).
pub fn trace_context(properties: &BasicProperties) -> TraceContext {
    TraceContext::from_headers(
        |name| match properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        },
    )
}

/// A header value as a string, for logs and tests.
pub fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// `properties` with one more header.
fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    properties.with_headers(headers)
}

pub(crate) fn long_string(s: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.into()))
}

pub(crate) fn short(s: &str) -> ShortString {
    s.into()
}

/// Publishes outbox messages with confirms.
struct RabbitMqPublisher {
    rabbitmq: RabbitMq,
    channel: Mutex<Option<Channel>>,
}

impl RabbitMqPublisher {
    /// The publishing channel (in confirm mode), opened again when it broke.
    async fn channel(&self) -> Result<Channel, Error> {
        let mut slot = self.channel.lock().await;
        match slot.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => Ok(channel.clone()),
            None => {
                let channel = self.rabbitmq.confirm_channel().await?;
                *slot = Some(channel.clone());
                Ok(channel)
            }
        }
    }
}

impl Publisher for RabbitMqPublisher {
    fn publish<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, (Vec<Delivery>, Option<Error>)> {
        Box::pin(async move {
            let channel = match self.channel().await {
                Ok(channel) => channel,
                Err(e) => return (Vec::new(), Some(e)),
            };
            let exchange = self.rabbitmq.inner.options.consumer.exchange.as_str();
            // The publishing service: its own consumer knows its events by
            // it (they were handled in-process).
            let service = self.rabbitmq.inner.options.consumer.queue.as_str();
            // Pipelined: every message of the batch is sent before any
            // confirm is awaited, and the sends themselves are not awaited
            // one by one (each is a round trip through lapin's I/O loop).
            // Their order holds: lapin queues a message's frames, and gives
            // it its delivery tag, on the first poll of `basic_publish`,
            // and `in_order` polls them in order.
            // A message with an ordering key goes to its key's slot, with
            // its key.
            let sends = messages.iter().map(|message| {
                let properties = properties(message).with_app_id(short(service));
                let (routing_key, properties) = match keyed_route(&message.name, &message.payload) {
                    None => (short(&message.name), properties),
                    Some(KeyedRoute { key, routing_key }) => (
                        short(&routing_key),
                        with_header(properties, KEY_HEADER, long_string(key)),
                    ),
                };
                channel.basic_publish(
                    short(exchange),
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &message.payload,
                    properties,
                )
            });
            let mut confirms = Vec::with_capacity(messages.len());
            let mut error = None;
            for sent in in_order(sends.collect()).await {
                match sent {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => {
                        error = Some(self.rabbitmq.error(e));
                        break;
                    }
                }
            }
            let mut deliveries = Vec::with_capacity(confirms.len());
            for confirm in confirms {
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => deliveries.push(Delivery::Confirmed),
                    Ok(Confirmation::Ack(Some(_))) => deliveries.push(Delivery::Unroutable),
                    Ok(Confirmation::Nack(_)) => {
                        error.get_or_insert_with(|| {
                            Error::Broker("the broker refused (nack) a message".into())
                        });
                        break;
                    }
                    Ok(Confirmation::NotRequested) => {
                        error.get_or_insert_with(|| {
                            Error::Broker("publisher confirms are off".into())
                        });
                        break;
                    }
                    Err(e) => {
                        error.get_or_insert_with(|| self.rabbitmq.error(e));
                        break;
                    }
                }
            }
            if error.is_some() {
                // Start from a fresh channel next time.
                *self.channel.lock().await = None;
            }
            (deliveries, error)
        })
    }

    fn park<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let channel = self.channel().await?;
            let o = &self.rabbitmq.inner.options.consumer;
            let queue = o.unrouted_queue();
            self.rabbitmq.declare_queue(&queue, Role::Unrouted).await?;
            let mut confirms = Vec::with_capacity(messages.len());
            for message in messages {
                let properties = with_header(
                    properties(message).with_app_id(short(&o.queue)),
                    ERROR_HEADER,
                    long_string(reason),
                );
                let confirm = channel
                    .basic_publish(
                        short(""),
                        short(&queue),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &message.payload,
                        properties,
                    )
                    .await
                    .map_err(|e| self.rabbitmq.error(e))?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                match confirm.await.map_err(|e| self.rabbitmq.error(e))? {
                    Confirmation::Ack(None) => {}
                    _ => {
                        return Err(Error::Broker(
                            format!("the broker did not take a message into {queue}").into(),
                        ));
                    }
                }
            }
            Ok(())
        })
    }
}

/// Polls every future, in order, until all are done; their outputs in the
/// same order.
async fn in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(&mut outputs) {
            if let Some(f) = future {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *output = Some(v);
                        *future = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
