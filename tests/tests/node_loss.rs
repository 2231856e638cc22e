//! The `allocation` binary on a three-node RabbitMQ cluster of the test's
//! own (`eda_tests::cluster`), its queues quorum queues (the default), its
//! `AMQP_URL` the three nodes: the node that leads the service queue is
//! killed (SIGKILL of its VM) in the middle of a stream of commands (HTTP,
//! and `allocation.allocate` waiting on the broker) and of the events they
//! raise; then the books (nothing acknowledged is lost, each order
//! allocated once, one event per order), the service still serving, and
//! the node back in the cluster.
//!
//! Skipped when RabbitMQ is not installed, except under `CI=true`. Prints
//! one `FIGURES {json}` line (`--nocapture` shows it): RELIABILITY.md.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use eda_tests::cluster::Cluster;
use eda_tests::{HttpLoad, Service, World, orders, publish_allocations};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_service_queue_dies_mid_stream_and_nothing_is_lost() {
    let Some(cluster) = Cluster::start_or_skip(3).await else {
        return;
    };
    let Some(world) = World::on_broker(cluster.amqp_urls().join(",")).await else {
        return;
    };
    let service = Service::start(&world).await;
    let observer = world.observe("allocation.allocated").await;
    let skus = service.stock(16).await;
    let queued = publish_allocations(&world, &orders("amqp", 500, &skus)).await;
    let load = HttpLoad::new(&service.base);
    let stream = load.run(orders("http", 1500, &skus), 8);

    load.when_sent(500).await;
    let killed = cluster.wait_for_leader(&world.queue, |_| true).await;
    cluster.kill_node(killed).await.unwrap();
    let killed_at = load.sent();
    let killed_time = Instant::now();
    let new_leader = cluster.wait_for_leader(&world.queue, |l| l != killed).await;
    let election = killed_time.elapsed();

    let outcome = stream.await.unwrap().merge(queued);
    let books = world
        .check_books(&observer, &outcome, Duration::from_secs(90))
        .await;
    books.assert_read_model();
    // `check_books` asserted the books (nothing acknowledged lost, each
    // order allocated once, one event per order).
    let settled = killed_time.elapsed();

    // Still serving, on the surviving nodes: a new order is allocated and
    // its event published.
    let sku = &skus[0];
    let (status, _) = service
        .post(
            "/allocate",
            json!({"orderid": "after-the-loss", "sku": sku, "qty": 1}),
        )
        .await;
    assert_eq!(status, 201);
    let deadline = Instant::now() + Duration::from_secs(30);
    'published: loop {
        for delivery in world.drain(&observer).await {
            let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
            if body["orderid"] == "after-the-loss" {
                break 'published;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the order placed after the loss was not published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node comes back, into the cluster.
    let restart = Instant::now();
    cluster.start_node(killed).await.unwrap();
    let restart = restart.elapsed();
    assert_eq!(cluster.running_nodes().await.unwrap(), vec![0, 1, 2]);

    println!(
        "FIGURES {}",
        json!({
            "scenario": "cluster_node_loss",
            "fault": format!(
                "SIGKILL of node {killed} (leading the service queue) after {killed_at} HTTP requests"
            ),
            "attempted": books.attempted,
            "acknowledged": books.acknowledged,
            "saved": books.saved,
            "lost": books.lost,
            "events": books.events,
            "duplicate_publications": books.duplicates,
            "failed": outcome.failed,
            "new_leader": new_leader,
            "election_ms": election.as_millis(),
            "settled_ms": settled.as_millis(),
            "rejoin_ms": restart.as_millis(),
        })
    );
    assert_eq!(service.terminate().await, 0);
    world.cleanup().await;
}
