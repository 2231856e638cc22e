//! What the sqlx adapters share: error mapping, decoding helpers for
//! repositories, hiding passwords, and the names of the framework's tables.

use super::redact_url;
use crate::error::{BoxError, Error};
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

/// SQLSTATEs after which running the transaction again can succeed:
/// serialization failure, deadlock (Postgres); SQLite reports busy/locked
/// databases with codes 5 and 6 (and their extended codes).
fn is_retryable(db: &dyn sqlx::error::DatabaseError) -> bool {
    match db.code().as_deref() {
        Some("40001" | "40P01") => true,
        Some(code) => {
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended
            // codes (x & 0xff).
            code.parse::<i32>()
                .map(|c| matches!(c & 0xff, 5 | 6))
                .unwrap_or(false)
        }
        None => false,
    }
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

/// Where the framework keeps its tables: a schema (Postgres) and a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub(crate) schema: Option<String>,
    pub(crate) prefix: String,
}

impl Tables {
    /// Tables named `<prefix>outbox`, `<prefix>inbox`, `<prefix>migrations`
    /// in the connection's default schema.
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
}
