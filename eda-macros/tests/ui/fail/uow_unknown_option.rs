use eda_core::{Transaction, UnitOfWork};

#[derive(UnitOfWork)]
pub struct ShopUow {
    #[uow(transactoin)]
    tx: Transaction,
}

fn main() {}
