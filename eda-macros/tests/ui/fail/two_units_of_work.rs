use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

#[derive(UnitOfWork)]
pub struct ShopUow {
    #[uow(transaction)]
    tx: UowTransaction,
}

#[derive(UnitOfWork)]
pub struct AuditUow {
    #[uow(transaction)]
    tx: UowTransaction,
}

#[command_handler]
async fn allocate(
    cmd: Allocate,
    shop: &mut ShopUow,
    audit: &mut AuditUow,
) -> Result<Option<String>, BoxError> {
    let _ = (shop, audit);
    Ok(Some(cmd.sku))
}

fn main() {}
