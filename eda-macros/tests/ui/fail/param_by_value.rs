use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

#[command_handler]
async fn allocate(cmd: Allocate, sku: String) -> Result<Option<String>, BoxError> {
    let _ = cmd;
    Ok(Some(sku))
}

fn main() {}
