//! Entrypoints: what feeds the service's bus (HTTP here; the RabbitMQ
//! consumer is eda's own, `eda_core::entrypoints::rabbitmq`).

pub mod http;
