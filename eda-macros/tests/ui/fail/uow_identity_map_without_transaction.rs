use eda_core::{Aggregate, Events, IdentityMap, UnitOfWork};

#[derive(Debug, Clone, Aggregate)]
pub struct Product {
    #[aggregate(id)]
    pub sku: String,
    pub version: u64,
    pub events: Events,
}

#[derive(UnitOfWork)]
pub struct ShopUow {
    products: IdentityMap<Product>,
}

fn main() {}
