//! The RabbitMQ consumer entrypoint: messages of the service queue, handled
//! by the bus.
//!
//! For each delivery: the message is decoded by its name (the `type`
//! property), handled by [`MessageBus::handle_incoming`] (whose handlers
//! record it in their inbox in their own transaction), and acknowledged
//! once handled. A failure is retried through the retry queues, with the
//! attempt count in a header, then dead-lettered with the reason; a message
//! that cannot be handled at all (malformed, unknown name, no message id,
//! too large) is dead-lettered at once. A handler that panics is a failure
//! like any other. A copy sent to a retry or dead-letter queue is confirmed
//! by the broker before the original is acknowledged, so nothing is lost
//! (and a crash in between means a duplicate, which the inbox removes).
//!
//! The consumer never stops on bad input. When the connection breaks, it
//! reconnects with backoff and declares its topology again; unacknowledged
//! deliveries return to the queue. On shutdown it stops consuming, lets
//! in-flight messages finish (up to the grace period), and returns the rest
//! to the broker.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_core::Stream;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::adapters::rabbitmq::{
    ATTEMPTS_HEADER, ERROR_HEADER, QueueType, RabbitMq, long_string, metadata, short, trace_context,
};
use crate::bus::MessageBus;
use crate::entrypoints::{
    self, ConsumerMetrics, Counted, Verdict, in_order, retry_delay, stopped, verdict,
};
use crate::error::Error;
use crate::message::MessageId;
use crate::retry::Backoff;

/// Consumes the service queue into the bus. Build it with
/// [`RabbitMq::consumer`], then [`run`](Self::run) it.
pub struct RabbitMqConsumer {
    rabbitmq: RabbitMq,
    bus: MessageBus,
    metrics: Arc<ConsumerMetrics>,
}

impl fmt::Debug for RabbitMqConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConsumer")
            .field("rabbitmq", &self.rabbitmq)
            .field("metrics", &self.metrics)
            .finish()
    }
}

// Here, not beside the adapter: the entrypoint depends on the adapter,
// never the reverse.
impl RabbitMq {
    /// The consumer entrypoint of `bus` on the service queue.
    pub fn consumer(&self, bus: MessageBus) -> RabbitMqConsumer {
        RabbitMqConsumer::new(self.clone(), bus)
    }
}

impl RabbitMqConsumer {
    pub(crate) fn new(rabbitmq: RabbitMq, bus: MessageBus) -> Self {
        RabbitMqConsumer {
            rabbitmq,
            bus,
            metrics: Arc::new(ConsumerMetrics::default()),
        }
    }

    /// The consumer's counters (shared: read them while it runs).
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Declares the topology and consumes until `shutdown` resolves,
    /// reconnecting whenever the broker or the connection fails. Returns
    /// once in-flight messages finished or were returned to the broker.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let mut shutdown = pin!(shutdown);
        let (initial, max) = self.rabbitmq.options().reconnect;
        let mut backoff = Backoff::new(initial, max);
        loop {
            match self.session(shutdown.as_mut()).await {
                Ok(()) => return Ok(()),
                // A queue that cannot serve as configured stays so until an
                // operator acts: said once, not retried forever.
                Err(e @ Error::Topology { .. }) => {
                    tracing::error!(error = %e, "consumer cannot start");
                    return Err(e);
                }
                Err(e) => {
                    self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "consumer lost the broker, reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.as_mut() => return Ok(()),
                    }
                }
            }
        }
    }

    /// One connection's life: `Ok` on shutdown, `Err` when the broker failed.
    async fn session(
        &self,
        mut shutdown: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<(), Error> {
        let options = self.rabbitmq.options().clone();
        let channel = self.rabbitmq.channel().await?;
        let publish = self.rabbitmq.confirm_channel().await?;
        let topology = self.rabbitmq.topology(&self.bus);
        let queue_type = self
            .rabbitmq
            .declare_service_topology(&channel, &topology)
            .await?;
        let bindings = topology.bindings();
        let amqp = |e: lapin::Error| Error::Broker(e.to_string().into());
        channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp)?;
        let tag = format!("{}-{}", options.consumer.queue, MessageId::new());
        let mut consumer = channel
            .basic_consume(
                short(&options.consumer.queue),
                short(&tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
        tracing::info!(queue = %options.consumer.queue, bindings = ?bindings, "consuming");

        // The ordered partitions: each consumed one message after another.
        let handling = Handling {
            bus: self.bus.clone(),
            rabbitmq: self.rabbitmq.clone(),
            publish: publish.clone(),
            metrics: self.metrics.clone(),
            queue_type,
        };
        let (stop_partitions, partitions_stop) = watch::channel(false);
        let mut partitions = JoinSet::new();
        if !topology.ordered().is_empty() {
            for queue in options.consumer.partition_queues() {
                let channel = self.rabbitmq.channel().await?;
                partitions.spawn(partition(
                    handling.clone(),
                    channel,
                    queue,
                    partitions_stop.clone(),
                ));
            }
        }
        self.metrics.consuming.store(true, Ordering::SeqCst);

        let permits = Arc::new(Semaphore::new(options.consumer.concurrency));
        let mut in_flight = JoinSet::new();
        let outcome = loop {
            tokio::select! {
                _ = shutdown.as_mut() => break Ok(()),
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                Some(ended) = partitions.join_next(), if !partitions.is_empty() => {
                    break Err(match ended {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => Error::Broker("an ordered partition's consumer ended".into()),
                        Err(e) => Error::Broker(format!("an ordered partition's consumer failed: {e}").into()),
                    });
                }
                permit = permits.clone().acquire_owned() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let next = tokio::select! {
                        next = poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)) => next,
                        _ = shutdown.as_mut() => break Ok(()),
                    };
                    match next {
                        Some(Ok(delivery)) => {
                            let handling = handling.clone();
                            in_flight.spawn(async move {
                                handling.handle(delivery).await;
                                drop(permit);
                            });
                        }
                        Some(Err(e)) => break Err(amqp(e)),
                        None => break Err(Error::Broker("the broker cancelled the consumer".into())),
                    }
                }
            }
        };
        self.metrics.consuming.store(false, Ordering::SeqCst);
        // Stop taking work, let in-flight messages finish, return the rest.
        let _ = channel
            .basic_cancel(short(&tag), BasicCancelOptions::default())
            .await;
        let _ = stop_partitions.send(true);
        let drained = tokio::time::timeout(options.consumer.shutdown_grace, async {
            while in_flight.join_next().await.is_some() {}
            while partitions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight messages did not finish in time; they return to the broker");
            in_flight.abort_all();
            partitions.abort_all();
        }
        let _ = channel.close(200, "bye".into()).await;
        let _ = publish.close(200, "bye".into()).await;
        outcome
    }
}

/// Consumes one ordered partition: one message at a time, each settled
/// (handled, or dead-lettered after its attempts, retried in place) before
/// the next is taken, so that the messages of a key are handled in the
/// order they were published. `Ok` once `stop` is set; `Err` when the
/// channel failed.
async fn partition(
    handling: Handling,
    channel: Channel,
    queue: String,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let amqp = |e: lapin::Error| Error::Broker(format!("{queue}: {e}").into());
    channel
        .basic_qos(
            handling.rabbitmq.options().prefetch,
            BasicQosOptions::default(),
        )
        .await
        .map_err(amqp)?;
    let tag = format!("{queue}-{}", MessageId::new());
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short(&tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    loop {
        let next = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            next = poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)) => next,
        };
        match next {
            Some(Ok(delivery)) => handling.handle_in_order(delivery, &mut stop).await,
            Some(Err(e)) => return Err(amqp(e)),
            None => {
                return Err(Error::Broker(
                    format!("{queue}: the broker cancelled the consumer").into(),
                ));
            }
        }
    }
    // Closed, not cancelled first: the broker returns what this consumer
    // took and did not handle to its place, and only then makes another
    // instance's consumer active (a cancel would make it active while
    // those are still out, and it would take the ones behind them).
    let _ = channel.close(200, "bye".into()).await;
    Ok(())
}

/// What handling one delivery needs.
#[derive(Clone)]
struct Handling {
    bus: MessageBus,
    rabbitmq: RabbitMq,
    publish: Channel,
    metrics: Arc<ConsumerMetrics>,
    /// The service queue's type: a quorum queue counts deliveries.
    queue_type: QueueType,
}

/// The header a quorum queue sets on each delivery: how many times it was
/// delivered before and not settled.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How many times the message failed before, from its header: 0 when it is
/// missing, negative or of another type, `u32::MAX` at most.
fn attempts(properties: &BasicProperties) -> u32 {
    count_header(properties, ATTEMPTS_HEADER)
}

/// A count in a header: 0 when it is missing, negative or of another type,
/// `u32::MAX` at most.
fn count_header(properties: &BasicProperties, header: &str) -> u32 {
    match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(header))
    {
        Some(AMQPValue::LongLongInt(n)) => (*n).clamp(0, u32::MAX as i64) as u32,
        Some(AMQPValue::LongInt(n)) => (*n).max(0) as u32,
        Some(AMQPValue::LongUInt(n)) => *n,
        _ => 0,
    }
}

/// A delivery's message name: its `type`, or its routing key.
fn name(delivery: &Delivery) -> &str {
    match delivery.properties.kind() {
        Some(kind) => kind.as_str(),
        None => delivery.routing_key.as_str(),
    }
}

impl Handling {
    async fn handle(self, delivery: Delivery) {
        let _in_flight = self.metrics.in_flight_guard();
        let verdict = self.verdict_after(&delivery, 0).await;
        self.settle(&delivery, verdict).await;
    }

    /// Handles a delivery of an ordered partition: a failure is retried
    /// here (see [`in_order`]); at shutdown, a message waiting for its
    /// retry returns to the queue, at its place.
    async fn handle_in_order(&self, delivery: Delivery, stop: &mut watch::Receiver<bool>) {
        let _in_flight = self.metrics.in_flight_guard();
        let delays = &self.rabbitmq.options().consumer.retry_delays;
        let attempt = |failed_here| self.verdict_after(&delivery, failed_here);
        match in_order(attempt, delays, &self.metrics, name(&delivery), stop).await {
            Some(verdict) => self.settle(&delivery, verdict).await,
            None => {
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
    }

    /// Acts on the verdict: acknowledges, or sends a copy to a retry queue
    /// or the dead-letter queue (confirmed) and then acknowledges; returns
    /// the delivery to the queue if the copy could not be sent.
    async fn settle(&self, delivery: &Delivery, verdict: Verdict) {
        let settled = match &verdict {
            Verdict::Ack | Verdict::Own => Ok(()),
            Verdict::Retry { attempts, reason } => {
                let options = self.rabbitmq.options();
                let delay = retry_delay(&options.consumer.retry_delays, *attempts);
                tracing::warn!(attempts, reason, ?delay, "message failed, retrying");
                self.forward(delivery, &options.retry_queue(delay), *attempts, reason)
                    .await
                    .map(|()| self.metrics.count(name(delivery), Counted::Retried))
            }
            Verdict::DeadLetter { attempts, reason } => {
                tracing::error!(attempts, reason, "message dead-lettered");
                let queue = self.rabbitmq.options().consumer().dead_letter_queue();
                self.forward(delivery, &queue, *attempts, reason)
                    .await
                    .map(|()| self.metrics.count(name(delivery), Counted::DeadLettered))
            }
        };
        match settled {
            Ok(()) => {
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    // The channel broke: the broker delivers it again, and
                    // the inbox makes that harmless.
                    tracing::warn!(error = %e, "could not acknowledge; the message will be redelivered");
                } else if matches!(verdict, Verdict::Ack) {
                    self.metrics.count(name(delivery), Counted::Handled);
                } else if matches!(verdict, Verdict::Own) {
                    self.metrics.own_events.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not forward the message; returning it to the queue");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
        }
    }

    /// The verdict, counting `failed_here` failures of this delivery (an
    /// ordered partition retries in place) after those of its header.
    async fn verdict_after(&self, delivery: &Delivery, failed_here: u32) -> Verdict {
        let options = self.rabbitmq.options();
        let policy = options.consumer.policy();
        let trace = trace_context(&delivery.properties);
        let incoming = entrypoints::Received {
            name: name(delivery),
            metadata: metadata(&delivery.properties),
            published_by: delivery.properties.app_id().as_ref().map(|s| s.as_str()),
            payload: &delivery.data,
            failed_before: attempts(&delivery.properties).saturating_add(failed_here),
            // Only a quorum queue counts (anyone could publish the header).
            unsettled_before: match self.queue_type {
                QueueType::Quorum => count_header(&delivery.properties, DELIVERY_COUNT_HEADER),
                QueueType::Classic => 0,
            },
            trace: &trace,
            system: "rabbitmq",
        };
        verdict(&self.bus, &policy, incoming).await
    }

    /// Publishes a copy of the delivery to `queue` (through the default
    /// exchange), with the attempt count and the reason, and waits for the
    /// broker's confirmation.
    async fn forward(
        &self,
        delivery: &Delivery,
        queue: &str,
        attempts: u32,
        reason: &str,
    ) -> Result<(), Error> {
        // The delivery count was this queue's; the copy starts afresh
        // wherever it goes (a quorum queue sets its own, a classic one
        // would keep it).
        let mut headers: FieldTable = delivery
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                let mut h = h.inner().clone();
                h.remove(DELIVERY_COUNT_HEADER);
                h.into()
            })
            .unwrap_or_default();
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        headers.insert(ERROR_HEADER.into(), long_string(reason));
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let confirm = self
            .publish
            .basic_publish(
                short(""),
                short(queue),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                properties,
            )
            .await
            .map_err(|e| Error::Broker(e.to_string().into()))?
            .await
            .map_err(|e| Error::Broker(e.to_string().into()))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Error::Broker(
                format!("queue {queue} does not exist").into(),
            )),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Broker(
                format!("the broker did not confirm the copy to {queue}").into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_attempts(value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS_HEADER.into(), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn the_attempts_header_is_read_within_u32() {
        assert_eq!(attempts(&BasicProperties::default()), 0);
        assert_eq!(attempts(&with_attempts(AMQPValue::LongLongInt(3))), 3);
        assert_eq!(attempts(&with_attempts(AMQPValue::LongLongInt(-1))), 0);
        assert_eq!(
            attempts(&with_attempts(AMQPValue::LongLongInt(i64::MAX))),
            u32::MAX
        );
        assert_eq!(attempts(&with_attempts(AMQPValue::LongInt(i32::MIN))), 0);
        assert_eq!(
            attempts(&with_attempts(AMQPValue::LongUInt(u32::MAX))),
            u32::MAX
        );
        assert_eq!(attempts(&with_attempts(AMQPValue::Boolean(true))), 0);
    }
}
