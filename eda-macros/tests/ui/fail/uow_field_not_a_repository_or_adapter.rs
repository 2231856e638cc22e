use eda_core::{Transaction, UnitOfWork};

#[derive(UnitOfWork)]
pub struct ShopUow {
    #[uow(transaction)]
    tx: Transaction,
    shop_name: String,
}

fn main() {}
