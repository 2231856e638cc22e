use eda_core::ProcessState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(name = "shop.payment", key = f64)]
pub struct Payment {
    pub paid: bool,
}

fn main() {}
