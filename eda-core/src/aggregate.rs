//! Aggregates: the consistency boundaries that repositories load and save,
//! with a version for optimistic concurrency and the events they raised.

use std::fmt;
use std::hash::Hash;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain_error::BoxError;
use crate::message::{AnyEvent, Event, Metadata, Raised};

/// A cluster of domain objects saved as one, with a version and the events it
/// raised since it was loaded.
///
/// Derive it: mark the id field `#[aggregate(id)]`; the version and events
/// fields are found by the names `version` and `events`, or marked
/// `#[aggregate(version)]` / `#[aggregate(events)]`.
///
/// ```
/// use eda_core::{Aggregate, Events};
///
/// #[derive(Debug, Clone, Aggregate)]
/// pub struct Product {
///     #[aggregate(id)]
///     pub sku: String,
///     pub version: u64,
///     pub events: Events,
/// }
/// ```
///
/// The unit of work saves every aggregate it loaded or added when it commits,
/// checking that nobody saved it in between (`expected_version`). The version
/// it writes is the aggregate's own if the domain raised it, else the loaded
/// one plus one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "not an aggregate",
    note = "derive it: `#[derive(Clone, eda_core::Aggregate)]` with an `#[aggregate(id)]` field"
)]
pub trait Aggregate: Clone + Send + Sync + 'static {
    /// The identity of the aggregate (e.g. a product's SKU).
    type Id: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;
    /// A name for errors and logs (the type's name unless the derive says
    /// otherwise).
    const NAME: &'static str;
    /// Its id.
    fn id(&self) -> &Self::Id;
    /// Its version: how many times it was saved.
    fn version(&self) -> u64;
    /// Sets the version; the unit of work calls it when it saves.
    fn set_version(&mut self, version: u64);
    /// The events it raised and that were not collected yet.
    fn events(&self) -> &Events;
    /// The same, mutably.
    fn events_mut(&mut self) -> &mut Events;
    /// How it is written as a document, if it serializes (the derive
    /// finds out). Not an API: an aggregate implemented by hand keeps the
    /// default, has no document form, and so needs a repository on a SQL
    /// database (`build()` says so).
    #[doc(hidden)]
    fn __codec() -> Option<Codec<Self>> {
        None
    }
}

/// The events an aggregate raised since it was loaded, in order. The unit of
/// work collects them when it commits and hands them to the bus.
///
/// ```
/// use eda_core::{Event, Events};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// #[event(name = "shop.out_of_stock")]
/// struct OutOfStock { sku: String }
///
/// let mut events = Events::new();
/// events.raise(OutOfStock { sku: "LAMP".into() });
/// assert_eq!(events.last::<OutOfStock>(), Some(&OutOfStock { sku: "LAMP".into() }));
/// ```
#[derive(Default)]
pub struct Events {
    raised: Vec<Box<dyn AnyEvent>>,
}

impl Events {
    /// No events.
    pub const fn new() -> Self {
        Events { raised: Vec::new() }
    }

    /// Records an event. Metadata (id, causation) is given when the unit of
    /// work commits.
    pub fn raise<E: Event>(&mut self, event: E) {
        self.raised.push(Box::new(Raised {
            metadata: Metadata::new(),
            event,
            journaled: false,
        }));
    }

    /// How many events are pending.
    pub fn len(&self) -> usize {
        self.raised.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.raised.is_empty()
    }

    /// The pending events, type-erased, in the order they were raised.
    pub fn iter(&self) -> impl Iterator<Item = &dyn AnyEvent> + '_ {
        self.raised.iter().map(|e| &**e)
    }

    /// The pending events of type `E`, in order.
    pub fn of<E: Event>(&self) -> impl Iterator<Item = &E> + '_ {
        self.raised.iter().filter_map(|e| e.downcast_ref::<E>())
    }

    /// The last event raised, if it is an `E`.
    pub fn last<E: Event>(&self) -> Option<&E> {
        self.raised.last().and_then(|e| e.downcast_ref::<E>())
    }

    /// Drops the pending events.
    pub fn clear(&mut self) {
        self.raised.clear();
    }

    pub(crate) fn drain_into(&mut self, out: &mut Vec<Box<dyn AnyEvent>>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.raised);
        } else {
            out.append(&mut self.raised);
        }
    }
}

impl Clone for Events {
    fn clone(&self) -> Self {
        Events {
            raised: self.raised.iter().map(|e| e.__clone_box()).collect(),
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.raised.iter()).finish()
    }
}

/// Pending events are bookkeeping, not state: two aggregates with the same
/// state are equal whatever they raised.
impl PartialEq for Events {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for Events {}

/// Pending events are not state: an aggregate that derives `Serialize`
/// writes its `events` field as `null`, and reads it back empty, so that it
/// can be stored as a document without `#[serde(skip)]`.
impl serde::Serialize for Events {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for Events {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Events::new())
    }
}

/// How an aggregate that derives `Serialize` and `Deserialize` is written
/// as a document (the derive finds out whether it does).
#[doc(hidden)]
pub struct Codec<A: Aggregate> {
    pub encode: fn(&A) -> Result<String, BoxError>,
    pub decode: fn(&str) -> Result<A, BoxError>,
    pub key: fn(&A::Id) -> String,
}

impl<A: Aggregate> Clone for Codec<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: Aggregate> Copy for Codec<A> {}

/// The derive's probe: `(&Probe::<A>::new()).__codec()` is `Some` when `A`
/// (and its id) serialize, `None` otherwise (autoref specialization: the
/// first trait applies only with the bounds, the second always, one
/// reference further).
#[doc(hidden)]
pub struct Probe<A>(std::marker::PhantomData<A>);

impl<A> Probe<A> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Probe(std::marker::PhantomData)
    }
}

#[doc(hidden)]
pub trait ViaSerde<A: Aggregate> {
    fn __codec(&self) -> Option<Codec<A>>;
}

impl<A> ViaSerde<A> for Probe<A>
where
    A: Aggregate + Serialize + DeserializeOwned,
    A::Id: Serialize,
{
    fn __codec(&self) -> Option<Codec<A>> {
        Some(Codec {
            encode: |a| serde_json::to_string(a).map_err(Into::into),
            // The error names the field that failed (`lines[2].qty: …`).
            decode: |s| {
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(s))
                    .map_err(Into::into)
            },
            key: |id| match serde_json::to_value(id) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(other) => other.to_string(),
                // An id that fails to serialize (a map with non-string keys)
                // is still an id: its Debug form.
                Err(_) => format!("{id:?}"),
            },
        })
    }
}

#[doc(hidden)]
pub trait WithoutSerde<A: Aggregate> {
    fn __codec(&self) -> Option<Codec<A>>;
}

impl<A: Aggregate> WithoutSerde<A> for &Probe<A> {
    fn __codec(&self) -> Option<Codec<A>> {
        None
    }
}
