//! Every shape a handler may have, run through a bus: no parameter after
//! the message up to the most (six), the message by value and by
//! reference, the unit of work first, in the middle or last, and every
//! kind of dependency; command and event handlers alike.

use std::sync::Mutex;

use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shapes.none", output = u32)]
pub struct NoParams(pub u32);

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shapes.uow_first", output = u32)]
pub struct UowFirst(pub u32);

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shapes.six", output = String)]
pub struct Six(pub u32);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shapes.noted")]
pub struct Noted(pub u32);

#[derive(Debug, Clone, Aggregate)]
pub struct Counter {
    #[aggregate(id)]
    pub id: u32,
    pub count: u32,
    pub version: u64,
    pub events: Events,
}

#[derive(Default)]
pub struct Log(pub Mutex<Vec<String>>);
impl Adapter for Log {}

pub struct Limit(pub u32);
impl Adapter for Limit {}

#[derive(UnitOfWork)]
pub struct CounterUow {
    #[uow(transaction)]
    tx: UowTransaction,
    counters: IdentityMap<Counter>,
}

#[command_handler]
async fn none(cmd: NoParams) -> Result<u32, BoxError> {
    Ok(cmd.0 + 1)
}

#[command_handler]
async fn uow_first(cmd: &UowFirst, uow: &mut CounterUow, log: &Log) -> Result<u32, BoxError> {
    let mut counter = Counter {
        id: cmd.0,
        count: cmd.0,
        version: 0,
        events: Events::new(),
    };
    counter.events.raise(Noted(cmd.0));
    uow.counters().add(counter)?;
    uow.commit().await?;
    log.0.lock().unwrap().push(format!("uow_first {}", cmd.0));
    Ok(cmd.0)
}

#[command_handler]
async fn six(
    cmd: Six,
    log: &Log,
    metadata: &Metadata,
    uow: &mut CounterUow,
    causation: &Causation,
    bus: &MessageBus,
    limit: &Limit,
) -> Result<String, CommandError<BoxError>> {
    let _ = (causation, bus.handled_message_names());
    let counter = uow.counters().get(&cmd.0).await?.ok_or("no counter")?;
    counter.count = (counter.count + 1).min(limit.0);
    let count = counter.count;
    uow.commit().await?;
    log.0.lock().unwrap().push(format!("six {count}"));
    Ok(format!("{count} {}", !metadata.message_id.as_uuid().is_nil()))
}

#[event_handler]
async fn noted(event: &Noted, log: &Log) {
    log.0.lock().unwrap().push(format!("noted {}", event.0));
}

#[event_handler]
async fn noted_by_value(event: Noted, uow: &mut CounterUow, metadata: &Metadata) -> Result<(), BoxError> {
    let _ = metadata;
    let counter = uow.counters().get(&event.0).await?.ok_or("no counter")?;
    counter.count += 10;
    uow.commit().await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .adapter(db.clone())
        .adapter(Log::default())
        .adapter(Limit(100))
        .build()
        .expect("the wiring is complete");
    assert_eq!(bus.handle(NoParams(1)).await.unwrap(), 2);
    assert_eq!(bus.handle(UowFirst(7)).await.unwrap(), 7);
    // 7, then 17 after `noted_by_value`, then 18.
    assert_eq!(bus.handle(Six(7)).await.unwrap(), "18 true");
    let log = bus.adapter::<Log>().unwrap().0.lock().unwrap().clone();
    assert_eq!(log, ["uow_first 7", "noted 7", "six 18"]);
    assert_eq!(db.get::<Counter>(7u32).unwrap().count, 18);
}
