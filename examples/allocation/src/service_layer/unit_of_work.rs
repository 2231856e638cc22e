//! The unit of work of the allocation handlers, and the lookups it offers
//! besides "by id".

use eda_core::{Finder, IdentityMap, UnitOfWork, UowTransaction};

use crate::domain::model::Product;

/// One transaction over the products (APwP's `SqlAlchemyUnitOfWork`).
///
/// The bus begins one for each handler that takes `&mut AllocationUow`;
/// handlers reach the products through `uow.products()` and end with
/// `uow.commit()`. Every product they loaded or added is then saved, with a
/// version check, and the events it raised are handed to the bus; not
/// committing rolls everything back.
#[derive(Debug, UnitOfWork)]
pub struct AllocationUow {
    #[uow(transaction)]
    tx: UowTransaction,
    products: IdentityMap<Product>,
}

/// Finds the product that holds the batch with this reference (APwP's
/// `get_by_batchref`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByBatchref(pub String);

impl Finder<Product> for ByBatchref {
    fn matches(&self, product: &Product) -> bool {
        product.batches.iter().any(|b| b.reference == self.0)
    }
}
