use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

use std::rc::Rc;

async fn lookup() {}

#[command_handler]
async fn allocate(cmd: Allocate) -> Result<Option<String>, BoxError> {
    let sku = Rc::new(cmd.sku);
    lookup().await;
    Ok(Some((*sku).clone()))
}

fn main() {}
