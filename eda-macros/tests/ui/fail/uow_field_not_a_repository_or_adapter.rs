use eda_core::{UowTransaction, UnitOfWork};

#[derive(UnitOfWork)]
pub struct ShopUow {
    #[uow(transaction)]
    tx: UowTransaction,
    shop_name: String,
}

fn main() {}
