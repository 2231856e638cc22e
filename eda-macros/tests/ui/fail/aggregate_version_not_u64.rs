use eda_core::{Aggregate, Events};

#[derive(Debug, Clone, Aggregate)]
pub struct Product {
    #[aggregate(id)]
    pub sku: String,
    pub version: u32,
    pub events: Events,
}

fn main() {}
