use eda_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub struct Allocate<T> {
    pub sku: T,
}

fn main() {}
