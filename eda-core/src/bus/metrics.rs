//! The bus's counters: `Metrics`, kept in the bus and counted as it
//! works (and one in its services, which handlers count), and
//! [`BusMetrics`], their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::MessageBus;

/// Counters of the bus since it was built.
#[derive(Default, Debug)]
pub(super) struct Metrics {
    pub(super) command_conflicts: AtomicU64,
    pub(super) event_handler_failures: AtomicU64,
    pub(super) event_handler_retries: AtomicU64,
    pub(super) events_unhandled: AtomicU64,
}

/// A snapshot of the bus's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusMetrics {
    /// Command runs that ended in a version conflict (and were retried, or
    /// returned once out of attempts).
    pub command_conflicts: u64,
    /// Event handlers that failed after their retries.
    pub event_handler_failures: u64,
    /// Event handler runs that failed and were retried.
    pub event_handler_retries: u64,
    /// Events raised that have no handler here and are not `external`:
    /// they went nowhere (each name is also logged, once).
    pub events_unhandled: u64,
    /// Handlers that succeeded without committing a unit of work that held
    /// changes (aggregates lent mutably, events raised): the changes were
    /// rolled back. Each is also logged.
    pub uncommitted: u64,
}

impl MessageBus {
    /// Counters since the bus was built.
    pub fn metrics(&self) -> BusMetrics {
        let m = &self.inner.metrics;
        BusMetrics {
            command_conflicts: m.command_conflicts.load(Ordering::Relaxed),
            event_handler_failures: m.event_handler_failures.load(Ordering::Relaxed),
            event_handler_retries: m.event_handler_retries.load(Ordering::Relaxed),
            events_unhandled: m.events_unhandled.load(Ordering::Relaxed),
            uncommitted: self.inner.services.uncommitted.load(Ordering::Relaxed),
        }
    }
}
