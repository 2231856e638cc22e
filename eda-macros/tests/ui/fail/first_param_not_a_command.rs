use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

pub struct Deallocate {
    pub sku: String,
}

#[command_handler]
async fn deallocate(cmd: Deallocate) -> Result<(), BoxError> {
    let _ = cmd.sku;
    Ok(())
}

fn main() {}
