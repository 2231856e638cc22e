use eda_core::{UowTransaction, UnitOfWork};

#[derive(UnitOfWork)]
pub struct ShopUow {
    #[uow(transactoin)]
    tx: UowTransaction,
}

fn main() {}
