use eda_core::ProcessState;

#[derive(Debug, Clone, ProcessState)]
#[process(name = "shop.payment")]
pub struct Payment {
    pub paid: bool,
}

fn main() {}
