//! What `build()` reports: the problems of the wiring, each naming the
//! handler and where it is declared.

use std::fmt;

/// Where something was declared in the user's code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Location {
    /// The source file.
    pub file: &'static str,
    /// The line.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A handler, named in a wiring problem.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HandlerRef {
    /// The handler function's name.
    pub name: &'static str,
    /// Its module path.
    pub module: &'static str,
    /// Where it is declared.
    pub location: Location,
}

impl fmt::Display for HandlerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}::{}` ({})", self.module, self.name, self.location)
    }
}

/// One thing wrong with the wiring.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum WiringProblem {
    /// A command that no handler handles.
    CommandWithoutHandler {
        /// The command's name.
        command: &'static str,
        /// Its Rust type.
        type_name: &'static str,
        /// Where it is declared.
        location: Location,
    },
    /// A command with more than one handler.
    DuplicateCommandHandler {
        /// The command's name.
        command: &'static str,
        /// Every handler of it.
        handlers: Vec<HandlerRef>,
    },
    /// A handler needs an adapter the bus was not given.
    MissingAdapter {
        /// The handler.
        handler: HandlerRef,
        /// The adapter's type.
        adapter: &'static str,
    },
    /// A handler's unit of work needs a database, and the bus has none.
    MissingDatabase {
        /// The handler.
        handler: HandlerRef,
        /// The unit of work's type.
        unit_of_work: &'static str,
    },
    /// A handler's unit of work has an aggregate with no repository on the
    /// bus's database.
    MissingRepository {
        /// The handler.
        handler: HandlerRef,
        /// The aggregate.
        aggregate: &'static str,
        /// The database's connection type.
        backend: &'static str,
        /// The database stores aggregates that serialize without a
        /// repository, and this one does not.
        documents: bool,
    },
    /// Two aggregate types with one name, both kept by the database's
    /// document store, which keys them by name: one would read the other's
    /// documents. `#[aggregate(name = "…")]` tells them apart.
    DuplicateAggregateName {
        /// The name.
        name: &'static str,
        /// The types.
        types: Vec<&'static str>,
    },
    /// Two message types with one name.
    DuplicateMessageName {
        /// The name.
        name: &'static str,
        /// The types and where they are declared.
        types: Vec<(&'static str, Location)>,
    },
    /// Two repositories (or finders) for one aggregate on one database.
    DuplicateRepository {
        /// The aggregate.
        aggregate: &'static str,
        /// The database's connection type.
        backend: &'static str,
        /// The repositories and where they are declared.
        repositories: Vec<(&'static str, Location)>,
    },
    /// A scope given to the builder matches no handler and no message: the
    /// crate that declares them is probably not linked into the binary.
    EmptyScope {
        /// The module path given to `scope`.
        scope: String,
    },
    /// Two handlers of one message with the same id: the inbox could not
    /// tell them apart, and would skip the second as a redelivery.
    DuplicateHandlerId {
        /// The message's name.
        message: &'static str,
        /// The id they share.
        id: &'static str,
        /// The handlers.
        handlers: Vec<HandlerRef>,
    },
    /// A command the bus accepts from the broker
    /// ([`BusBuilder::accept`](crate::BusBuilder::accept)), without a
    /// handler in the bus.
    AcceptedCommandWithoutHandler {
        /// The command's name.
        command: &'static str,
    },
    /// Two adapters of the same type, or two databases.
    DuplicateAdapter {
        /// The adapter's type, or `"database"`.
        adapter: &'static str,
    },
}

impl fmt::Display for WiringProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WiringProblem::CommandWithoutHandler {
                command,
                type_name,
                location,
            } => write!(
                f,
                "command `{command}` ({type_name}, {location}) has no handler: add a `#[command_handler]` fn taking it"
            ),
            WiringProblem::DuplicateCommandHandler { command, handlers } => {
                write!(
                    f,
                    "command `{command}` has {} handlers, it must have exactly one:",
                    handlers.len()
                )?;
                for h in handlers {
                    write!(f, " {h};")?;
                }
                Ok(())
            }
            WiringProblem::MissingAdapter { handler, adapter } => write!(
                f,
                "handler {handler} needs adapter `{adapter}`, which was not given to the bus: add `.adapter(…)` to `MessageBus::builder()`"
            ),
            WiringProblem::MissingDatabase {
                handler,
                unit_of_work,
            } => write!(
                f,
                "handler {handler} takes unit of work `{unit_of_work}`, which needs a database adapter, and the bus has none"
            ),
            WiringProblem::MissingRepository {
                handler,
                aggregate,
                backend,
                documents: true,
            } => write!(
                f,
                "handler {handler} works on {aggregate}, which has no repository for {backend} and does not serialize: derive `serde::Serialize` and `serde::Deserialize` for it (and its id) to store it as a document, or add `#[repository] impl Repository for …` with `type Connection = {backend}` (and link its crate)"
            ),
            WiringProblem::MissingRepository {
                handler,
                aggregate,
                backend,
                documents: false,
            } => write!(
                f,
                "handler {handler} works on {aggregate}, which has no repository for {backend}, a database that keeps no aggregate without one: add `#[repository] impl Repository for …` with `type Connection = {backend}` (and link its crate), or use a database that keeps aggregates and processes as documents (eda's Postgres, SQLite and in-memory ones do)"
            ),
            WiringProblem::DuplicateAggregateName { name, types } => write!(
                f,
                "aggregate name `{name}` is used by {}: the document store keys aggregates by name; give each its own with `#[aggregate(name = \"…\")]`",
                types.join(" and ")
            ),
            WiringProblem::DuplicateMessageName { name, types } => {
                write!(f, "message name `{name}` is used by {} types:", types.len())?;
                for (t, l) in types {
                    write!(f, " {t} ({l});")?;
                }
                Ok(())
            }
            WiringProblem::DuplicateRepository {
                aggregate,
                backend,
                repositories,
            } => {
                write!(
                    f,
                    "{aggregate} has {} repositories for {backend}:",
                    repositories.len()
                )?;
                for (r, l) in repositories {
                    write!(f, " {r} ({l});")?;
                }
                Ok(())
            }
            WiringProblem::EmptyScope { scope } => write!(
                f,
                "scope `{scope}` matches no handler and no message: if they are declared in another crate that this binary does not name, the linker left them out; name it once, e.g. `use {crate_name} as _;` in main.rs",
                crate_name = scope.split("::").next().unwrap_or(scope)
            ),
            WiringProblem::DuplicateHandlerId {
                message,
                id,
                handlers,
            } => {
                write!(
                    f,
                    "{} handlers of `{message}` have the id `{id}`, which must be unique among a message's handlers (the inbox records each handler by its id): give each its own with `#[event_handler(id = \"…\")]`:",
                    handlers.len()
                )?;
                for h in handlers {
                    write!(f, " {h};")?;
                }
                Ok(())
            }
            WiringProblem::AcceptedCommandWithoutHandler { command } => write!(
                f,
                "command `{command}` is accepted from the broker (`accept::<…>()`), but this bus has no handler of it"
            ),
            WiringProblem::DuplicateAdapter { adapter } => {
                write!(f, "two adapters of type `{adapter}` were given to the bus")
            }
        }
    }
}

/// Everything wrong with the wiring, found by
/// [`BusBuilder::build`](crate::BusBuilder::build) in one pass.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WiringError {
    /// The problems, one per line of the message.
    pub problems: Vec<WiringProblem>,
}

impl fmt::Display for WiringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the message bus is miswired ({} problem",
            self.problems.len()
        )?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WiringError {}
