//! Entrypoints: what feeds the bus from outside the process (a broker's
//! consumer; HTTP lives in the application, see `examples/allocation`).

#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
