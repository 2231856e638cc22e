//! A process state with every option, and with the defaults (a `String`
//! key, a late message ignored); a unit of work that holds processes, and
//! handlers that start, go on with, look up and end them, and schedule and
//! cancel their timeouts.
use std::time::Duration;

use eda_core::prelude::*;
use eda_core::{Lookup, MessageId, ProcessMap, ProcessState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(name = "shop.payment")]
pub struct Payment {
    pub timeout: MessageId,
}

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(name = "shop.delivery", key = u64, missing = "error")]
pub struct Delivery {
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.order_placed")]
pub struct OrderPlaced {
    pub orderid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shop.expire")]
pub struct Expire {
    pub orderid: String,
}

#[derive(UnitOfWork)]
pub struct ShopUow {
    tx: UowTransaction,
    payments: ProcessMap<Payment>,
    deliveries: ProcessMap<Delivery>,
}

#[event_handler]
async fn start(event: &OrderPlaced, uow: &mut ShopUow) -> Result<(), eda_core::Error> {
    let timeout = uow.schedule(
        Expire {
            orderid: event.orderid.clone(),
        },
        Duration::from_secs(30),
    )?;
    uow.payments()
        .start(event.orderid.clone(), Payment { timeout })
        .await?;
    uow.deliveries().start(1, Delivery { attempts: 0 }).await?;
    uow.commit().await
}

#[command_handler]
async fn expire(cmd: Expire, uow: &mut ShopUow) -> Result<(), eda_core::Error> {
    if let Lookup::Running(payment) = uow.payments().lookup(&cmd.orderid).await? {
        let timeout = payment.timeout;
        payment.end();
        uow.cancel_scheduled(timeout).await?;
    }
    if let Some(delivery) = uow.deliveries().get(&1).await? {
        delivery.attempts += 1;
    }
    uow.schedule_at(
        Expire {
            orderid: cmd.orderid,
        },
        std::time::SystemTime::now(),
    )?;
    uow.commit().await
}

fn main() {}
