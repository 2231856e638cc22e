use eda_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shop.reserve", key = skew)]
pub struct Reserve {
    pub sku: String,
}

fn main() {}
