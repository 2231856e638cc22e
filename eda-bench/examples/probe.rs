#![allow(missing_docs)]
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let conn = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = "probe.q";
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let payload = br#"{"sku":"sku-1","qty":999999,"seq":12345}"#;
    let props = || {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id("0190a0a0-0000-7000-8000-000000000000".into())
            .with_type("bench.reserved".into())
            .with_content_type("application/json".into())
    };
    for size in [1usize, 10, 100, 250] {
        for mode in ["sequential", "concurrent"] {
            let mut sends = Vec::new();
            let mut confs = Vec::new();
            for _ in 0..5 {
                let t0 = Instant::now();
                let mut confirms = Vec::new();
                if mode == "sequential" {
                    for _ in 0..size {
                        confirms.push(
                            ch.basic_publish(
                                "".into(),
                                q.into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..Default::default()
                                },
                                payload,
                                props(),
                            )
                            .await
                            .unwrap(),
                        );
                    }
                } else {
                    let futs: Vec<_> = (0..size)
                        .map(|_| {
                            ch.basic_publish(
                                "".into(),
                                q.into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..Default::default()
                                },
                                payload,
                                props(),
                            )
                        })
                        .collect();
                    for c in join_all(futs).await {
                        confirms.push(c.unwrap());
                    }
                }
                let t1 = Instant::now();
                for c in confirms {
                    c.await.unwrap();
                }
                let t2 = Instant::now();
                sends.push((t1 - t0).as_secs_f64() * 1000.0);
                confs.push((t2 - t1).as_secs_f64() * 1000.0);
            }
            println!(
                "{size:>4} {mode:<10} send ms {:?}  confirm ms {:?}",
                sends
                    .iter()
                    .map(|x| (x * 100.0).round() / 100.0)
                    .collect::<Vec<_>>(),
                confs
                    .iter()
                    .map(|x| (x * 100.0).round() / 100.0)
                    .collect::<Vec<_>>()
            );
        }
    }
    ch.queue_delete(q.into(), Default::default()).await.unwrap();
}

async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    // Poll all in order, each until done (a minimal join_all).
    let mut futs: Vec<_> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}
