//! The errors of the domain, as opposed to the framework's.

use std::fmt;

/// A boxed error, the default error type of a command and of event handlers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the domain: what a command's handler reports to its caller
/// as its own failure (an unknown SKU, an order that cannot be placed),
/// as opposed to the framework's failures (the database is down).
///
/// Name it in the command (`#[command(error = AllocationError)]`) and mark
/// it with this trait; a handler then returns `Result<Output,
/// CommandError<AllocationError>>`, and `?` sends a domain error to
/// [`CommandError::Handler`](crate::CommandError::Handler) and a framework [`Error`](crate::Error) to
/// [`CommandError::Bus`](crate::CommandError::Bus):
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// pub enum AllocationError {
///     #[error("Invalid sku {0}")]
///     InvalidSku(String),
/// }
/// impl eda_core::DomainError for AllocationError {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain error",
    label = "a command's error type must be a domain error",
    note = "mark it: `impl eda_core::DomainError for {Self} {{}}` (it must be `Debug + Display + Send + Sync`)"
)]
pub trait DomainError: fmt::Debug + fmt::Display + Send + Sync + 'static {}

/// The default error of a command: any error, boxed.
#[diagnostic::do_not_recommend]
impl DomainError for BoxError {}
