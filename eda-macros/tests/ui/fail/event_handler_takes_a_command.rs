use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

#[event_handler]
async fn on_allocate(cmd: &Allocate) {
    let _ = cmd;
}

fn main() {}
