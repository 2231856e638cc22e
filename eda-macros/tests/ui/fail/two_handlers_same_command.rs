use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

#[command_handler]
async fn allocate(cmd: Allocate) -> Result<Option<String>, BoxError> {
    Ok(Some(cmd.sku))
}

#[command_handler]
async fn allocate_again(cmd: Allocate) -> Result<Option<String>, BoxError> {
    Ok(Some(cmd.sku))
}

fn main() {}
