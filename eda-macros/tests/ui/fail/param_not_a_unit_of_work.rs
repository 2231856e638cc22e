use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

pub struct AllocationUow;

#[command_handler]
async fn allocate(cmd: Allocate, uow: &mut AllocationUow) -> Result<Option<String>, BoxError> {
    let _ = uow;
    Ok(Some(cmd.sku))
}

fn main() {}
