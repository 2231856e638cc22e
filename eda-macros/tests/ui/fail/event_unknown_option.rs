use eda_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "allocation.allocated", output = String)]
pub struct Allocated {
    pub sku: String,
}

fn main() {}
