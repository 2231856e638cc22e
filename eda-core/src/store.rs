//! The aggregate store: how a database keeps the aggregates that have no
//! repository (documented on [`backend`](crate::backend), which re-exports it).

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::repository::RepositoryError;

/// Which aggregates a [`Database`](crate::backend::Database) keeps without a
/// repository.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum AggregateStorage {
    /// None: every aggregate needs a repository for this database.
    #[default]
    Repositories,
    /// Serializable aggregates, as [`Stored::Document`]s.
    Documents,
    /// Any aggregate, as [`Stored::Value`]s (a database in memory).
    Values,
}

/// An aggregate type, as a store sees it.
#[derive(Clone, Copy)]
pub struct AggregateType {
    name: &'static str,
    type_id: TypeId,
}

impl AggregateType {
    /// The type of `A`.
    pub fn of<A: Aggregate>() -> Self {
        AggregateType {
            name: A::NAME,
            type_id: TypeId::of::<A>(),
        }
    }

    /// Its name ([`Aggregate::NAME`]): what a document store keys it by.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its Rust type: what a value store keys it by.
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }
}

impl fmt::Debug for AggregateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// An aggregate as a store hands it back.
pub enum Stored {
    /// Its JSON, and the version it was saved at (which wins over the
    /// version in the JSON).
    Document {
        /// The version column.
        version: u64,
        /// The JSON the unit of work gave [`Save::document`].
        body: String,
    },
    /// The value [`Save::value`] gave, shared: the unit of work clones it.
    Value(Arc<dyn Any + Send + Sync>),
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stored::Document { version, body } => f
                .debug_struct("Document")
                .field("version", version)
                .field("body", body)
                .finish(),
            Stored::Value(_) => f.write_str("Value(..)"),
        }
    }
}

/// One aggregate for a store to save, in the transaction.
///
/// `expected` is `None` for a new aggregate (one that exists already is
/// [`RepositoryError::AlreadyExists`]); `Some(v)` to update one whose stored
/// version is still `v` (anything else is a [`RepositoryError::Conflict`]).
/// [`Save::already_exists`] and [`Save::conflict`] make those errors.
pub struct Save<'a> {
    aggregate_type: AggregateType,
    key: &'a str,
    version: u64,
    expected: Option<u64>,
    value: &'a dyn Erased,
}

impl Save<'_> {
    /// The aggregate's type.
    pub fn aggregate_type(&self) -> AggregateType {
        self.aggregate_type
    }

    /// Its id, as a string (see [`key`]).
    pub fn key(&self) -> &str {
        self.key
    }

    /// The version to write.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The stored version it must still have, or `None` for a new one.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Its JSON, for a document store.
    pub fn document(&self) -> Result<String, Error> {
        self.value.document(self.aggregate_type)
    }

    /// A copy of it (without pending events), for a value store.
    pub fn value(&self) -> Arc<dyn Any + Send + Sync> {
        self.value.value()
    }

    /// What a SQL store's `INSERT … ON CONFLICT DO NOTHING` (a new
    /// aggregate) or `UPDATE … WHERE version = expected` did: one row is
    /// saved; none is [`already_exists`](Self::already_exists) or a
    /// [`conflict`](Self::conflict).
    pub fn saved(&self, rows_affected: u64) -> Result<(), Error> {
        match (rows_affected, self.expected) {
            (1, _) => Ok(()),
            (_, None) => Err(self.already_exists()),
            (_, Some(_)) => Err(self.conflict()),
        }
    }

    /// The error for a new aggregate whose id is taken.
    pub fn already_exists(&self) -> Error {
        RepositoryError::AlreadyExists {
            aggregate: self.aggregate_type.name,
            id: self.key.to_owned(),
        }
        .into()
    }

    /// The error for an aggregate no longer at [`expected`](Self::expected).
    pub fn conflict(&self) -> Error {
        RepositoryError::Conflict {
            aggregate: self.aggregate_type.name,
            id: self.key.to_owned(),
            expected: self.expected.unwrap_or_default(),
        }
        .into()
    }
}

impl fmt::Debug for Save<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Save")
            .field("aggregate", &self.aggregate_type)
            .field("key", &self.key)
            .field("version", &self.version)
            .field("expected", &self.expected)
            .finish()
    }
}

/// An aggregate, type-erased for [`Save`].
trait Erased: Send + Sync {
    fn document(&self, ty: AggregateType) -> Result<String, Error>;
    fn value(&self) -> Arc<dyn Any + Send + Sync>;
}

impl<A: Aggregate> Erased for A {
    fn document(&self, ty: AggregateType) -> Result<String, Error> {
        match A::__codec() {
            Some(codec) => (codec.encode)(self)
                .map_err(|e| Error::Repository(RepositoryError::decode(ty.name, "body", e))),
            None => Err(Error::MissingRepository {
                aggregate: A::NAME,
                backend: "a document store (it is not `Serialize` and `Deserialize`)",
            }),
        }
    }

    fn value(&self) -> Arc<dyn Any + Send + Sync> {
        let mut copy = self.clone();
        copy.events_mut().clear();
        Arc::new(copy)
    }
}

/// The id of an aggregate as a store keys it: for an aggregate that
/// serializes, its id in JSON, unquoted when it is a string (`LAMP`, `42`,
/// `{"a":1}`); otherwise its `Debug` form.
pub fn key<A: Aggregate>(id: &A::Id) -> String {
    match A::__codec() {
        Some(codec) => (codec.key)(id),
        None => format!("{id:?}"),
    }
}

/// The aggregate a store handed back under `key`, and its document when it
/// was one (what the unit of work compares it with at commit).
pub(crate) fn restore<A: Aggregate>(
    stored: Stored,
    key: &str,
) -> Result<(A, Option<String>), Error> {
    match stored {
        Stored::Document { version, body } => {
            let Some(codec) = A::__codec() else {
                return Err(Error::MissingRepository {
                    aggregate: A::NAME,
                    backend: "a document store (it is not `Serialize` and `Deserialize`)",
                });
            };
            let mut aggregate = (codec.decode)(&body).map_err(|e| {
                Error::Repository(RepositoryError::decode(
                    format!("aggregates ({} {key})", A::NAME),
                    "body",
                    e,
                ))
            })?;
            aggregate.set_version(version);
            Ok((aggregate, Some(body)))
        }
        Stored::Value(value) => match value.downcast_ref::<A>() {
            Some(a) => Ok((a.clone(), None)),
            None => Err(Error::Repository(RepositoryError::decode(
                format!("aggregates ({} {key})", A::NAME),
                "value",
                "the store handed back a value of another type",
            ))),
        },
    }
}

/// What a unit of work hands a store to save.
pub(crate) fn save<'a, A: Aggregate>(
    aggregate: &'a A,
    key: &'a str,
    expected: Option<u64>,
) -> Save<'a> {
    Save {
        aggregate_type: AggregateType::of::<A>(),
        key,
        version: aggregate.version(),
        expected,
        value: aggregate,
    }
}
