use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

pub struct EmailSender;

#[command_handler]
async fn allocate(cmd: Allocate, email: &EmailSender) -> Result<Option<String>, BoxError> {
    let _ = email;
    Ok(Some(cmd.sku))
}

fn main() {}
