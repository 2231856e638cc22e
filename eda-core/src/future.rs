//! The boxed future of every handler call and adapter method.

use std::future::Future;
use std::pin::Pin;

/// A boxed, `Send` future: the one allocation per handler call.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
