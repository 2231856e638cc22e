//! Repositories and finders (their documentation is on [`Repository`]).

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;

use crate::aggregate::Aggregate;
use crate::domain_error::BoxError;
use crate::future::BoxFuture;

/// Repositories: the queries that load and save one aggregate type on one
/// database, and finders (lookups other than by id).
///
/// Most aggregates need none: one that derives serde's `Serialize` and
/// `Deserialize` is stored by the database itself, as a document (see
/// [`store`](crate::backend)), and the in-memory database keeps any aggregate.
/// A repository is for an aggregate that needs tables of its own: it is
/// written once per database and marked `#[repository]`; the unit of work
/// picks the one for the database the bus was built with (and the store for
/// an aggregate without one), so the same handlers run on Postgres, on
/// SQLite and on the in-memory database of unit tests.
///
/// Loads and saves one aggregate type on one database.
///
/// Implement it for a (usually unit) struct and mark the impl with
/// [`#[repository]`](macro@crate::repository), which registers it. The unit
/// of work calls these functions; handlers never do.
///
/// On Postgres, `type Connection = eda_core::sqlx::PgConnection` and the
/// functions run sqlx queries on `conn` (see the allocation example's
/// `adapters/postgres`). Here, a stand-in connection keeps it short:
///
/// ```
/// use std::collections::HashMap;
/// use eda_core::{Aggregate, Events, Repository, RepositoryError, repository};
///
/// #[derive(Clone, Aggregate)]
/// pub struct Product { #[aggregate(id)] pub sku: String, pub version: u64, pub events: Events }
///
/// /// What a database connection would be: rows of (sku, version).
/// pub struct Connection { rows: HashMap<String, u64> }
///
/// pub struct ProductRepository;
///
/// #[repository]
/// impl Repository for ProductRepository {
///     type Aggregate = Product;
///     type Connection = Connection;
///
///     async fn get(conn: &mut Connection, sku: &String) -> Result<Option<Product>, RepositoryError> {
///         Ok(conn.rows.get(sku).map(|v| Product { sku: sku.clone(), version: *v, events: Events::new() }))
///     }
///
///     async fn add(conn: &mut Connection, product: &Product) -> Result<(), RepositoryError> {
///         conn.rows.insert(product.sku.clone(), product.version);
///         Ok(())
///     }
///
///     async fn update(conn: &mut Connection, product: &Product, expected_version: u64) -> Result<bool, RepositoryError> {
///         match conn.rows.get_mut(&product.sku) {
///             Some(version) if *version == expected_version => {
///                 *version = product.version;
///                 Ok(true)
///             }
///             _ => Ok(false), // a conflict: someone saved it first
///         }
///     }
/// }
/// ```
pub trait Repository: Send + Sync + 'static {
    /// The aggregate it stores.
    type Aggregate: Aggregate;
    /// The connection of the database it talks to (e.g. `sqlx::PgConnection`).
    /// The unit of work lends it the connection of its transaction.
    type Connection: Send + 'static;

    /// Loads the aggregate with this id, or `None`.
    fn get(
        conn: &mut Self::Connection,
        id: &<Self::Aggregate as Aggregate>::Id,
    ) -> impl Future<Output = Result<Option<Self::Aggregate>, RepositoryError>> + Send;

    /// Inserts a new aggregate. An aggregate with the same id that already
    /// exists is [`RepositoryError::AlreadyExists`] (a conflict: the command is
    /// retried and will find it).
    fn add(
        conn: &mut Self::Connection,
        aggregate: &Self::Aggregate,
    ) -> impl Future<Output = Result<(), RepositoryError>> + Send;

    /// Saves a changed aggregate, if and only if its stored version is still
    /// `expected_version` (`UPDATE … WHERE id = $1 AND version = $expected`),
    /// writing `aggregate.version()`. Returns whether it was saved: `false` is
    /// a conflict.
    fn update(
        conn: &mut Self::Connection,
        aggregate: &Self::Aggregate,
        expected_version: u64,
    ) -> impl Future<Output = Result<bool, RepositoryError>> + Send;
}

/// A way to find one aggregate other than by its id, e.g. the product that
/// holds a batch. The in-memory database answers it with [`matches`];
/// databases with a [`Find`] implementation of their repository.
///
/// [`matches`]: Finder::matches
///
/// ```
/// # use eda_core::{Aggregate, Events, Finder};
/// # #[derive(Clone, Aggregate)] struct Product { #[aggregate(id)] sku: String, batches: Vec<String>, version: u64, events: Events }
/// pub struct ByBatchref(pub String);
///
/// impl Finder<Product> for ByBatchref {
///     fn matches(&self, product: &Product) -> bool {
///         product.batches.iter().any(|b| *b == self.0)
///     }
/// }
/// ```
pub trait Finder<A: Aggregate>: Send + Sync + 'static {
    /// Whether this aggregate is the one sought (the in-memory answer).
    fn matches(&self, aggregate: &A) -> bool;
}

/// A repository's implementation of a [`Finder`] on its database. Mark the
/// impl with [`#[repository]`](macro@crate::repository).
pub trait Find<F: Finder<Self::Aggregate>>: Repository {
    /// Loads the aggregate the finder describes, or `None`.
    fn find(
        conn: &mut Self::Connection,
        finder: &F,
    ) -> impl Future<Output = Result<Option<Self::Aggregate>, RepositoryError>> + Send;
}

/// What a repository can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// Someone else saved the aggregate since it was loaded.
    #[error("version conflict on {aggregate} {id}: it is no longer at version {expected}")]
    Conflict {
        /// The aggregate's name.
        aggregate: &'static str,
        /// Its id (`Debug`).
        id: String,
        /// The version it had when this unit of work loaded it.
        expected: u64,
    },
    /// An aggregate with this id exists already (someone else added it).
    #[error("{aggregate} {id} already exists")]
    AlreadyExists {
        /// The aggregate's name.
        aggregate: &'static str,
        /// Its id (`Debug`).
        id: String,
    },
    /// A stored value cannot be turned into the domain model.
    #[error("cannot decode column `{column}` of table `{table}`: {source}")]
    Decode {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The database aborted the transaction to keep it consistent with a
    /// concurrent one (serialization failure, deadlock, a busy SQLite
    /// database): running it again can succeed, so it counts as a conflict.
    #[error("transaction aborted by the database, to be retried: {0}")]
    Retryable(#[source] BoxError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[source] BoxError),
}

impl RepositoryError {
    /// A conflict: the aggregate changed (or appeared) under this unit of
    /// work. The bus retries the command.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            RepositoryError::Conflict { .. }
                | RepositoryError::AlreadyExists { .. }
                | RepositoryError::Retryable(_)
        )
    }

    /// A database error.
    pub fn database(e: impl Into<BoxError>) -> Self {
        RepositoryError::Database(e.into())
    }

    /// A decoding error naming the table and column.
    pub fn decode(
        table: impl Into<String>,
        column: impl Into<String>,
        e: impl Into<BoxError>,
    ) -> Self {
        RepositoryError::Decode {
            table: table.into(),
            column: column.into(),
            source: e.into(),
        }
    }
}

/// A connection, type-erased: repositories downcast it to theirs.
type AnyConnection = dyn Any + Send;
type Found<'c, A> = BoxFuture<'c, Result<Option<A>, RepositoryError>>;

/// The functions of one repository, type-erased over its connection.
#[doc(hidden)]
pub struct RepositoryVTable<A: Aggregate> {
    pub get: for<'c> fn(&'c mut AnyConnection, &'c A::Id) -> Found<'c, A>,
    pub add: for<'c> fn(&'c mut AnyConnection, &'c A) -> BoxFuture<'c, Result<(), RepositoryError>>,
    pub update: for<'c> fn(
        &'c mut AnyConnection,
        &'c A,
        u64,
    ) -> BoxFuture<'c, Result<bool, RepositoryError>>,
}

/// The function of one finder on one repository, type-erased.
#[doc(hidden)]
pub struct FinderVTable<A: Aggregate, F> {
    pub find: for<'c> fn(&'c mut AnyConnection, &'c F) -> Found<'c, A>,
}

fn connection<C: Any>(conn: &mut (dyn Any + Send)) -> &mut C {
    match conn.downcast_mut::<C>() {
        Some(c) => c,
        // The bus only hands a repository the connection type it registered
        // for (both are keyed by the same TypeId).
        None => unreachable!("repository called with a foreign connection type"),
    }
}

#[doc(hidden)]
pub trait RepositoryVTableOf: Repository {
    const VTABLE: RepositoryVTable<Self::Aggregate>;
}

impl<R: Repository> RepositoryVTableOf for R {
    const VTABLE: RepositoryVTable<R::Aggregate> = RepositoryVTable {
        get: |conn, id| Box::pin(R::get(connection::<R::Connection>(conn), id)),
        add: |conn, a| Box::pin(R::add(connection::<R::Connection>(conn), a)),
        update: |conn, a, v| Box::pin(R::update(connection::<R::Connection>(conn), a, v)),
    };
}

#[doc(hidden)]
pub trait FinderVTableOf<F: Finder<Self::Aggregate>>: Find<F> {
    const VTABLE: FinderVTable<Self::Aggregate, F>;
}

impl<F: Finder<R::Aggregate>, R: Find<F>> FinderVTableOf<F> for R {
    const VTABLE: FinderVTable<R::Aggregate, F> = FinderVTable {
        find: |conn, f| Box::pin(R::find(connection::<R::Connection>(conn), f)),
    };
}

/// A repository, as `#[repository]` registers it.
#[doc(hidden)]
pub struct RepositoryRegistration {
    pub aggregate: TypeId,
    pub aggregate_name: &'static str,
    pub connection: TypeId,
    pub connection_name: fn() -> &'static str,
    /// `Some(finder)` for a `Find<F>` impl.
    pub finder: Option<(TypeId, &'static str)>,
    pub repository: &'static str,
    pub file: &'static str,
    pub line: u32,
    pub vtable: &'static (dyn Any + Send + Sync),
}

impl RepositoryRegistration {
    pub const fn repository<R: Repository>(
        repository: &'static str,
        file: &'static str,
        line: u32,
        vtable: &'static RepositoryVTable<R::Aggregate>,
    ) -> Self {
        RepositoryRegistration {
            aggregate: TypeId::of::<R::Aggregate>(),
            aggregate_name: <R::Aggregate as Aggregate>::NAME,
            connection: TypeId::of::<R::Connection>(),
            connection_name: std::any::type_name::<R::Connection>,
            finder: None,
            repository,
            file,
            line,
            vtable,
        }
    }

    pub const fn finder<F: Finder<R::Aggregate>, R: Find<F>>(
        repository: &'static str,
        finder_name: &'static str,
        file: &'static str,
        line: u32,
        vtable: &'static FinderVTable<R::Aggregate, F>,
    ) -> Self {
        RepositoryRegistration {
            aggregate: TypeId::of::<R::Aggregate>(),
            aggregate_name: <R::Aggregate as Aggregate>::NAME,
            connection: TypeId::of::<R::Connection>(),
            connection_name: std::any::type_name::<R::Connection>,
            finder: Some((TypeId::of::<F>(), finder_name)),
            repository,
            file,
            line,
            vtable,
        }
    }
}

impl fmt::Debug for RepositoryRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryRegistration")
            .field("repository", &self.repository)
            .field("aggregate", &self.aggregate_name)
            .field("connection", &(self.connection_name)())
            .field("finder", &self.finder.map(|f| f.1))
            .field("location", &format_args!("{}:{}", self.file, self.line))
            .finish()
    }
}

inventory::collect!(RepositoryRegistration);
