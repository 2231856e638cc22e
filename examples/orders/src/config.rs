//! The service's configuration, from the environment: what every eda
//! service reads (see [`eda_core::host`]: `DATABASE_URL`, `AMQP_URL`,
//! `PORT`, `EDA_EXCHANGE`, `EDA_QUEUE`, `DATABASE_SCHEMA`, the consumer's
//! settings), with orders' defaults: port 8081, queue and schema `orders`,
//! `sqlite://orders.db`.
//!
//! Printed (`Display`) and debugged (`Debug`) with passwords hidden.

use eda_core::host::{ConfigError, HostConfig};

/// The name of the service: its queue, schema and SQLite file unless the
/// environment says otherwise.
pub const SERVICE: &str = "orders";

/// The HTTP port unless `PORT` says otherwise (allocation has 8080).
pub const PORT: u16 = 8081;

/// The service's configuration, from the process's environment.
pub fn from_env() -> Result<HostConfig, ConfigError> {
    HostConfig::from_env(SERVICE, PORT)
}

#[cfg(test)]
mod tests {
    use eda_core::host::{BrokerConfig, DatabaseConfig};

    use super::*;

    #[test]
    fn the_defaults_are_orders() {
        let c = HostConfig::from_lookup(SERVICE, PORT, |_| None).unwrap();
        assert_eq!(
            c.database,
            DatabaseConfig::Sqlite("sqlite://orders.db".into())
        );
        assert_eq!(c.broker, BrokerConfig::InProcess);
        assert_eq!((c.port, c.queue.as_str()), (8081, "orders"));
        let postgres =
            |name: &str| (name == "DATABASE_URL").then(|| "postgres://postgres@db/shop".to_owned());
        let c = HostConfig::from_lookup(SERVICE, PORT, postgres).unwrap();
        assert_eq!(c.schema.as_deref(), Some("orders"));
    }
}
