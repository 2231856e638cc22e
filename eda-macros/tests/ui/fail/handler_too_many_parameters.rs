use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub struct Allocate;

pub struct A;
impl Adapter for A {}

#[command_handler]
async fn allocate(
    _: Allocate,
    _: &A,
    _: &Metadata,
    _: &Causation,
    _: &MessageBus,
    _: &A,
    _: &A,
    _: &A,
) -> Result<(), BoxError> {
    Ok(())
}

fn main() {}
