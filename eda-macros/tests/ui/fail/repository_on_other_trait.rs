use eda_core::repository;

pub struct PgProductRepository;

#[repository]
impl Default for PgProductRepository {
    fn default() -> Self {
        PgProductRepository
    }
}

fn main() {}
