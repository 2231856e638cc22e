//! The service's configuration, from the environment:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | `postgres://…` or `sqlite:…` | `sqlite://allocation.db` (a file in the working directory) |
//! | `AMQP_URL` | `amqp://…`: RabbitMQ | unset: the in-process external bus |
//! | `PORT` | the HTTP port | `8080` |
//! | `EDA_EXCHANGE` | RabbitMQ's topic exchange | `eda.events` |
//! | `EDA_QUEUE` | the service queue (its dead-letter queue is `<queue>.dlq`) | `allocation` |
//! | `DATABASE_SCHEMA` | the Postgres schema of the service's tables and of eda's outbox and inbox (created if needed) | `allocation`, the service's name |
//! | `NOTIFICATIONS_FILE` | out-of-stock notifications are appended there | unset: written to the log |
//! | `EDA_RETRY_DELAYS_MS` | delays before the retries of a failed RabbitMQ message, comma-separated milliseconds | `1000,5000,30000` |
//! | `EDA_MAX_ATTEMPTS` | attempts at a RabbitMQ message before it is dead-lettered | `5` |
//! | `EDA_MAX_MESSAGE_BYTES` | larger RabbitMQ messages are dead-lettered unread | `1048576` (1 MiB) |
//!
//! Printed (`Display`) and debugged (`Debug`) with passwords hidden.
//!
//! On Postgres the service works in a schema of its own even when
//! `DATABASE_SCHEMA` is not set: two services on one database (allocation
//! and orders) must never share eda's tables, or one would publish the
//! other's outbox and skip messages the other's inbox recorded. SQLite has
//! no schemas: each service has its own file.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use eda_core::adapters::redact_url;

/// The name of the service, and its queue on RabbitMQ unless `EDA_QUEUE`
/// says otherwise.
pub const SERVICE: &str = "allocation";

/// Where the state is kept.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// Postgres at this URL.
    Postgres(String),
    /// SQLite at this URL (a file).
    Sqlite(String),
}

/// Where external events go, and commands come from.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    /// RabbitMQ at this URL.
    RabbitMq(String),
    /// No broker: the in-process external bus.
    InProcess,
}

/// The whole configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The database.
    pub database: DatabaseConfig,
    /// The external bus.
    pub broker: BrokerConfig,
    /// The HTTP port.
    pub port: u16,
    /// The RabbitMQ exchange.
    pub exchange: String,
    /// The service queue.
    pub queue: String,
    /// The Postgres schema (`None` on SQLite).
    pub schema: Option<String>,
    /// Where notifications are appended, if not to the log.
    pub notifications_file: Option<PathBuf>,
    /// How the RabbitMQ consumer treats failures and large messages.
    pub consumer: ConsumerConfig,
}

/// The RabbitMQ consumer's settings that an operator may change; `None`
/// keeps the framework's default (see `RabbitMqOptions::new`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Delays before the retries of a failed message.
    pub retry_delays: Option<Vec<Duration>>,
    /// Attempts before a failing message is dead-lettered.
    pub max_attempts: Option<u32>,
    /// The largest message read; larger ones are dead-lettered.
    pub max_message_bytes: Option<usize>,
}

/// A variable with a value the service cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    variable: &'static str,
    problem: String,
}

impl Config {
    /// From the process's environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// From any lookup of variables (tests use a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database = match var("DATABASE_URL") {
            None => DatabaseConfig::Sqlite("sqlite://allocation.db".into()),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseConfig::Postgres(url)
            }
            Some(url) if url.starts_with("sqlite:") => DatabaseConfig::Sqlite(url),
            Some(url) => {
                return Err(ConfigError {
                    variable: "DATABASE_URL",
                    problem: format!(
                        "expected postgres://… or sqlite:…, got {}",
                        redact_url(&url)
                    ),
                });
            }
        };
        let broker = match var("AMQP_URL") {
            None => BrokerConfig::InProcess,
            Some(url) if url.starts_with("amqp://") => BrokerConfig::RabbitMq(url),
            Some(url) => {
                return Err(ConfigError {
                    variable: "AMQP_URL",
                    problem: format!("expected amqp://…, got {}", redact_url(&url)),
                });
            }
        };
        let port = match var("PORT") {
            None => 8080,
            Some(port) => port.parse().map_err(|_| ConfigError {
                variable: "PORT",
                problem: format!("expected a port number, got {port:?}"),
            })?,
        };
        let schema = match database {
            DatabaseConfig::Postgres(_) => {
                Some(var("DATABASE_SCHEMA").unwrap_or_else(|| SERVICE.into()))
            }
            DatabaseConfig::Sqlite(_) => None,
        };
        Ok(Config {
            database,
            broker,
            port,
            exchange: var("EDA_EXCHANGE").unwrap_or_else(|| "eda.events".into()),
            queue: var("EDA_QUEUE").unwrap_or_else(|| SERVICE.into()),
            schema,
            notifications_file: var("NOTIFICATIONS_FILE").map(PathBuf::from),
            consumer: ConsumerConfig {
                retry_delays: var("EDA_RETRY_DELAYS_MS")
                    .map(|v| parse_delays(&v))
                    .transpose()?,
                max_attempts: positive(&var, "EDA_MAX_ATTEMPTS")?,
                max_message_bytes: positive(&var, "EDA_MAX_MESSAGE_BYTES")?,
            },
        })
    }
}

/// `1000,5000,30000` → 1 s, 5 s, 30 s.
fn parse_delays(value: &str) -> Result<Vec<Duration>, ConfigError> {
    value
        .split(',')
        .map(|ms| {
            ms.trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| ConfigError {
                    variable: "EDA_RETRY_DELAYS_MS",
                    problem: format!(
                        "expected positive milliseconds separated by commas, got {value:?}"
                    ),
                })
        })
        .collect()
}

/// A variable holding a number above zero, if set.
fn positive<T: std::str::FromStr + PartialOrd + Default>(
    var: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<Option<T>, ConfigError> {
    var(variable)
        .map(|value| {
            value
                .trim()
                .parse::<T>()
                .ok()
                .filter(|n| *n > T::default())
                .ok_or_else(|| ConfigError {
                    variable,
                    problem: format!("expected a number above zero, got {value:?}"),
                })
        })
        .transpose()
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.database {
            DatabaseConfig::Postgres(url) => writeln!(
                f,
                "database: Postgres at {}, schema {}",
                redact_url(url),
                self.schema.as_deref().unwrap_or("(the connection's)")
            )?,
            DatabaseConfig::Sqlite(url) => writeln!(f, "database: SQLite at {}", redact_url(url))?,
        }
        match &self.broker {
            BrokerConfig::RabbitMq(url) => writeln!(
                f,
                "broker: RabbitMQ at {}, exchange {}, queue {}",
                redact_url(url),
                self.exchange,
                self.queue
            )?,
            BrokerConfig::InProcess => writeln!(f, "broker: in-process (AMQP_URL is not set)")?,
        }
        match &self.notifications_file {
            Some(path) => write!(f, "notifications: appended to {}", path.display()),
            None => write!(f, "notifications: written to the log"),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseConfig::Postgres(url) => {
                f.debug_tuple("Postgres").field(&redact_url(url)).finish()
            }
            DatabaseConfig::Sqlite(url) => f.debug_tuple("Sqlite").field(&redact_url(url)).finish(),
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerConfig::RabbitMq(url) => {
                f.debug_tuple("RabbitMq").field(&redact_url(url)).finish()
            }
            BrokerConfig::InProcess => f.write_str("InProcess"),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.database)
            .field("broker", &self.broker)
            .field("port", &self.port)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("schema", &self.schema)
            .field("notifications_file", &self.notifications_file)
            .field("consumer", &self.consumer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_set_means_sqlite_and_the_in_process_bus() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.database,
            DatabaseConfig::Sqlite("sqlite://allocation.db".into())
        );
        assert_eq!(c.broker, BrokerConfig::InProcess);
        assert_eq!(c.port, 8080);
        assert_eq!(c.exchange, "eda.events");
        assert_eq!(c.queue, "allocation");
        assert_eq!(c.schema, None);
        assert_eq!(c.notifications_file, None);
        assert_eq!(c.consumer, ConsumerConfig::default());
    }

    #[test]
    fn the_consumer_can_be_tuned() {
        let c = config(&[
            ("EDA_RETRY_DELAYS_MS", "200, 500"),
            ("EDA_MAX_ATTEMPTS", "3"),
            ("EDA_MAX_MESSAGE_BYTES", "65536"),
        ])
        .unwrap();
        assert_eq!(
            c.consumer,
            ConsumerConfig {
                retry_delays: Some(vec![Duration::from_millis(200), Duration::from_millis(500)]),
                max_attempts: Some(3),
                max_message_bytes: Some(65536),
            }
        );
        for (variable, value) in [
            ("EDA_RETRY_DELAYS_MS", "200,,500"),
            ("EDA_RETRY_DELAYS_MS", "0"),
            ("EDA_MAX_ATTEMPTS", "0"),
            ("EDA_MAX_ATTEMPTS", "-1"),
            ("EDA_MAX_MESSAGE_BYTES", "1MB"),
        ] {
            let err = config(&[(variable, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{variable}: expected")), "{err}");
            assert!(err.contains(value), "{err}");
        }
    }

    #[test]
    fn the_real_services_are_chosen_by_url() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:secret@db/shop"),
            ("AMQP_URL", "amqp://guest:guest@mq:5672/%2f"),
            ("PORT", "9000"),
            ("EDA_EXCHANGE", "shop.events"),
        ])
        .unwrap();
        assert_eq!(
            c.database,
            DatabaseConfig::Postgres("postgres://app:secret@db/shop".into())
        );
        assert_eq!(
            c.broker,
            BrokerConfig::RabbitMq("amqp://guest:guest@mq:5672/%2f".into())
        );
        assert_eq!((c.port, c.exchange.as_str()), (9000, "shop.events"));
    }

    #[test]
    fn on_postgres_the_schema_defaults_to_the_service_name() {
        let postgres = ("DATABASE_URL", "postgres://postgres@db/shop");
        let c = config(&[postgres]).unwrap();
        assert_eq!(c.schema.as_deref(), Some("allocation"));
        assert!(c.to_string().contains("schema allocation"), "{c}");
        let c = config(&[postgres, ("DATABASE_SCHEMA", "stock")]).unwrap();
        assert_eq!(c.schema.as_deref(), Some("stock"));
        // SQLite has no schemas: the variable is not used.
        let c = config(&[("DATABASE_SCHEMA", "stock")]).unwrap();
        assert_eq!(c.schema, None);
    }

    #[test]
    fn passwords_are_never_printed() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:s3cr3t@db/shop"),
            ("AMQP_URL", "amqp://guest:hunter2@mq/%2f"),
        ])
        .unwrap();
        for text in [c.to_string(), format!("{c:?}")] {
            assert!(
                !text.contains("s3cr3t") && !text.contains("hunter2"),
                "{text}"
            );
            assert!(text.contains("postgres://app:***@db/shop"), "{text}");
        }
        let err = config(&[("DATABASE_URL", "mysql://root:s3cr3t@db")]).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert_eq!(
            config(&[("PORT", "http")]).unwrap_err().to_string(),
            "PORT: expected a port number, got \"http\""
        );
        assert!(
            config(&[("DATABASE_URL", "mysql://db")])
                .unwrap_err()
                .to_string()
                .starts_with("DATABASE_URL: expected postgres")
        );
        assert!(
            config(&[("AMQP_URL", "http://mq")])
                .unwrap_err()
                .to_string()
                .starts_with("AMQP_URL: expected amqp")
        );
    }
}
