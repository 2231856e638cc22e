//! What the sqlx adapters share: error mapping, decoding helpers for
//! repositories, hiding passwords, and the names of the framework's tables.

use super::redact_url;
use crate::domain_error::BoxError;
use crate::error::Error;
use crate::repository::RepositoryError;

/// Decoding a column of a row into a domain value, with an error that names
/// the table and the column.
///
/// ```ignore
/// use eda_core::adapters::sql::RowExt;
/// let qty: i32 = row.decode("batches", "purchased_quantity")?;
/// ```
pub trait RowExt {
    /// The value of `column`; a decoding failure is a
    /// [`RepositoryError::Decode`] naming `table` and `column`.
    fn decode<'r, T>(&'r self, table: &str, column: &str) -> Result<T, RepositoryError>
    where
        T: sqlx::Decode<'r, <Self as sqlx::Row>::Database>
            + sqlx::Type<<Self as sqlx::Row>::Database>,
        Self: sqlx::Row,
        for<'c> &'c str: sqlx::ColumnIndex<Self>;
}

impl<R: sqlx::Row> RowExt for R {
    fn decode<'r, T>(&'r self, table: &str, column: &str) -> Result<T, RepositoryError>
    where
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'c> &'c str: sqlx::ColumnIndex<R>,
    {
        self.try_get::<T, &str>(column)
            .map_err(|e| RepositoryError::decode(table, column, e))
    }
}

/// A row of the aggregate store (`version, body`), as both SQL databases
/// read it.
pub(crate) fn stored<R: sqlx::Row>(row: &R) -> Result<crate::store::Stored, Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let version: i64 = row.try_get(0).map_err(adapter_error)?;
    Ok(crate::store::Stored::Document {
        version: u64::try_from(version).map_err(Error::database)?,
        body: row.try_get(1).map_err(adapter_error)?,
    })
}

/// The next time of a parked scheduled message: never.
pub(crate) const PARKED_AT: i64 = i64::MAX;

/// A time as the scheduled messages' columns keep it.
pub(crate) fn millis(t: crate::message::Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// A claimed row, read as an outbox row whose position is its due time.
pub(crate) fn scheduled_message(
    entry: crate::outbox::OutboxEntry,
) -> crate::schedule::ScheduledMessage {
    crate::schedule::ScheduledMessage {
        message: entry.message,
        due: crate::message::Timestamp::from_millis(entry.position.max(0) as u64),
        attempts: entry.attempts,
    }
}

/// Whether running the transaction again can succeed: a serialization
/// failure or a deadlock (Postgres SQLSTATE 40001, 40P01), a busy or locked
/// database (SQLite). Asked of the database that reported the error: some
/// Postgres SQLSTATEs are digits too (42501, insufficient privilege), and
/// must not be read as SQLite codes.
fn is_retryable(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "postgres")]
    if let Some(e) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return matches!(e.code(), "40001" | "40P01");
    }
    #[cfg(feature = "sqlite")]
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return is_sqlite_busy(db);
    }
    false
}

/// SQLite's SQLITE_BUSY (5) or SQLITE_LOCKED (6), or one of their extended
/// codes (`code & 0xff`), such as SQLITE_BUSY_SNAPSHOT (517).
#[cfg(feature = "sqlite")]
pub(crate) fn is_sqlite_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

impl From<sqlx::Error> for RepositoryError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                RepositoryError::AlreadyExists {
                    aggregate: "row",
                    id: db
                        .constraint()
                        .map(str::to_owned)
                        .unwrap_or_else(|| db.message().to_owned()),
                }
            }
            sqlx::Error::Database(db) if is_retryable(&*db) => {
                RepositoryError::Retryable(db.into())
            }
            sqlx::Error::ColumnDecode { index, source } => RepositoryError::Decode {
                table: "(query)".into(),
                column: index,
                source,
            },
            other => RepositoryError::Database(other.into()),
        }
    }
}

/// An error of the database adapter itself (begin, commit, outbox, inbox):
/// a retryable one counts as a conflict, so that the bus runs the command
/// again.
pub(crate) fn adapter_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(db) if is_retryable(&*db) => {
            Error::Repository(RepositoryError::Retryable(db.into()))
        }
        other => Error::Database(other.into()),
    }
}

/// A connection error naming the URL, with its password hidden.
pub(crate) fn connect_error(url: &str, e: impl Into<BoxError>) -> Error {
    Error::Connect {
        url: redact_url(url),
        source: e.into(),
    }
}

/// The settings of a pool's own (its size, its timeouts) set on a
/// database's options: a pool given to `from_pool_with` has its own, so
/// they are refused there, not ignored.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolSettings(Vec<&'static str>);

impl PoolSettings {
    /// Records that `name` was set.
    pub(crate) fn set(&mut self, name: &'static str) {
        if !self.0.contains(&name) {
            self.0.push(name);
        }
    }

    /// An error naming the settings set on `options` (the options type's
    /// name), for the pool of `db`, made with `made_with`; none if none was.
    pub(crate) fn refuse(&self, db: &str, options: &str, made_with: &str) -> Result<(), Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(connect_error(
            db,
            format!(
                "{} set on {options}, for a pool given to from_pool_with: they are the pool's \
                 own settings (set them where the pool is made: {made_with})",
                self.0.join(", ")
            ),
        ))
    }
}

/// Where the framework keeps its tables: a schema (Postgres) and a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub(crate) schema: Option<String>,
    pub(crate) prefix: String,
}

impl Tables {
    /// Tables named `<prefix>outbox`, `<prefix>inbox`, `<prefix>migrations`
    /// and `<prefix>relay_lease` in the connection's default schema.
    pub fn new(prefix: impl Into<String>) -> Self {
        Tables {
            schema: None,
            prefix: prefix.into(),
        }
    }

    /// In this schema (Postgres).
    pub fn in_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The qualified, quoted name of a framework table.
    pub(crate) fn name(&self, table: &str) -> String {
        let table = quote_ident(&format!("{}{table}", self.prefix));
        match &self.schema {
            Some(schema) => format!("{}.{table}", quote_ident(schema)),
            None => table,
        }
    }
}

impl Default for Tables {
    /// `eda_outbox`, `eda_inbox`, `eda_migrations`.
    fn default() -> Self {
        Tables::new("eda_")
    }
}

/// An identifier, quoted for SQL (`"my ""odd"" name"`).
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_and_prefixed() {
        assert_eq!(Tables::default().name("outbox"), "\"eda_outbox\"");
        assert_eq!(
            Tables::new("x_").in_schema("t 1").name("inbox"),
            "\"t 1\".\"x_inbox\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    /// SQLSTATE 22021 is 5 modulo 256, like SQLITE_BUSY: it must not be
    /// retried.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_postgres_error_is_not_read_as_a_sqlite_code() {
        use sqlx::Connection;
        let url = crate::testing::postgres_url();
        let mut conn = match sqlx::PgConnection::connect(&url).await {
            Ok(conn) => conn,
            Err(e) => {
                let start =
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
                return crate::testing::service_missing("PostgreSQL", &url, &e, start)
                    .unwrap_or(());
            }
        };
        let err = sqlx::query("SELECT convert_from('\\xff'::bytea, 'UTF8')")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("22021")
        );
        let err = RepositoryError::from(err);
        assert!(!err.is_conflict(), "{err:?}");
        let serialization = sqlx::query(
            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$",
        )
        .execute(&mut conn)
        .await
        .unwrap_err();
        assert!(RepositoryError::from(serialization).is_conflict());
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn only_a_busy_or_locked_sqlite_is_retryable() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let err = sqlx::query("SELECT * FROM missing")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(!RepositoryError::from(err).is_conflict());
    }
}
