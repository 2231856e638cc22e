use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>)]
pub struct Allocate {
    pub sku: String,
}

pub struct Mailer;
impl Adapter for Mailer {}

#[command_handler]
async fn allocate(cmd: Allocate, mailer: &mut Mailer) -> Result<Option<String>, BoxError> {
    let _ = mailer;
    Ok(Some(cmd.sku))
}

fn main() {}
