use eda_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.reserved", key = "sku")]
pub struct Reserved {
    pub sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.moved", key = place)]
pub struct Moved {
    pub place: Place,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Place {
    pub x: i32,
}

fn main() {}
