//! The registry: what the macros declare (handlers, repositories, what each
//! message type is), collected through `inventory`, and the check of the whole wiring that
//! [`BusBuilder::build`](crate::BusBuilder::build) runs once.

use std::any::TypeId;
use std::collections::HashMap;

use crate::dependency::{Requirement, Requirements};
use crate::handler::{CommandHandlerFn, EventHandlerFn};
use crate::message::{Command, Event, Message, MessageKind};
use crate::repository::RepositoryRegistration;
use crate::store::AggregateStorage;
use crate::wiring::{HandlerRef, Location, WiringProblem};

/// A command handler, as `#[command_handler]` registers it.
#[doc(hidden)]
pub struct CommandHandlerRegistration {
    pub command: TypeId,
    pub command_name: &'static str,
    pub handler: &'static str,
    /// The handler's stable identity (its key in the inbox).
    pub id: &'static str,
    pub module: &'static str,
    pub location: Location,
    /// The handler, typed and erased.
    pub handler_fn: &'static dyn CommandHandlerFn,
}

impl CommandHandlerRegistration {
    pub const fn new<C: Command>(
        handler: &'static str,
        id: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
        handler_fn: &'static dyn CommandHandlerFn,
    ) -> Self {
        CommandHandlerRegistration {
            command: TypeId::of::<C>(),
            command_name: C::NAME,
            handler,
            id,
            module,
            location: Location { file, line },
            handler_fn,
        }
    }

    fn describe(&self) -> HandlerRef {
        HandlerRef {
            name: self.handler,
            module: self.module,
            location: self.location,
        }
    }
}

/// An event handler, as `#[event_handler]` registers it.
#[doc(hidden)]
pub struct EventHandlerRegistration {
    pub event: TypeId,
    pub event_name: &'static str,
    pub handler: &'static str,
    /// The handler's stable identity (its key in the inbox).
    pub id: &'static str,
    pub module: &'static str,
    pub location: Location,
    /// The handler, typed and erased.
    pub handler_fn: &'static dyn EventHandlerFn,
}

impl EventHandlerRegistration {
    pub const fn new<E: Event>(
        handler: &'static str,
        id: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
        handler_fn: &'static dyn EventHandlerFn,
    ) -> Self {
        EventHandlerRegistration {
            event: TypeId::of::<E>(),
            event_name: E::NAME,
            handler,
            id,
            module,
            location: Location { file, line },
            handler_fn,
        }
    }

    pub(crate) fn describe(&self) -> HandlerRef {
        HandlerRef {
            name: self.handler,
            module: self.module,
            location: self.location,
        }
    }
}

/// What a message type is, as the `Command` and `Event` derives declare it
/// (the bus's registration of it adds how it is run when it arrives from
/// outside).
#[doc(hidden)]
pub struct MessageInfo {
    pub type_id: TypeId,
    pub name: &'static str,
    pub type_name: &'static str,
    pub kind: MessageKind,
    /// An event published to other services (`#[event(external)]`).
    pub external: bool,
    pub module: &'static str,
    pub location: Location,
    /// How to read the ordering key of a message of this type from its
    /// JSON, if it is ordered.
    pub ordering_key: Option<crate::message::KeyFn>,
}

impl MessageInfo {
    pub const fn new<M: Message>(
        kind: MessageKind,
        external: bool,
        type_name: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
    ) -> Self {
        MessageInfo {
            type_id: TypeId::of::<M>(),
            name: M::NAME,
            type_name,
            kind,
            external,
            module,
            location: Location { file, line },
            ordering_key: if M::ORDERED {
                Some(crate::message::ordering_key_of::<M> as crate::message::KeyFn)
            } else {
                None
            },
        }
    }
}

inventory::collect!(CommandHandlerRegistration);
inventory::collect!(EventHandlerRegistration);

/// Whether a module path is inside one of the scopes (`None`: everything).
pub(crate) fn in_scope(scopes: &[String], module: &str) -> bool {
    scopes.is_empty()
        || scopes.iter().any(|s| {
            module == s
                || (module.len() > s.len()
                    && module.starts_with(s.as_str())
                    && module[s.len()..].starts_with("::"))
        })
}

/// The registrations in scope, checked.
pub(crate) struct Registry {
    pub(crate) commands: Vec<&'static CommandHandlerRegistration>,
    pub(crate) events: Vec<&'static EventHandlerRegistration>,
    pub(crate) repositories: Vec<&'static RepositoryRegistration>,
}

pub(crate) struct Wiring<'a> {
    /// Every message type linked in (not only those in scope: message
    /// names are global).
    pub(crate) messages: &'a [&'static MessageInfo],
    pub(crate) scopes: &'a [String],
    pub(crate) unhandled_allowed: &'a [TypeId],
    pub(crate) adapters: &'a dyn Fn(TypeId) -> bool,
    pub(crate) has_database: bool,
    /// The database's connection type, and the aggregates it keeps
    /// without a repository.
    pub(crate) backend: Option<((TypeId, &'static str), AggregateStorage)>,
}

impl Wiring<'_> {
    pub(crate) fn check(&self, problems: &mut Vec<WiringProblem>) -> Registry {
        let commands: Vec<_> = inventory::iter::<CommandHandlerRegistration>
            .into_iter()
            .filter(|r| in_scope(self.scopes, r.module))
            .collect();
        let mut events: Vec<_> = inventory::iter::<EventHandlerRegistration>
            .into_iter()
            .filter(|r| in_scope(self.scopes, r.module))
            .collect();
        // Linker order is arbitrary; make the order of event handlers stable.
        events.sort_by_key(|r| (r.module, r.location.file, r.location.line));

        // A scope that matches nothing is a crate the linker left out.
        for scope in self.scopes {
            let one = std::slice::from_ref(scope);
            let found = inventory::iter::<CommandHandlerRegistration>
                .into_iter()
                .any(|r| in_scope(one, r.module))
                || inventory::iter::<EventHandlerRegistration>
                    .into_iter()
                    .any(|r| in_scope(one, r.module))
                || self.messages.iter().any(|r| in_scope(one, r.module));
            if !found {
                problems.push(WiringProblem::EmptyScope {
                    scope: scope.clone(),
                });
            }
        }

        // Message names are global: a message from outside is decoded by name.
        let mut by_name: HashMap<&'static str, Vec<&'static MessageInfo>> = HashMap::new();
        for &m in self.messages {
            let same = by_name.entry(m.name).or_default();
            if !same.iter().any(|o| o.type_id == m.type_id) {
                same.push(m);
            }
        }
        let mut duplicates: Vec<_> = by_name.into_iter().filter(|(_, v)| v.len() > 1).collect();
        duplicates.sort_by_key(|(n, _)| *n);
        for (name, types) in duplicates {
            problems.push(WiringProblem::DuplicateMessageName {
                name,
                types: types.iter().map(|m| (m.type_name, m.location)).collect(),
            });
        }

        // Exactly one handler per command.
        let mut per_command: HashMap<TypeId, Vec<&'static CommandHandlerRegistration>> =
            HashMap::new();
        for c in &commands {
            per_command.entry(c.command).or_default().push(c);
        }
        let mut duplicated: Vec<_> = per_command.values().filter(|v| v.len() > 1).collect();
        duplicated.sort_by_key(|v| v[0].command_name);
        for handlers in duplicated {
            problems.push(WiringProblem::DuplicateCommandHandler {
                command: handlers[0].command_name,
                handlers: handlers.iter().map(|h| h.describe()).collect(),
            });
        }
        // Handler ids are the inbox's keys: unique among one event's
        // handlers. (A command has one handler, or is reported above.)
        let mut per_id: HashMap<(TypeId, &'static str), Vec<(HandlerRef, &'static str)>> =
            HashMap::new();
        for e in &events {
            per_id
                .entry((e.event, e.id))
                .or_default()
                .push((e.describe(), e.event_name));
        }
        let mut shared: Vec<_> = per_id.into_iter().filter(|(_, v)| v.len() > 1).collect();
        shared.sort_by_key(|((_, id), v)| (v[0].1, *id));
        for ((_, id), handlers) in shared {
            problems.push(WiringProblem::DuplicateHandlerId {
                message: handlers[0].1,
                id,
                handlers: handlers.into_iter().map(|(h, _)| h).collect(),
            });
        }

        let mut unhandled: Vec<_> = self
            .messages
            .iter()
            .filter(|m| {
                m.kind == MessageKind::Command
                    && in_scope(self.scopes, m.module)
                    && !per_command.contains_key(&m.type_id)
                    && !self.unhandled_allowed.contains(&m.type_id)
            })
            .collect();
        unhandled.sort_by_key(|m| m.name);
        unhandled.dedup_by_key(|m| m.type_id);
        for m in unhandled {
            problems.push(WiringProblem::CommandWithoutHandler {
                command: m.name,
                type_name: m.type_name,
                location: m.location,
            });
        }

        // Repositories of the bus's database, one per aggregate (and finder).
        let repositories: Vec<_> = match self.backend {
            None => Vec::new(),
            Some(((backend, _), _)) => inventory::iter::<RepositoryRegistration>
                .into_iter()
                .filter(|r| r.connection == backend)
                .collect(),
        };
        let mut per_key: HashMap<(TypeId, Option<TypeId>), Vec<&RepositoryRegistration>> =
            HashMap::new();
        for r in &repositories {
            per_key
                .entry((r.aggregate, r.finder.map(|f| f.0)))
                .or_default()
                .push(r);
        }
        let mut dup_repos: Vec<_> = per_key.values().filter(|v| v.len() > 1).collect();
        dup_repos.sort_by_key(|v| (v[0].aggregate_name, v[0].finder.map(|f| f.1)));
        for repos in dup_repos {
            problems.push(WiringProblem::DuplicateRepository {
                aggregate: repos[0].aggregate_name,
                backend: (repos[0].connection_name)(),
                repositories: repos
                    .iter()
                    .map(|r| {
                        (
                            r.repository,
                            Location {
                                file: r.file,
                                line: r.line,
                            },
                        )
                    })
                    .collect(),
            });
        }

        // Every dependency of every handler in scope.
        let handlers = commands
            .iter()
            .map(|c| {
                let mut req = Requirements::default();
                c.handler_fn.requirements(&mut req);
                (c.describe(), req)
            })
            .chain(events.iter().map(|e| {
                let mut req = Requirements::default();
                e.handler_fn.requirements(&mut req);
                (e.describe(), req)
            }));
        // Aggregates a document store keeps, by name: the name is their key
        // in the store, so two types may not share one.
        let mut documents: HashMap<&'static str, Vec<(TypeId, &'static str)>> = HashMap::new();
        for (handler, req) in handlers {
            let mut reported_database = false;
            for item in req.items() {
                match *item {
                    Requirement::Adapter { type_id, name } => {
                        if !(self.adapters)(type_id) {
                            problems.push(WiringProblem::MissingAdapter {
                                handler,
                                adapter: name,
                            });
                        }
                    }
                    Requirement::Database { unit_of_work } => {
                        if !self.has_database && !reported_database {
                            reported_database = true;
                            problems.push(WiringProblem::MissingDatabase {
                                handler,
                                unit_of_work,
                            });
                        }
                    }
                    Requirement::Repository {
                        aggregate,
                        name,
                        document,
                        type_name,
                    } => {
                        if let Some((_, AggregateStorage::Documents)) = self.backend
                            && document
                            && !per_key.contains_key(&(aggregate, None))
                        {
                            let types = documents.entry(name).or_default();
                            if !types.iter().any(|(t, _)| *t == aggregate) {
                                types.push((aggregate, type_name));
                            }
                        }
                        if let Some(((_, backend), storage)) = self.backend
                            && !per_key.contains_key(&(aggregate, None))
                            && !match storage {
                                AggregateStorage::Values => true,
                                AggregateStorage::Documents => document,
                                AggregateStorage::Repositories => false,
                            }
                        {
                            problems.push(WiringProblem::MissingRepository {
                                handler,
                                aggregate: name,
                                backend,
                                documents: storage == AggregateStorage::Documents,
                            });
                        }
                    }
                }
            }
        }

        let mut shared: Vec<_> = documents.into_iter().filter(|(_, t)| t.len() > 1).collect();
        shared.sort_by_key(|(name, _)| *name);
        for (name, types) in shared {
            problems.push(WiringProblem::DuplicateAggregateName {
                name,
                types: types.into_iter().map(|(_, t)| t).collect(),
            });
        }

        Registry {
            commands,
            events,
            repositories,
        }
    }
}
