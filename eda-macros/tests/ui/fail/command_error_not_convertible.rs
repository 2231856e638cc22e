use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("out of stock")]
    OutOfStock,
}
impl DomainError for AllocationError {}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = String, error = AllocationError)]
pub struct Allocate {
    pub sku: String,
}

#[command_handler]
async fn allocate(cmd: Allocate) -> Result<String, std::io::Error> {
    Ok(cmd.sku)
}

fn main() {}
