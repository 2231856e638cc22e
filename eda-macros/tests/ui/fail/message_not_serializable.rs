use eda_core::Command;

#[derive(Debug, Clone, Command)]
pub struct Allocate {
    pub sku: String,
}

fn main() {}
