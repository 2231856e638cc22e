//! A command and an event with an ordering key: any `Display` field, on a
//! message with other options; the key is the field, as a string.
use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shop.reserve", key = sku, output = u32)]
pub struct Reserve {
    pub sku: String,
    pub qty: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.reserved", external, key = order)]
pub struct Reserved {
    pub order: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.noted")]
pub struct Noted {}

fn main() {
    assert!(<Reserve as eda_core::Message>::ORDERED);
    let reserve = Reserve { sku: "lamp".into(), qty: 1 };
    assert_eq!(eda_core::Message::ordering_key(&reserve).as_deref(), Some("lamp"));
    let reserved = Reserved { order: 42 };
    assert_eq!(eda_core::Message::ordering_key(&reserved).as_deref(), Some("42"));
    assert!(!<Noted as eda_core::Message>::ORDERED);
    assert_eq!(eda_core::Message::ordering_key(&Noted {}), None);
}
