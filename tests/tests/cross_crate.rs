//! Handlers declared in another crate (the allocation example) are found by
//! a bus built here, next to handlers declared in this crate that react to
//! that crate's events.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};

use allocation::adapters::notifications::{FakeNotifier, Notifications};
use allocation::domain::commands::{Allocate, CreateBatch};
use allocation::domain::events::Allocated;
use eda_core::{Adapter, InMemoryDatabase, MessageBus, event_handler};

/// Counts the allocations this crate saw.
#[derive(Default)]
pub struct AllocationCounter(AtomicUsize);
impl Adapter for AllocationCounter {}

#[event_handler]
async fn count_allocations(_: &Allocated, counter: &AllocationCounter) {
    counter.0.fetch_add(1, Ordering::SeqCst);
}

fn bus() -> MessageBus {
    MessageBus::builder()
        .scope("allocation")
        .scope(module_path!())
        .adapter(InMemoryDatabase::new())
        .adapter(Notifications::new(FakeNotifier::default()))
        .adapter(AllocationCounter::default())
        .build()
        .expect("wiring")
}

#[tokio::test]
async fn handlers_of_another_crate_are_wired_and_run() {
    let bus = bus();
    let names = bus.handled_message_names();
    for name in [
        "allocation.allocate",
        "allocation.create_batch",
        "allocation.change_batch_quantity",
        "allocation.allocated",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    bus.handle(CreateBatch::new("b1", "LAMP", 10, None))
        .await
        .unwrap();
    let batchref = bus.handle(Allocate::new("o1", "LAMP", 2)).await.unwrap();
    assert_eq!(batchref.as_deref(), Some("b1"));
    let counter = bus.adapter::<AllocationCounter>().unwrap();
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        1,
        "this crate's handler ran"
    );
}
