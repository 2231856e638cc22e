//! Why a command of the allocation service fails, in the domain's terms.

use eda_core::DomainError;

use crate::domain::model::UnknownBatch;

/// Why an allocation command failed. The framework's own failures (the
/// database, a version conflict that outlived its retries) are not here: the
/// caller sees them as `CommandError::Bus`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocationError {
    /// No product has this SKU (no batch of it was ever created).
    #[error("Invalid sku {0}")]
    InvalidSku(String),
    /// No batch has this reference.
    #[error("Unknown batch {0}")]
    UnknownBatch(String),
}

impl DomainError for AllocationError {}

impl From<UnknownBatch> for AllocationError {
    fn from(e: UnknownBatch) -> Self {
        AllocationError::UnknownBatch(e.0)
    }
}
