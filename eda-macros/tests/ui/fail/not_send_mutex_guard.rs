use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

use std::sync::Mutex;

pub struct Cache {
    pub skus: Mutex<Vec<String>>,
}
impl Adapter for Cache {}

async fn lookup() {}

#[command_handler]
async fn allocate(cmd: Allocate, cache: &Cache) -> Result<Option<String>, BoxError> {
    let skus = cache.skus.lock().unwrap();
    lookup().await;
    Ok(skus.first().cloned().or(Some(cmd.sku)))
}

fn main() {}
