use eda_core::repository;

pub struct PgProductRepository;

#[repository]
impl PgProductRepository {
    pub fn new() -> Self {
        PgProductRepository
    }
}

fn main() {}
