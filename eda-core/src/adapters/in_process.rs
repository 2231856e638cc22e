//! An external bus in the process, with RabbitMQ's routing semantics:
//! services in one process (a test, a service run with nothing installed)
//! talk to each other through it as they would through RabbitMQ.
//!
//! What it shares with RabbitMQ, so that a mistake shows here as it would
//! there:
//!
//! - **topic exchanges**: a message is routed to every queue with a
//!   binding whose pattern matches its routing key (its name): words
//!   separated by `.`, `*` one word, `#` zero or more;
//! - **mandatory publishing**: a message no queue takes is *unroutable*,
//!   and the outbox relay keeps it ([`relay`](crate::OutboxRelay)); a queue that
//!   is not bound receives nothing;
//! - **the service's topology**, declared from the bus exactly as on
//!   RabbitMQ ([`topology`](crate::Topology)): bound to the external events
//!   it handles and the commands it accepts, stale bindings removed;
//! - **the consumer's verdicts**, the same code as RabbitMQ's consumer:
//!   an event the service published itself is acknowledged unhandled (it
//!   was handled in-process), a command it does not accept and bad input
//!   are dead-lettered at once to `<queue>.dlq`, failures are retried after
//!   the retry delays and then dead-lettered, with the reason and attempt
//!   count on the message.
//!
//! What it does not have: persistence (the process is the broker), and
//! separate connections to break. Queues are unbounded.
//!
//! ```standalone_crate
//! use std::sync::Arc;
//! use eda_core::adapters::in_process::InProcessBroker;
//! use eda_core::entrypoints::ConsumerOptions;
//! use eda_core::prelude::*;
//! use eda_core::{OutboxRelay, RelayOptions};
//! use serde::{Deserialize, Serialize};
//!
//! mod contracts {
//!     #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, eda_core::Event)]
//!     #[event(name = "shop.order_placed", external)]
//!     pub struct OrderPlaced { pub orderid: String }
//! }
//!
//! mod shipping {
//!     #[eda_core::event_handler]
//!     async fn ship(_: &super::contracts::OrderPlaced) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = InProcessBroker::new();
//! let shipping = MessageBus::builder().scope("rust_out::shipping").build()?;
//! let endpoint = broker.service(ConsumerOptions::new("shipping"));
//! endpoint.declare_topology(&shipping);
//! assert_eq!(broker.bindings("shipping"), [("eda.events".to_owned(), "shop.order_placed".to_owned())]);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::bus::MessageBus;
use crate::bus::keyed_route;
use crate::entrypoints::{
    self, ConsumerMetrics, ConsumerOptions, Counted, Verdict, in_order, retry_delay, stopped,
    verdict,
};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::outbox::ExternalMessage;
use crate::relay::{Delivery, Publisher};
use crate::topology::{ORDERING_SLOTS, Topology, slot_routing_key};

/// A message in the broker: what an AMQP delivery carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InProcessMessage {
    /// Name, metadata and body.
    pub message: ExternalMessage,
    /// The key it was published with (its name, or a queue's on the
    /// default exchange).
    pub routing_key: String,
    /// The service that published it (AMQP's `app_id`).
    pub published_by: Option<String>,
    /// How many times handling it failed (`x-eda-attempts`).
    pub attempts: u32,
    /// Why it was retried, dead-lettered or parked (`x-eda-error`).
    pub error: Option<String>,
}

impl InProcessMessage {
    /// A message published by `service` (or by no service), never failed.
    pub fn new(message: ExternalMessage, published_by: Option<&str>) -> Self {
        InProcessMessage {
            routing_key: message.name.clone(),
            message,
            published_by: published_by.map(str::to_owned),
            attempts: 0,
            error: None,
        }
    }
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<InProcessMessage>,
    /// One permit per message made ready: competing consumers each take
    /// one.
    notify: Arc<Notify>,
    /// Held by the consumer that is active on an ordered partition (a
    /// single active consumer, as on RabbitMQ): the others wait for it.
    active: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct State {
    /// Exchange → its bindings (pattern, queue), in the order made.
    exchanges: HashMap<String, Vec<(String, String)>>,
    queues: HashMap<String, Queue>,
}

/// The broker. Clones share it.
#[derive(Clone, Default)]
pub struct InProcessBroker {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for InProcessBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("InProcessBroker")
            .field("exchanges", &state.exchanges.len())
            .field("queues", &state.queues.len())
            .finish()
    }
}

/// Whether a topic pattern matches a routing key, as RabbitMQ's topic
/// exchange: words separated by `.`, `*` exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && matches(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && matches(rest, &key[1..]),
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    matches(&pattern, &key)
}

impl InProcessBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing is left half-done under the lock: a poisoned one is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares a topic exchange (idempotent).
    pub fn declare_exchange(&self, exchange: &str) {
        self.state()
            .exchanges
            .entry(exchange.to_owned())
            .or_default();
    }

    /// Declares a queue (idempotent).
    pub fn declare_queue(&self, queue: &str) {
        self.state().queues.entry(queue.to_owned()).or_default();
    }

    /// Binds `queue` to `exchange` for routing keys matching `pattern`
    /// (idempotent). Both must be declared.
    pub fn bind(&self, queue: &str, exchange: &str, pattern: &str) -> Result<(), Error> {
        let mut state = self.state();
        if !state.queues.contains_key(queue) {
            return Err(not_found("queue", queue));
        }
        let bindings = state
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| not_found("exchange", exchange))?;
        let binding = (pattern.to_owned(), queue.to_owned());
        if !bindings.contains(&binding) {
            bindings.push(binding);
        }
        Ok(())
    }

    /// Removes a binding (one that does not exist is fine).
    pub fn unbind(&self, queue: &str, exchange: &str, pattern: &str) {
        if let Some(bindings) = self.state().exchanges.get_mut(exchange) {
            bindings.retain(|(p, q)| !(p == pattern && q == queue));
        }
    }

    /// The bindings of `queue`: (exchange, pattern), sorted.
    pub fn bindings(&self, queue: &str) -> Vec<(String, String)> {
        let state = self.state();
        let mut found: Vec<(String, String)> = state
            .exchanges
            .iter()
            .flat_map(|(exchange, bindings)| {
                bindings
                    .iter()
                    .filter(|(_, q)| q == queue)
                    .map(move |(p, _)| (exchange.clone(), p.clone()))
            })
            .collect();
        found.sort();
        found
    }

    /// Publishes with the mandatory flag: `Ok(true)` when at least one
    /// queue took the message, `Ok(false)` when none did (unroutable).
    /// The exchange `""` is the default exchange, whose routing keys are
    /// queue names.
    pub fn publish(&self, exchange: &str, message: InProcessMessage) -> Result<bool, Error> {
        let mut state = self.state();
        let queues: Vec<String> = if exchange.is_empty() {
            if state.queues.contains_key(&message.routing_key) {
                vec![message.routing_key.clone()]
            } else {
                Vec::new()
            }
        } else {
            let bindings = state
                .exchanges
                .get(exchange)
                .ok_or_else(|| not_found("exchange", exchange))?;
            let mut queues: Vec<String> = bindings
                .iter()
                .filter(|(pattern, _)| topic_matches(pattern, &message.routing_key))
                .map(|(_, queue)| queue.clone())
                .collect();
            // A queue bound twice gets the message once.
            queues.sort();
            queues.dedup();
            queues
        };
        let routed = !queues.is_empty();
        // A copy for each queue but the last, which takes the message.
        let mut message = Some(message);
        for (i, name) in queues.iter().enumerate() {
            let copy = if i + 1 == queues.len() {
                message.take()
            } else {
                message.clone()
            };
            if let (Some(queue), Some(copy)) = (state.queues.get_mut(name), copy) {
                queue.ready.push_back(copy);
                queue.notify.notify_one();
            }
        }
        Ok(routed)
    }

    /// Takes the next message of `queue` (acknowledged at once).
    pub fn take(&self, queue: &str) -> Option<InProcessMessage> {
        self.state().queues.get_mut(queue)?.ready.pop_front()
    }

    /// How many messages wait in `queue`.
    pub fn len(&self, queue: &str) -> usize {
        self.state().queues.get(queue).map_or(0, |q| q.ready.len())
    }

    /// Whether `queue` is empty (or does not exist).
    pub fn is_empty(&self, queue: &str) -> bool {
        self.len(queue) == 0
    }

    /// A service on this broker: its publisher (for the outbox relay), its
    /// topology and its consumer.
    pub fn service(&self, options: ConsumerOptions) -> InProcessService {
        InProcessService {
            broker: self.clone(),
            options: Arc::new(options),
            warned: Arc::default(),
        }
    }

    /// Puts a message back at the head of its queue (a delivery that was
    /// not acknowledged).
    fn requeue(&self, queue: &str, message: InProcessMessage) {
        if let Some(queue) = self.state().queues.get_mut(queue) {
            queue.ready.push_front(message);
            queue.notify.notify_one();
        }
    }

    fn notify(&self, queue: &str) -> Option<Arc<Notify>> {
        self.state().queues.get(queue).map(|q| q.notify.clone())
    }

    fn active(&self, queue: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.state().queues.get(queue).map(|q| q.active.clone())
    }
}

fn not_found(what: &str, name: &str) -> Error {
    Error::Broker(format!("no {what} named `{name}` is declared").into())
}

/// A service on the in-process broker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct InProcessService {
    broker: InProcessBroker,
    options: Arc<ConsumerOptions>,
    /// The topology's warnings were logged.
    warned: Arc<std::sync::atomic::AtomicBool>,
}

impl InProcessService {
    /// The options.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// The broker.
    pub fn broker(&self) -> &InProcessBroker {
        &self.broker
    }

    /// The topology of `bus` here (as on RabbitMQ). Declaring it logs its
    /// warnings, once.
    pub fn topology(&self, bus: &MessageBus) -> Topology {
        self.options.topology(bus)
    }

    /// Declares the exchange, the service queue bound to what `bus`
    /// consumes (and unbound from what it no longer does), and the
    /// dead-letter queue.
    pub fn declare_topology(&self, bus: &MessageBus) {
        self.declare(bus);
    }

    /// Declares the topology of `bus`, and returns it.
    fn declare(&self, bus: &MessageBus) -> Topology {
        let o = &self.options;
        let topology = self.topology(bus);
        topology.log_once(&o.queue, &self.warned);
        let broker = &self.broker;
        broker.declare_exchange(&o.exchange);
        broker.declare_queue(&o.queue);
        broker.declare_queue(&o.dead_letter_queue());
        for name in topology.bindings() {
            broker
                .bind(&o.queue, &o.exchange, name)
                .expect("declared just above");
        }
        // The ordered messages' slots, each to its partition.
        let ordered = topology.ordered();
        if !ordered.is_empty() {
            for queue in o.partition_queues() {
                broker.declare_queue(&queue);
            }
            for name in ordered {
                for slot in 0..ORDERING_SLOTS {
                    broker
                        .bind(
                            &o.partition_of_slot(slot),
                            &o.exchange,
                            &slot_routing_key(name, slot),
                        )
                        .expect("declared just above");
                }
            }
        }
        let bound: Vec<String> = broker
            .bindings(&o.queue)
            .into_iter()
            .filter(|(exchange, _)| *exchange == o.exchange)
            .map(|(_, pattern)| pattern)
            .collect();
        for name in topology.stale(bound.iter().map(String::as_str)) {
            if bound.contains(&name) {
                broker.unbind(&o.queue, &o.exchange, &name);
                tracing::info!(queue = %o.queue, name, "removed a binding this service no longer needs");
            }
        }
        topology
    }

    /// The outbox relay's publisher: mandatory publishing to the exchange,
    /// as this service.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        self.broker.declare_exchange(&self.options.exchange);
        Arc::new(self.clone())
    }

    /// The consumer entrypoint of `bus` on the service queue.
    pub fn consumer(&self, bus: MessageBus) -> InProcessConsumer {
        InProcessConsumer {
            service: self.clone(),
            bus,
            metrics: Arc::new(ConsumerMetrics::default()),
        }
    }
}

impl Publisher for InProcessService {
    fn publish<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
    ) -> BoxFuture<'a, (Vec<Delivery>, Option<Error>)> {
        let mut deliveries = Vec::with_capacity(messages.len());
        let mut error = None;
        for message in messages {
            let mut message = InProcessMessage::new(message.clone(), Some(&self.options.queue));
            // A message with an ordering key goes to its key's slot.
            if let Some(route) = keyed_route(&message.message.name, &message.message.payload) {
                message.routing_key = route.routing_key;
            }
            match self.broker.publish(&self.options.exchange, message) {
                Ok(true) => deliveries.push(Delivery::Confirmed),
                Ok(false) => deliveries.push(Delivery::Unroutable),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        Box::pin(std::future::ready((deliveries, error)))
    }

    fn park<'a>(
        &'a self,
        messages: &'a [ExternalMessage],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let queue = self.options.unrouted_queue();
        self.broker.declare_queue(&queue);
        for message in messages {
            let mut parked = InProcessMessage::new(message.clone(), Some(&self.options.queue));
            parked.routing_key = queue.clone();
            parked.error = Some(reason.to_owned());
            let _ = self.broker.publish("", parked);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Consumes the service queue into the bus. Build it with
/// [`InProcessService::consumer`], then [`run`](Self::run) it.
pub struct InProcessConsumer {
    service: InProcessService,
    bus: MessageBus,
    metrics: Arc<ConsumerMetrics>,
}

impl fmt::Debug for InProcessConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessConsumer")
            .field("queue", &self.service.options.queue)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl InProcessConsumer {
    /// The consumer's counters (shared: read them while it runs).
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Declares the topology and consumes until `shutdown` resolves; then
    /// lets in-flight messages finish (up to the grace period) and returns
    /// the others to the queue.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let mut shutdown = pin!(shutdown);
        let o = self.service.options.clone();
        let broker = self.service.broker.clone();
        let topology = self.service.declare(&self.bus);
        let notify = broker
            .notify(&o.queue)
            .expect("the queue was declared just above");
        tracing::info!(queue = %o.queue, "consuming (in-process)");
        self.metrics.consuming.store(true, Ordering::SeqCst);

        // The ordered partitions: each consumed one message after another,
        // by one consumer at a time.
        let (stop_partitions, partitions_stop) = tokio::sync::watch::channel(false);
        let mut partitions = JoinSet::new();
        if !topology.ordered().is_empty() {
            for queue in o.partition_queues() {
                let handling = Handling {
                    bus: self.bus.clone(),
                    broker: broker.clone(),
                    options: o.clone(),
                    metrics: self.metrics.clone(),
                };
                partitions.spawn(handling.partition(queue, partitions_stop.clone()));
            }
        }

        let permits = Arc::new(Semaphore::new(o.concurrency));
        // What is being handled, to return to the queue if the shutdown
        // aborts it (shared with the handling task, not copied).
        let in_flight: Arc<Mutex<HashMap<u64, Arc<InProcessMessage>>>> = Arc::default();
        let next_tag = AtomicU64::new(0);
        let mut tasks = JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.as_mut() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            };
            let message = loop {
                let notified = notify.notified();
                if let Some(message) = broker.take(&o.queue) {
                    break Some(message);
                }
                tokio::select! {
                    _ = shutdown.as_mut() => break None,
                    _ = notified => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            };
            let Some(message) = message else { break };
            let message = Arc::new(message);
            let tag = next_tag.fetch_add(1, Ordering::Relaxed);
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tag, message.clone());
            let handling = Handling {
                bus: self.bus.clone(),
                broker: broker.clone(),
                options: o.clone(),
                metrics: self.metrics.clone(),
            };
            let in_flight = in_flight.clone();
            tasks.spawn(async move {
                handling.handle(message).await;
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&tag);
                drop(permit);
            });
        }
        self.metrics.consuming.store(false, Ordering::SeqCst);
        let _ = stop_partitions.send(true);
        let drained = tokio::time::timeout(o.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
            while partitions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight messages did not finish in time; they return to the queue");
            tasks.abort_all();
            partitions.abort_all();
            while tasks.join_next().await.is_some() {}
            while partitions.join_next().await.is_some() {}
        }
        let unfinished: Vec<InProcessMessage> = in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, m)| Arc::unwrap_or_clone(m))
            .collect();
        for message in unfinished {
            broker.requeue(&o.queue, message);
        }
        Ok(())
    }
}

/// What handling one delivery needs.
struct Handling {
    bus: MessageBus,
    broker: InProcessBroker,
    options: Arc<ConsumerOptions>,
    metrics: Arc<ConsumerMetrics>,
}

impl Handling {
    /// Consumes the ordered partition `queue` once this consumer is its
    /// active one: one message at a time, a failure retried in place. At
    /// `stop`, a message waiting for its retry returns to the head of the
    /// queue, and another consumer of the service becomes active.
    async fn partition(self, queue: String, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (Some(active), Some(notify)) = (self.broker.active(&queue), self.broker.notify(&queue))
        else {
            return;
        };
        let _active = tokio::select! {
            active = active.lock_owned() => active,
            _ = stopped(&mut stop) => return,
        };
        loop {
            let message = loop {
                let notified = notify.notified();
                if let Some(message) = self.broker.take(&queue) {
                    break Some(message);
                }
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => break None,
                    _ = notified => {}
                }
            };
            let Some(message) = message else { return };
            let _in_flight = self.metrics.in_flight_guard();
            let attempt = |failed_here| self.verdict(&message, failed_here);
            let name = &message.message.name;
            match in_order(
                attempt,
                &self.options.retry_delays,
                &self.metrics,
                name,
                &mut stop,
            )
            .await
            {
                Some(verdict) => self.settle(&message, verdict),
                None => {
                    self.broker.requeue(&queue, message);
                    return;
                }
            }
        }
    }

    async fn verdict(&self, message: &InProcessMessage, failed_here: u32) -> Verdict {
        let delivery = entrypoints::Received {
            name: &message.message.name,
            metadata: Ok(message.message.metadata),
            published_by: message.published_by.as_deref(),
            payload: &message.message.payload,
            failed_before: message.attempts.saturating_add(failed_here),
            unsettled_before: 0,
            trace: &message.message.trace,
            system: "eda.in_process",
        };
        verdict(&self.bus, &self.options.policy(), delivery).await
    }

    async fn handle(self, message: Arc<InProcessMessage>) {
        let _in_flight = self.metrics.in_flight_guard();
        let verdict = self.verdict(&message, 0).await;
        self.settle(&message, verdict);
    }

    /// Acts on the verdict: counts it, or sends the message to be retried
    /// (after the delay, as a retry queue would) or to the dead-letter
    /// queue.
    fn settle(&self, message: &InProcessMessage, verdict: Verdict) {
        let o = &self.options;
        match verdict {
            Verdict::Ack => {
                self.metrics.count(&message.message.name, Counted::Handled);
            }
            Verdict::Own => {
                self.metrics.own_events.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Retry { attempts, reason } => {
                let delay = retry_delay(&o.retry_delays, attempts);
                tracing::warn!(attempts, reason, ?delay, "message failed, retrying");
                self.metrics.count(&message.message.name, Counted::Retried);
                // The broker's retry queue: back to the service queue after
                // the delay, whatever the consumer does meanwhile.
                let (broker, queue) = (self.broker.clone(), o.queue.clone());
                let retried = InProcessMessage {
                    routing_key: queue.clone(),
                    attempts,
                    error: Some(reason),
                    ..message.clone()
                };
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = broker.publish("", retried);
                });
            }
            Verdict::DeadLetter { attempts, reason } => {
                tracing::error!(attempts, reason, "message dead-lettered");
                self.metrics
                    .count(&message.message.name, Counted::DeadLettered);
                let dead = InProcessMessage {
                    routing_key: o.dead_letter_queue(),
                    attempts,
                    error: Some(reason),
                    ..message.clone()
                };
                let _ = self.broker.publish("", dead);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn topics_match_as_on_rabbitmq() {
        assert!(topic_matches("orders.order_placed", "orders.order_placed"));
        assert!(!topic_matches(
            "orders.order_placed",
            "orders.order_cancelled"
        ));
        assert!(topic_matches("orders.*", "orders.order_placed"));
        assert!(!topic_matches("orders.*", "orders.a.b"));
        assert!(!topic_matches("*", "orders.a"));
        assert!(topic_matches("#", "orders.a.b"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("orders.#", "orders"));
        assert!(topic_matches("orders.#.placed", "orders.x.y.placed"));
        assert!(topic_matches("orders.#.placed", "orders.placed"));
        assert!(!topic_matches("orders.#.placed", "orders.x.cancelled"));
        assert!(topic_matches("*.*.placed", "a.b.placed"));
    }
}
