//! The consumer's gauge of deliveries in flight, on the in-process broker
//! (the RabbitMQ consumer counts with the same guard; the pair test over
//! RabbitMQ reads it at `/metrics`).
#![allow(missing_docs)]

use std::time::Duration;

use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

/// A command from the broker whose handler waits at a gate.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "metrics.hold", output = ())]
pub struct Hold;

#[derive(Clone)]
pub struct Gate(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Gate(std::sync::Arc::new(tokio::sync::Semaphore::new(0)))
    }
}
impl Adapter for Gate {}

#[command_handler(id = "metrics::hold")]
async fn hold(_: Hold, gate: &Gate) -> Result<(), BoxError> {
    let _pass = gate.0.acquire().await?;
    Ok(())
}

/// The consumer's in-flight gauge counts the deliveries being handled: one
/// while a handler waits, none once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_counts_the_deliveries_in_flight() {
    use eda_core::ExternalMessage;
    use eda_core::adapters::in_process::{InProcessBroker, InProcessMessage};
    use eda_core::entrypoints::ConsumerOptions;

    let gate = Gate::default();
    let bus = MessageBus::builder()
        .scope(module_path!())
        .adapter(InMemoryDatabase::new())
        .adapter(gate.clone())
        .accept::<Hold>()
        .build()
        .unwrap();
    let broker = InProcessBroker::new();
    let service = broker.service(ConsumerOptions::new("holder"));
    service.declare_topology(&bus);
    let consumer = service.consumer(bus.clone());
    let metrics = consumer.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    assert_eq!(metrics.in_flight(), 0);
    broker
        .publish(
            "eda.events",
            InProcessMessage::new(
                ExternalMessage {
                    name: "metrics.hold".into(),
                    metadata: Metadata::new(),
                    payload: b"null".to_vec(),
                    trace: Default::default(),
                },
                None,
            ),
        )
        .unwrap();
    let waited = std::time::Instant::now();
    while metrics.in_flight() != 1 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "never in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.0.add_permits(1);
    while metrics.handled() != 1 || metrics.in_flight() != 0 {
        assert!(waited.elapsed() < Duration::from_secs(10), "never handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
