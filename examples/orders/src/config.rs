//! The service's configuration, from the environment: what every eda
//! service reads (see [`eda_core::host`]: `DATABASE_URL`, `AMQP_URL`,
//! `PORT`, `EDA_EXCHANGE`, `EDA_QUEUE`, `DATABASE_SCHEMA`, the consumer's
//! settings), with orders' defaults: port 8081, queue and schema `orders`,
//! `sqlite://orders.db`; and orders' own `ORDER_TIMEOUT_MS`, how long an
//! order may stay pending before it is cancelled (30000 by default).
//!
//! Printed (`Display`) and debugged (`Debug`) with passwords hidden.

use std::time::Duration;

use eda_core::host::{ConfigError, HostConfig};

use crate::service_layer::OrderTimeout;

/// The name of the service: its queue, schema and SQLite file unless the
/// environment says otherwise.
pub const SERVICE: &str = "orders";

/// The HTTP port unless `PORT` says otherwise (allocation has 8080).
pub const PORT: u16 = 8081;

/// The service's configuration, from the process's environment.
pub fn from_env() -> Result<HostConfig, ConfigError> {
    HostConfig::from_env(SERVICE, PORT)
}

/// How long an order may stay pending (`ORDER_TIMEOUT_MS`, a positive
/// number of milliseconds), from the process's environment.
pub fn order_timeout() -> Result<OrderTimeout, ConfigError> {
    order_timeout_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The same, from a lookup (for tests).
pub fn order_timeout_from(
    var: impl Fn(&str) -> Option<String>,
) -> Result<OrderTimeout, ConfigError> {
    const VARIABLE: &str = "ORDER_TIMEOUT_MS";
    match var(VARIABLE) {
        None => Ok(OrderTimeout::default()),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(OrderTimeout(Duration::from_millis(ms))),
            _ => Err(ConfigError::new(
                VARIABLE,
                format!("expected a number of milliseconds above zero, got {value:?}"),
            )),
        },
    }
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

    #[test]
    fn the_order_timeout_is_30_s_unless_set() {
        assert_eq!(
            order_timeout_from(|_| None).unwrap(),
            OrderTimeout(Duration::from_secs(30))
        );
        let set = |value: &'static str| move |_: &str| Some(value.to_owned());
        assert_eq!(
            order_timeout_from(set(" 1500 ")).unwrap(),
            OrderTimeout(Duration::from_millis(1500))
        );
        for bad in ["0", "-1", "soon", "1.5"] {
            let error = order_timeout_from(set(bad)).unwrap_err();
            assert_eq!(error.variable(), "ORDER_TIMEOUT_MS");
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
