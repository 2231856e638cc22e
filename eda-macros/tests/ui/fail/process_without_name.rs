use eda_core::ProcessState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(key = String)]
pub struct Payment {
    pub paid: bool,
}

fn main() {}
