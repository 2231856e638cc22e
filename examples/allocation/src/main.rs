//! The allocation service.
//!
//! For now it runs a short scenario on the in-memory kit (an in-memory
//! database, an in-process external bus, and notifications written to the
//! log) and prints what happened. The Postgres repositories exist
//! (`allocation::adapters::postgres`, exercised by `tests/integration.rs`);
//! choosing the database from `DATABASE_URL`, the HTTP entrypoint (axum),
//! the RabbitMQ consumer and SQLite come in later issues.

use allocation::adapters::notifications::{LoggingNotifier, Notifications};
use allocation::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use allocation::domain::model::Product;
use eda_core::{InMemoryDatabase, InProcessBus, MessageBus};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();

    let db = InMemoryDatabase::new();
    let external = InProcessBus::new();
    // What other services would receive over RabbitMQ.
    let mut published = external.subscribe();
    let bus = MessageBus::builder()
        .adapter(db.clone())
        .adapter(external)
        .adapter(Notifications::new(LoggingNotifier))
        .scope("allocation")
        .build()?;

    let today = chrono::Local::now().date_naive();
    bus.handle(CreateBatch::new("batch1", "SMALL-TABLE", 50, None))
        .await?;
    bus.handle(CreateBatch::new("batch2", "SMALL-TABLE", 50, Some(today)))
        .await?;
    println!("created batch1 (50, in the warehouse) and batch2 (50, arriving {today})");

    for order in ["order1", "order2"] {
        let batchref = bus.handle(Allocate::new(order, "SMALL-TABLE", 20)).await?;
        println!("allocated {order} (20 SMALL-TABLE) to {batchref:?}");
    }

    bus.handle(ChangeBatchQuantity::new("batch1", 25)).await?;
    println!("changed batch1 to 25: an order was moved to batch2");

    let batchref = bus
        .handle(Allocate::new("order3", "SMALL-TABLE", 500))
        .await?;
    println!("allocated order3 (500 SMALL-TABLE) to {batchref:?} (out of stock: see the log)");

    match bus.handle(Allocate::new("order4", "NONEXISTENT", 1)).await {
        Ok(_) => println!("allocated order4?!"),
        Err(e) => println!("order4 refused: {e}"),
    }

    if let Some(product) = db.get::<Product>("SMALL-TABLE") {
        println!("SMALL-TABLE at version {}:", product.version_number);
        for batch in &product.batches {
            let orders: Vec<_> = batch.allocations().iter().map(|l| &l.orderid).collect();
            println!(
                "  {}: {} available, allocated to {orders:?}",
                batch.reference,
                batch.available_quantity()
            );
        }
    }

    println!("published to other services:");
    while let Ok(message) = published.try_recv() {
        println!(
            "  {} {}",
            message.name,
            String::from_utf8_lossy(&message.payload)
        );
    }
    Ok(())
}
