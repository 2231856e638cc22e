#![allow(missing_docs)]
use eda_core::prelude::*;
use serde::{Deserialize, Serialize};
use std::hint::black_box;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "probe.noop", output = u64)]
pub struct Noop {
    n: u64,
}

#[derive(UnitOfWork)]
pub struct NoopUow {
    tx: Transaction,
}

#[command_handler]
async fn noop(cmd: &Noop, uow: &mut NoopUow) -> Result<u64, BoxError> {
    uow.commit().await?;
    Ok(black_box(cmd.n))
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = MessageBus::builder()
        .adapter(InMemoryDatabase::new())
        .build()
        .unwrap();
    rt.block_on(async {
        let cmd = Noop { n: 1 };
        eprintln!(
            "size of bus.handle(Noop) future: {}",
            std::mem::size_of_val(&bus.handle(cmd.clone()))
        );
        let mut uow = bus.begin::<NoopUow>().await.unwrap();
        eprintln!("size of NoopUow: {}", std::mem::size_of::<NoopUow>());
        eprintln!(
            "size of Transaction: {}",
            std::mem::size_of::<Transaction>()
        );
        eprintln!(
            "size of noop(&cmd, &mut uow) future: {}",
            std::mem::size_of_val(&noop(&cmd, &mut uow))
        );
        eprintln!(
            "size of uow.commit() future: {}",
            std::mem::size_of_val(&uow.commit())
        );
        eprintln!(
            "size of Metadata: {}",
            std::mem::size_of::<eda_core::Metadata>()
        );
        let t = std::time::Instant::now();
        let n = 20_000_000u64;
        for i in 0..n {
            black_box(bus.handle(Noop { n: i }).await.unwrap());
        }
        eprintln!("{:.0} ns/command", t.elapsed().as_nanos() as f64 / n as f64);
    });
}
