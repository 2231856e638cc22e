//! The service's configuration, from the environment: what every eda
//! service reads (see [`eda_core::host`]: `DATABASE_URL`, `AMQP_URL`,
//! `PORT`, `EDA_EXCHANGE`, `EDA_QUEUE`, `DATABASE_SCHEMA`, the consumer's
//! settings), with allocation's defaults (port 8080, queue and schema
//! `allocation`, `sqlite://allocation.db`), and its own:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `NOTIFICATIONS_FILE` | out-of-stock notifications are appended there | unset: written to the log |
//!
//! Printed (`Display`) and debugged (`Debug`) with passwords hidden.

use std::fmt;
use std::path::PathBuf;

use eda_core::host::{ConfigError, HostConfig};

/// The name of the service: its queue, schema and SQLite file unless the
/// environment says otherwise.
pub const SERVICE: &str = "allocation";

/// The HTTP port unless `PORT` says otherwise.
pub const PORT: u16 = 8080;

/// The whole configuration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Config {
    /// What the host reads.
    pub host: HostConfig,
    /// Where notifications are appended, if not to the log.
    pub notifications_file: Option<PathBuf>,
}

impl Config {
    /// From the process's environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// From any lookup of variables (tests use a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Config {
            host: HostConfig::from_lookup(SERVICE, PORT, &var)?,
            notifications_file: var("NOTIFICATIONS_FILE").map(PathBuf::from),
        })
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.host)?;
        match &self.notifications_file {
            Some(path) => write!(f, "notifications: appended to {}", path.display()),
            None => write!(f, "notifications: written to the log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use eda_core::host::{BrokerConfig, DatabaseConfig};

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn nothing_set_means_sqlite_and_a_broker_in_the_process() {
        let c = config(&[]);
        assert_eq!(
            c.host.database,
            DatabaseConfig::Sqlite("sqlite://allocation.db".into())
        );
        assert_eq!(c.host.broker, BrokerConfig::InProcess);
        assert_eq!((c.host.port, c.host.queue.as_str()), (8080, "allocation"));
        assert_eq!(c.notifications_file, None);
        assert!(
            c.to_string().ends_with("notifications: written to the log"),
            "{c}"
        );
    }

    #[test]
    fn on_postgres_the_schema_is_the_service_name() {
        let c = config(&[("DATABASE_URL", "postgres://postgres@db/shop")]);
        assert_eq!(c.host.schema.as_deref(), Some("allocation"));
    }

    #[test]
    fn notifications_can_go_to_a_file() {
        let c = config(&[("NOTIFICATIONS_FILE", "/tmp/stock.log")]);
        assert_eq!(c.notifications_file, Some(PathBuf::from("/tmp/stock.log")));
        assert!(c.to_string().contains("appended to /tmp/stock.log"), "{c}");
    }
}
