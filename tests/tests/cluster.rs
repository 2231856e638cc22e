//! The three-node RabbitMQ cluster of `eda_tests::cluster`, against a real
//! quorum queue: what was confirmed survives the crash of the queue's
//! leader, and the crashed node comes back into the cluster.
//!
//! Skipped when RabbitMQ is not installed, except under `CI=true`. Prints
//! one `FIGURES {json}` line with the timings (`--nocapture` shows it).
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use eda_core::testing::unique_name;
use eda_tests::cluster::Cluster;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

const MESSAGES: usize = 100;
/// Taken, not acknowledged, over a connection to the leader when it dies.
const HELD: usize = 10;

async fn channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// `x-delivery-count` of a delivery, if it has one.
fn delivery_count(properties: &BasicProperties) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-delivery-count")? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        other => panic!("x-delivery-count is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_keeps_its_messages_when_its_leader_crashes() {
    let started = Instant::now();
    let Some(cluster) = Cluster::start_or_skip(3).await else {
        return;
    };
    let start_time = started.elapsed();
    assert_eq!(cluster.running_nodes().await.unwrap(), vec![0, 1, 2]);
    eprintln!(
        "3 nodes up in {start_time:?}: {:?} {:?}",
        (0..3).map(|i| cluster.node_name(i)).collect::<Vec<_>>(),
        cluster.amqp_urls()
    );

    // A durable quorum queue, declared on node 0, and 100 persistent
    // messages, each confirmed.
    let queue = unique_name("cluster_smoke");
    let (_c0, ch0) = channel(&cluster.amqp_url(0)).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch0.queue_declare(queue.as_str().into(), durable, arguments)
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for k in 0..MESSAGES {
        let confirm = ch0
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("message {k:03}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack(), "a publication was nacked");
    }
    let expected: BTreeSet<String> = (0..MESSAGES).map(|k| format!("message {k:03}")).collect();

    let old_leader = cluster.wait_for_leader(&queue, |_| true).await;
    eprintln!("leader of {queue}: node {old_leader}");

    // Some messages taken, not acknowledged, on a connection to the leader.
    let (holder, held_channel) = channel(&cluster.amqp_url(old_leader)).await;
    for _ in 0..HELD {
        held_channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message to hold");
    }

    // The leader crashes.
    let t = Instant::now();
    cluster.kill_node(old_leader).await.unwrap();
    let kill_time = t.elapsed();
    assert!(!cluster.is_running(old_leader));
    let t = Instant::now();
    let new_leader = cluster.wait_for_leader(&queue, |l| l != old_leader).await;
    let election_time = t.elapsed();
    assert!(cluster.is_running(new_leader));
    eprintln!(
        "node {old_leader} killed in {kill_time:?}; node {new_leader} leads after {election_time:?}"
    );
    drop(holder);

    // All 100 from a survivor: each once, nothing else.
    let survivor = (0..3).find(|&i| i != old_leader).unwrap();
    let (_c1, ch1) = channel(&cluster.amqp_url(survivor)).await;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut redelivered = 0;
    let mut counts = Vec::new();
    while got.len() < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "only {} of {MESSAGES} messages within 60 s",
            got.len()
        );
        let Some(message) = ch1
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        else {
            // The held ones come back when the queue learns that their
            // consumer's node is gone.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let delivery = message.delivery;
        redelivered += usize::from(delivery.redelivered);
        if let Some(count) = delivery_count(&delivery.properties) {
            counts.push(count);
        }
        got.push(String::from_utf8(delivery.data.clone()).unwrap());
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let consume_time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = ch1
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap();
    assert!(extra.is_none(), "a message more than was published");
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), MESSAGES);
    assert_eq!(distinct, expected, "every message, once");
    eprintln!(
        "{MESSAGES} consumed from node {survivor} in {consume_time:?}: \
         {redelivered} redelivered, x-delivery-count {counts:?}"
    );
    assert_eq!(
        redelivered, HELD,
        "the messages held over the dead node come back, marked redelivered"
    );

    // The crashed node comes back, into the cluster.
    let t = Instant::now();
    cluster.start_node(old_leader).await.unwrap();
    let restart_time = t.elapsed();
    assert_eq!(cluster.running_nodes().await.unwrap(), vec![0, 1, 2]);
    let leader_now = cluster.leader_of(&queue).await.unwrap();
    assert!(cluster.is_running(leader_now));
    eprintln!("node {old_leader} back in {restart_time:?}; node {leader_now} leads");

    // Dropping the cluster ends its nodes and removes its directory.
    let dir = cluster.dir().to_path_buf();
    let urls = cluster.amqp_urls();
    let t = Instant::now();
    drop(cluster);
    let drop_time = t.elapsed();
    assert!(!dir.exists(), "{} is left", dir.display());
    for url in urls {
        let address = url
            .trim_start_matches("amqp://guest:guest@")
            .trim_end_matches("/%2f");
        assert!(
            TcpStream::connect(address).is_err(),
            "{address} still accepts connections"
        );
    }
    println!(
        "FIGURES {}",
        json!({
            "start_ms": start_time.as_millis(),
            "kill_ms": kill_time.as_millis(),
            "election_ms": election_time.as_millis(),
            "consume_ms": consume_time.as_millis(),
            "restart_ms": restart_time.as_millis(),
            "drop_ms": drop_time.as_millis(),
            "total_ms": started.elapsed().as_millis(),
            "redelivered": redelivered,
            "delivery_counts": counts,
        })
    );
}
