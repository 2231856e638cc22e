use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

pub struct Service;

impl Service {
    #[command_handler]
    async fn allocate(&self, cmd: Allocate) -> Result<Option<String>, BoxError> {
        Ok(Some(cmd.sku))
    }
}

fn main() {}
