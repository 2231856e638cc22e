use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

#[command_handler]
async fn allocate<C: Command>(cmd: C) -> Result<Option<String>, BoxError> {
    let _ = cmd;
    Ok(None)
}

fn main() {}
