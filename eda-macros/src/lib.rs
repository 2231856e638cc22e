//! The macros of [eda](https://docs.rs/eda-core). Use them through
//! `eda-core`, which re-exports them; the code they generate names only
//! `::eda_core::__private::…` and your own items.
//!
//! Each macro checks what it can at your tokens (`syn::Error::new_spanned`)
//! and asks the type checker the rest through bounds placed at your tokens,
//! so an error points at the parameter, return type or field at fault.

mod aggregate;
mod ctxt;
mod handler;
mod message;
mod process;
mod repository;
mod uow;

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, ItemImpl, parse_macro_input};

use crate::message::Kind;

/// Derives `Message` and `Command` for a struct or enum.
///
/// Options, all optional: `name = "service.verb"` (default:
/// `<crate name>.<type name in snake_case>`), `output = Type` (what the
/// handler returns on success, default `()`), `error = Type` (what it returns
/// on failure, default `eda_core::BoxError`).
///
/// ```
/// use eda_core::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(name = "allocation.allocate", output = Option<String>)]
/// pub struct Allocate { pub orderid: String, pub sku: String, pub qty: u32 }
/// ```
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    message::expand(input, Kind::Command)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `Message` and `Event` for a struct or enum.
///
/// Options: `name = "service.happened"` (default: `<crate name>.<type name in
/// snake_case>`), `external` (the event is also written to the outbox and
/// published to other services).
///
/// ```
/// use eda_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// #[event(name = "allocation.allocated", external)]
/// pub struct Allocated { pub orderid: String, pub batchref: String }
/// ```
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    message::expand(input, Kind::Event)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `ProcessState`: the state of a process manager, kept per
/// correlation key (see `eda_core::ProcessMap`).
///
/// Options: `name = "service.process"` (required: where its states are
/// stored), `key = Type` (the correlation key; default `String`),
/// `missing = "ignore"` (the default: a message for a process that is not
/// running is logged and ignored) or `missing = "error"` (the handler
/// fails with `Error::NoProcess`).
///
/// ```
/// use eda_core::{MessageId, ProcessState};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, ProcessState)]
/// #[process(name = "shop.payment", key = String)]
/// pub struct Payment { pub timeout: MessageId }
/// ```
#[proc_macro_derive(ProcessState, attributes(process))]
pub fn derive_process_state(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    process::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `Aggregate`: mark the id field `#[aggregate(id)]`; the version
/// (`u64`) and events (`eda_core::Events`) fields are found by the names
/// `version` and `events`, or marked `#[aggregate(version)]` and
/// `#[aggregate(events)]`. `#[aggregate(name = "…")]` on the struct names it
/// in errors and logs.
///
/// ```
/// use eda_core::{Aggregate, Events};
///
/// #[derive(Debug, Clone, Aggregate)]
/// pub struct Product {
///     #[aggregate(id)]
///     pub sku: String,
///     #[aggregate(version)]
///     pub version_number: u64,
///     pub events: Events,
/// }
/// ```
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    aggregate::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `UnitOfWork` for a struct whose fields are its transaction
/// (`#[uow(transaction)]`, or any field of type `UowTransaction`), the identity
/// maps of its repositories (`IdentityMap<Aggregate>`), process managers
/// (`ProcessMap<State>`), adapters (`Arc<Adapter>`), and fields built with
/// `Default` (`#[uow(skip)]`).
///
/// It also generates inherent `commit` and `rollback` methods, and an
/// accessor per field, public and named like the field (which can stay
/// private):
/// `uow.products().get(&sku)`. With a transaction, also `raise` (an event
/// of the unit of work itself), and `schedule(msg, delay)`,
/// `schedule_at(msg, time)` and `cancel_scheduled(id)`: messages
/// delivered later, kept in the same transaction.
///
/// ```
/// use eda_core::{Aggregate, Events, IdentityMap, UowTransaction, UnitOfWork};
///
/// #[derive(Clone, Aggregate)]
/// pub struct Product { #[aggregate(id)] pub sku: String, pub version: u64, pub events: Events }
///
/// #[derive(UnitOfWork)]
/// pub struct AllocationUow {
///     #[uow(transaction)]
///     tx: UowTransaction,
///     pub products: IdentityMap<Product>,
/// }
/// ```
#[proc_macro_derive(UnitOfWork, attributes(uow))]
pub fn derive_unit_of_work(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    uow::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares the handler of a command: an `async fn` whose first parameter is
/// the command (by value or `&`), whose other parameters are lent by the bus
/// (`&mut` a unit of work, `&` an adapter, `&Metadata`, `&Causation` to send
/// the commands it causes, `&MessageBus`), and which returns
/// `Result<Output, E>`. It takes at most six parameters after the command,
/// in any order, and at most one unit of work.
///
/// The attribute keeps the function as written and registers it; calling
/// it is ordinary generic code in `eda-core` (its `handler` module), which
/// resolves the parameters, begins the unit of work, records the inbox,
/// calls, and hands on the result and the events. A mistake in the
/// signature is reported once, at the type that is wrong.
///
/// Option: `id = "…"`, the handler's stable identity, which the inbox
/// records with each message it handled. By default it is
/// `<crate name>::<fn name>`: moving the function to another module keeps
/// it, renaming the function changes it. Before renaming a handler in a
/// running system, give it its old id (`#[command_handler(id =
/// "shop::old_name")]`), or messages it handled before may run again when
/// redelivered.
///
/// A command has exactly one handler: a second one in the same module does
/// not compile, and `MessageBus::builder().build()` rejects one anywhere.
///
/// ```
/// # use eda_core::{Command, BoxError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// # #[command(output = u32)]
/// # pub struct Double { pub n: u32 }
/// #[eda_core::command_handler]
/// async fn double(cmd: Double) -> Result<u32, BoxError> {
///     Ok(cmd.n * 2)
/// }
/// ```
#[proc_macro_attribute]
pub fn command_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler_attribute(args, item, Kind::Command)
}

/// Declares a handler of an event: an `async fn` whose first parameter is
/// the event (`&` or by value), whose other parameters are lent by the bus
/// like a command handler's, and which returns `()` or `Result<(), E>`.
///
/// An event has any number of handlers; each runs in its own unit of work,
/// and a failing one is retried by policy without stopping the others.
///
/// Option: `id = "…"`, the handler's stable identity in the inbox, as for
/// `#[command_handler]` (default `<crate name>::<fn name>`). The handlers of
/// one event must have different ids: `build()` says so otherwise.
///
/// The handlers of one event run one after the other, in a stable order:
/// by module path, then file and line. A handler should not rely on that
/// order (as APwP's read model relies on running before `reallocate`): put
/// what it needs in the event instead.
///
/// ```
/// # use eda_core::{Event, Adapter};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # pub struct OutOfStock { pub sku: String }
/// pub struct EmailSender;
/// impl Adapter for EmailSender {}
///
/// #[eda_core::event_handler]
/// async fn notify(event: &OutOfStock, email: &EmailSender) -> Result<(), std::io::Error> {
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler_attribute(args, item, Kind::Event)
}

fn handler_attribute(args: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    let original: proc_macro2::TokenStream = item.clone().into();
    let item = match syn::parse::<ItemFn>(item) {
        Ok(item) => item,
        Err(_) => {
            let (attr, example) = match kind {
                Kind::Command => ("command_handler", "async fn allocate(cmd: Allocate, …)"),
                Kind::Event => ("event_handler", "async fn notify(event: &Allocated, …)"),
            };
            let e = syn::Error::new_spanned(
                &original,
                format_args!("`#[{attr}]` goes on an `async fn`, e.g. `{example}`"),
            );
            return ctxt::with_errors(original, e).into();
        }
    };
    handler::expand(args.into(), item.clone(), kind)
        .unwrap_or_else(|e| ctxt::with_errors(item, e))
        .into()
}

/// Registers a repository: put it on `impl Repository for YourRepository`
/// (how one aggregate is loaded and saved on one database) or on
/// `impl Find<YourFinder> for YourRepository` (a lookup other than by id).
/// Units of work then use it whenever the bus's database is the one of its
/// `type Connection`.
///
/// See [`Repository`](../eda_core/trait.Repository.html) for a complete
/// example; on Postgres:
///
/// ```text
/// #[repository]
/// impl Repository for PgProductRepository {
///     type Aggregate = Product;
///     type Connection = sqlx::PgConnection;
///     async fn get(conn: &mut PgConnection, sku: &String) -> Result<Option<Product>, RepositoryError> { /* SELECT … */ }
///     async fn add(conn: &mut PgConnection, product: &Product) -> Result<(), RepositoryError> { /* INSERT … */ }
///     async fn update(conn: &mut PgConnection, product: &Product, expected_version: u64)
///         -> Result<bool, RepositoryError> { /* UPDATE … WHERE version = $expected */ }
/// }
/// ```
#[proc_macro_attribute]
pub fn repository(args: TokenStream, item: TokenStream) -> TokenStream {
    let original: proc_macro2::TokenStream = item.clone().into();
    let item = match syn::parse::<ItemImpl>(item) {
        Ok(item) => item,
        Err(_) => {
            let e = syn::Error::new_spanned(
                &original,
                "`#[repository]` goes on `impl Repository for YourRepository { … }` or on `impl Find<YourFinder> for YourRepository { … }`",
            );
            return ctxt::with_errors(original, e).into();
        }
    };
    repository::expand(args.into(), item.clone())
        .unwrap_or_else(|e| ctxt::with_errors(item, e))
        .into()
}
