use eda_core::{Aggregate, Events};

#[derive(Debug, Clone, Aggregate)]
pub struct Product {
    pub sku: String,
    pub version: u64,
    pub events: Events,
}

fn main() {}
