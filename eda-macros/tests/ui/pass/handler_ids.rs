//! Handlers with an explicit stable id, and one that sends a command caused
//! by the event it handles.
use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shop.reserve")]
pub struct Reserve {
    pub sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.order_placed", external)]
pub struct OrderPlaced {
    pub sku: String,
}

#[command_handler(id = "shop::reserve")]
async fn reserve_stock(_: Reserve) -> Result<(), BoxError> {
    Ok(())
}

#[event_handler(id = "shop::reserve_on_order")]
async fn on_order(event: &OrderPlaced, cause: &Causation) -> Result<(), CommandError<BoxError>> {
    cause.send(Reserve { sku: event.sku.clone() }).await?;
    Ok(())
}

fn main() {}
