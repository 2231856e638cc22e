use eda_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "allocation allocate")]
pub struct Allocate {
    pub sku: String,
}

fn main() {}
