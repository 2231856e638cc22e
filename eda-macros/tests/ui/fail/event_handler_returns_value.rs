use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
pub struct Allocated {
    pub sku: String,
}

#[event_handler]
async fn on_allocated(event: &Allocated) -> String {
    event.sku.clone()
}

fn main() {}
