use eda_core::ProcessState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(name = "shop.payment", missing = "panic")]
pub struct Payment {
    pub paid: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(name = "shop.refund", timeout = 30)]
pub struct Refund {
    pub paid: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
#[process(name = "shop order")]
pub struct Order {
    pub paid: bool,
}

fn main() {}
