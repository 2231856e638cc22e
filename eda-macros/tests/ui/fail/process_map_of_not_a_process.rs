use eda_core::{ProcessMap, UnitOfWork, UowTransaction};

#[derive(Debug, Clone)]
pub struct Payment {
    pub paid: bool,
}

#[derive(UnitOfWork)]
pub struct ShopUow {
    tx: UowTransaction,
    payments: ProcessMap<Payment>,
}

fn main() {}
