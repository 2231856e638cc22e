use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
pub struct Allocated {
    pub sku: String,
}

pub struct Reason;

#[event_handler]
async fn on_allocated(event: &Allocated) -> Result<(), Reason> {
    let _ = event;
    Err(Reason)
}

fn main() {}
