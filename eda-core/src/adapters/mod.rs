//! Adapters shipped with eda. The core knows them only through the
//! [`Adapter`](crate::Adapter) and [`Database`](crate::Database) traits
//! (except the in-memory kit, which is part of the core).

pub mod memory;
