//! The framework's errors.
//!
//! Handlers return their own error types; what goes wrong in the framework
//! itself (storage, wiring, decoding) is an [`Error`]. A handler usually wraps
//! it in its own error with `#[from]`, so `?` works on repository calls and on
//! `commit`.

use crate::domain_error::{BoxError, DomainError};
use std::fmt;

use crate::repository::RepositoryError;
use crate::wiring::WiringError;

/// What can go wrong inside the framework while a message is handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A repository failed: a version conflict, a row that cannot be decoded,
    /// or the database.
    #[error(transparent)]
    Repository(#[from] RepositoryError),

    /// The database failed to begin or commit a transaction.
    #[error("database error: {0}")]
    Database(#[source] BoxError),

    /// The message broker failed (a connection, a channel, a publish).
    #[error("broker error: {0}")]
    Broker(#[source] BoxError),

    /// The adapter could not connect (or set itself up) at start.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// Where, with any password hidden.
        url: String,
        /// Why.
        #[source]
        source: BoxError,
    },

    /// A broker's queue cannot serve the service as configured: it exists
    /// with arguments other than the service declares (which a broker
    /// cannot change in place), or the options would let the broker drop
    /// a message before the service's own attempts are spent. Reported at
    /// start, and not retried: an operator must act.
    #[error("queue `{queue}`: {problem}")]
    Topology {
        /// The queue.
        queue: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// `commit` or `rollback` was called on a unit of work whose transaction
    /// already ended.
    #[error("the unit of work's transaction is already {0}")]
    TransactionFinished(&'static str),

    /// `add` was called with an aggregate whose id this unit of work already
    /// tracks.
    #[error("{aggregate} {id} is already tracked by this unit of work")]
    AlreadyTracked {
        /// The aggregate's name.
        aggregate: &'static str,
        /// The aggregate's id (`Debug`).
        id: String,
    },

    /// A finder was used on a database that has no implementation of it.
    #[error(
        "no finder `{finder}` for {aggregate} on {backend}: implement \
         `eda_core::Find<{finder}>` for the {aggregate} repository of that database \
         and mark the impl with `#[repository]`"
    )]
    FinderMissing {
        /// The aggregate's name.
        aggregate: &'static str,
        /// The finder's type name.
        finder: &'static str,
        /// The database's connection type.
        backend: &'static str,
    },

    /// The message came from outside and its handler recorded it in the
    /// inbox before: it was not handled again.
    #[error("message {0} was handled already (inbox)")]
    AlreadyHandled(crate::message::MessageId),

    /// The message bus has no handler for this command.
    #[error("no handler for command `{0}`")]
    NoHandler(&'static str),

    /// A dependency could not be resolved. `MessageBus::build` checks this, so
    /// it only happens when a handler is called on a bus that skipped it.
    #[error("no adapter `{0}` was given to the message bus")]
    MissingAdapter(&'static str),

    /// A unit of work needs a database, and the bus was built without one.
    #[error("no database adapter was given to the message bus")]
    NoDatabase,

    /// No repository for this aggregate exists for the database in use.
    #[error("no repository for {aggregate} on {backend}")]
    MissingRepository {
        /// The aggregate's name.
        aggregate: &'static str,
        /// The database's connection type.
        backend: &'static str,
    },

    /// A process manager was started for a key that has one already
    /// (running, or ended).
    #[error("process {process} {key} was started already{}", if *ended { " (and has ended)" } else { "" })]
    ProcessStarted {
        /// The process's name.
        process: &'static str,
        /// The correlation key (`Debug`).
        key: String,
        /// Whether it has ended.
        ended: bool,
    },

    /// A message for a process that is not running, of a process declared
    /// `#[process(missing = "error")]`.
    #[error("no running process {process} {key}: it {}", if *ended { "has ended" } else { "was never started" })]
    NoProcess {
        /// The process's name.
        process: &'static str,
        /// The correlation key (`Debug`).
        key: String,
        /// Whether it has ended (or never started).
        ended: bool,
    },

    /// The database in use does not do what was asked: an adapter that
    /// does not implement that part of [`backend`](crate::backend).
    #[error("{what} are not supported by this database adapter")]
    Unsupported {
        /// What was asked ("scheduled messages").
        what: &'static str,
    },

    /// A message from outside could not be handled.
    #[error(transparent)]
    Incoming(#[from] IncomingError),

    /// The wiring is wrong (see [`MessageBus::builder`](crate::MessageBus::builder)).
    #[error(transparent)]
    Wiring(#[from] WiringError),
}

impl Error {
    /// Is this an optimistic-concurrency conflict (someone else saved the
    /// aggregate first)? The bus retries such commands by policy.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Repository(e) if e.is_conflict())
    }

    pub(crate) fn database(e: impl Into<BoxError>) -> Self {
        Error::Database(e.into())
    }
}

/// Why a message that arrived from outside the service (a broker, a test) was
/// not handled. The consumer dead-letters it with this reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IncomingError {
    /// No message type with this name is linked into the service.
    #[error("unknown message `{name}`")]
    UnknownMessage {
        /// The name it carried.
        name: String,
    },
    /// A message this service does not take from a broker: a command it
    /// does not accept, an event it has no handler of.
    #[error("`{name}` is not consumed by this service: {why}")]
    NotConsumed {
        /// The message name.
        name: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The body is not a valid encoding of the named message.
    #[error("malformed `{name}` message: {source}")]
    Malformed {
        /// The message name.
        name: &'static str,
        /// What the decoder said.
        #[source]
        source: serde_json::Error,
    },
    /// A command's handler returned an error.
    #[error("handler of `{name}` failed: {error}")]
    Handler {
        /// The message name.
        name: &'static str,
        /// The handler's error, displayed.
        error: String,
        /// Whether the error is an optimistic-concurrency conflict that survived
        /// the command retry policy.
        conflict: bool,
    },
    /// One or more handlers of an event failed after their retries.
    #[error("{failed} handler(s) of `{name}` failed; first: {first}")]
    EventHandlers {
        /// The message name.
        name: &'static str,
        /// How many handlers failed.
        failed: usize,
        /// The first failure, displayed.
        first: String,
    },
    /// The framework failed (database down, ...).
    #[error("`{name}`: {source}")]
    Framework {
        /// The message name.
        name: &'static str,
        /// The framework's error.
        #[source]
        source: Box<Error>,
    },
}

/// The error of [`MessageBus::handle`](crate::MessageBus::handle), and of a
/// command handler: the domain's error, or the framework's.
///
/// ```
/// # use eda_core::{CommandError, Error};
/// fn status(e: &CommandError<std::io::Error>) -> u16 {
///     match e {
///         CommandError::Handler(_) => 400,
///         CommandError::Bus(e) if e.is_conflict() => 409,
///         CommandError::Bus(_) => 500,
///     }
/// }
/// ```
#[derive(Debug)]
pub enum CommandError<E> {
    /// The handler reported this domain error. Its unit of work was not
    /// committed (unless the handler committed before failing), and its
    /// events were discarded.
    Handler(E),
    /// The framework failed: the database could not begin or commit, a
    /// version conflict outlived the retries, a dependency was missing, ...
    Bus(Error),
}

/// `?` on a domain error in a handler.
impl<E: DomainError> From<E> for CommandError<E> {
    fn from(e: E) -> Self {
        CommandError::Handler(e)
    }
}

/// `?` on a message, for commands with the default error type.
impl From<&str> for CommandError<BoxError> {
    fn from(e: &str) -> Self {
        CommandError::Handler(e.into())
    }
}

/// `?` on a message, for commands with the default error type.
impl From<String> for CommandError<BoxError> {
    fn from(e: String) -> Self {
        CommandError::Handler(e.into())
    }
}

/// `?` on a framework error (a repository, `commit`) in a handler.
impl<E> From<Error> for CommandError<E> {
    fn from(e: Error) -> Self {
        CommandError::Bus(e)
    }
}

impl<E> CommandError<E> {
    /// The handler's error, if it is one.
    pub fn handler_error(&self) -> Option<&E> {
        match self {
            CommandError::Handler(e) => Some(e),
            CommandError::Bus(_) => None,
        }
    }

    /// The handler's error, or the framework's as `Err`.
    pub fn into_handler_error(self) -> Result<E, Error> {
        match self {
            CommandError::Handler(e) => Ok(e),
            CommandError::Bus(e) => Err(e),
        }
    }

    /// Whether this is a version conflict that outlived the retries.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CommandError::Bus(e) if e.is_conflict())
    }
}

impl<E: fmt::Display> fmt::Display for CommandError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Handler(e) => e.fmt(f),
            CommandError::Bus(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CommandError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommandError::Handler(_) => None,
            CommandError::Bus(e) => Some(e),
        }
    }
}
