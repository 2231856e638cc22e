use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

// Not marked `impl DomainError for AllocationError {}`.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("out of stock")]
    OutOfStock,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = String, error = AllocationError)]
pub struct Allocate {
    pub sku: String,
}

fn main() {}
