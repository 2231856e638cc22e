use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Command)]
pub struct Allocate {
    pub sku: String,
}

#[command_handler]
async fn allocate(cmd: Allocate) -> Result<(), BoxError> {
    let _ = cmd.sku;
    Ok(())
}

fn main() {}
