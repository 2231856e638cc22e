//! End to end: the real `allocation` binary started as a process, real HTTP,
//! real Postgres and RabbitMQ (each test with its own schema, exchange and
//! queue, so tests run in parallel and again). APwP's end-to-end scenarios,
//! and: poison on the queue, two instances sharing the work, SIGTERM under
//! load.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use eda_core::adapters::rabbitmq::{ERROR_HEADER, header_string};
use eda_core::sqlx;
use eda_core::testing::unique_name;
use eda_tests::{Service, World, eventually};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};

#[tokio::test]
async fn happy_path_returns_201_and_allocated_batch() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let sku = unique_name("sku");
    service
        .add_batch("later", &sku, 100, Some("2011-01-02"))
        .await;
    service
        .add_batch("earlier", &sku, 100, Some("2011-01-01"))
        .await;
    service
        .add_batch("other", &unique_name("sku"), 100, None)
        .await;
    let (status, body) = service
        .post("/allocate", json!({"orderid": "o1", "sku": sku, "qty": 3}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(body, json!({"batchref": "earlier"}));
    // The read model is kept by an event handler, after the command.
    eventually(
        "the allocation is readable",
        Duration::from_secs(5),
        || async {
            service.get("/allocations/o1").await
                == (200, json!([{"sku": sku, "batchref": "earlier"}]))
        },
    )
    .await;
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn unhappy_path_returns_400_and_error_message() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let (status, body) = service
        .post(
            "/allocate",
            json!({"orderid": "o2", "sku": "UNKNOWN-SKU", "qty": 20}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"message": "Invalid sku UNKNOWN-SKU"}));
    assert_eq!(service.get("/allocations/o2").await.0, 404);
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn change_batch_quantity_leads_to_reallocation() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let allocated = world.observe("allocation.allocated").await;
    let (orderid, sku) = (unique_name("order"), unique_name("sku"));
    let (earlier, later) = (unique_name("batch"), unique_name("batch"));
    service
        .add_batch(&earlier, &sku, 10, Some("2011-01-01"))
        .await;
    service
        .add_batch(&later, &sku, 10, Some("2011-01-02"))
        .await;
    let (status, body) = service
        .post(
            "/allocate",
            json!({"orderid": orderid, "sku": sku, "qty": 10}),
        )
        .await;
    assert_eq!((status, body), (201, json!({"batchref": earlier})));
    // The first allocation's event.
    eventually(
        "the first allocation is published",
        Duration::from_secs(3),
        || async { world.take(&allocated).await.is_some() },
    )
    .await;

    // Another service changes the batch quantity, over RabbitMQ.
    world
        .publish(
            "allocation.change_batch_quantity",
            &json!({"batchref": earlier, "qty": 5}),
        )
        .await;
    let start = Instant::now();
    let mut message = None;
    while message.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no reallocation within 3 s"
        );
        message = world.take(&allocated).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body: Value = serde_json::from_slice(&message.unwrap().data).unwrap();
    assert_eq!(
        body,
        json!({"orderid": orderid, "sku": sku, "qty": 10, "batchref": later})
    );
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dead_letter_queue_and_the_service_keeps_serving() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let sku = unique_name("sku");
    service.add_batch("b1", &sku, 10, None).await;
    // Malformed: not the fields of the command.
    world
        .publish(
            "allocation.change_batch_quantity",
            &json!({"batch": "b1", "quantity": "many"}),
        )
        .await;
    let dlq = format!("{}.dlq", world.queue);
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        if let Some(dead) = world.take(&dlq).await {
            break dead;
        }
        assert!(Instant::now() < deadline, "the poison is not dead-lettered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let reason = header_string(&dead.properties, ERROR_HEADER).unwrap();
    assert!(
        reason.contains("malformed `allocation.change_batch_quantity`"),
        "{reason}"
    );
    // Still serving, over HTTP and over RabbitMQ.
    let (status, _) = service
        .post("/allocate", json!({"orderid": "o1", "sku": sku, "qty": 4}))
        .await;
    assert_eq!(status, 201);
    world
        .publish(
            "allocation.change_batch_quantity",
            &json!({"batchref": "b1", "qty": 6}),
        )
        .await;
    eventually(
        "the good message is handled",
        Duration::from_secs(5),
        || async {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT purchased_quantity FROM \"{}\".batches WHERE reference = 'b1'",
                world.schema
            ))
            .fetch_one(&world.pool)
            .await
            .is_ok_and(|q| q == 6)
        },
    )
    .await;
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn two_instances_share_a_stream_of_commands_and_publish_every_event_once() {
    let Some(world) = World::new().await else {
        return;
    };
    let first = Service::start(&world).await;
    let second = Service::start(&world).await;
    let allocated = world.observe("allocation.allocated").await;
    let total = 100;
    let skus: Vec<String> = (0..10).map(|_| unique_name("sku")).collect();
    for (i, sku) in skus.iter().enumerate() {
        first
            .add_batch(&format!("batch-{i}"), sku, 1000, None)
            .await;
    }
    let orders: Vec<String> = (0..total).map(|i| format!("order-{i}")).collect();
    for (i, orderid) in orders.iter().enumerate() {
        world
            .publish(
                "allocation.allocate",
                &json!({"orderid": orderid, "sku": skus[i % skus.len()], "qty": 1}),
            )
            .await;
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT count(*) FROM \"{}\".allocations",
            world.schema
        ))
        .fetch_one(&world.pool)
        .await
        .unwrap()
    };
    eventually(
        "every command is handled",
        Duration::from_secs(30),
        || async { count().await == total as i64 },
    )
    .await;
    // Both instances consumed from the queue.
    let consumers = world
        .channel()
        .await
        .queue_declare(
            world.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .consumer_count();
    assert_eq!(consumers, 2);
    // Every event published once (one relay holds the outbox lease).
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} events published",
            ids.len()
        );
        while let Some(m) = world.take(&allocated).await {
            ids.push(m.properties.message_id().as_ref().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(m) = world.take(&allocated).await {
        ids.push(m.properties.message_id().as_ref().unwrap().to_string());
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (total, total),
        "each event exactly once"
    );
    assert_eq!(first.terminate().await, 0);
    assert_eq!(second.terminate().await, 0);
    world.cleanup().await;
}

#[tokio::test]
async fn sigterm_during_load_loses_nothing() {
    let Some(world) = World::new().await else {
        return;
    };
    let service = Service::start(&world).await;
    let allocated = world.observe("allocation.allocated").await;
    let sku = unique_name("sku");
    service.add_batch("b1", &sku, 100_000, None).await;
    let base = service.base.clone();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut succeeded = Vec::new();
        for i in 0..5000 {
            let orderid = format!("order-{i}");
            let body = json!({"orderid": orderid, "sku": sku, "qty": 1});
            match http
                .post(format!("{base}/allocate"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() == 201 => succeeded.push(orderid),
                // Refused or cut off by the shutdown: not acknowledged, so
                // it may or may not have happened; it must not be half-done.
                _ => {}
            }
        }
        succeeded
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(service.terminate().await, 0, "a graceful exit");
    let succeeded = load.await.unwrap();
    assert!(!succeeded.is_empty(), "some load ran before the signal");
    // Every acknowledged allocation is saved, and its event was published
    // (the relay flushed the outbox before the process exited).
    let saved: HashSet<String> = sqlx::query_scalar::<_, String>(&format!(
        "SELECT orderid FROM \"{}\".allocations",
        world.schema
    ))
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for orderid in &succeeded {
        assert!(
            saved.contains(orderid),
            "{orderid} was acknowledged but not saved"
        );
    }
    let unsent: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".eda_outbox WHERE sent_at IS NULL",
        world.schema
    ))
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(unsent, 0, "the outbox was flushed");
    let mut published = HashSet::new();
    while let Some(m) = world.take(&allocated).await {
        let body: Value = serde_json::from_slice(&m.data).unwrap();
        published.insert(body["orderid"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        published, saved,
        "every saved allocation was published, nothing else"
    );
    world.cleanup().await;
}
