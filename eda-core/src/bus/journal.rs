//! The dispatch journal: marking the journaled events whose handlers have
//! run, and recovering the ones a process committed but never dispatched
//! ([`MessageBus::recover_undispatched`], [`MessageBus::recovery`]).

use std::time::Duration;

use tracing::Instrument;

use super::MessageBus;
use crate::error::{Error, IncomingError};
use crate::message::MessageId;
use crate::trace_context::TraceContext;

impl MessageBus {
    /// Marks the journaled events whose handlers here have run.
    #[cold]
    pub(super) async fn mark_dispatched(&self, ids: &[MessageId]) {
        if let Some(db) = self.database()
            && let Err(e) = db.mark_dispatched(ids).await
        {
            // They will be dispatched again by the recovery; the inbox
            // keeps handlers with a unit of work from running twice.
            tracing::warn!(error = %e, events = ids.len(), "could not mark events dispatched");
        }
    }

    /// Handles the events of the dispatch journal that were committed more
    /// than `older_than` ago and never dispatched: their process died
    /// between the commit and the end of their handlers. Only events this
    /// bus has handlers for are taken (a newer version of the service, or
    /// another service on the same tables, recovers its own). Each runs as if it
    /// came from a broker: handlers with a unit of work record it in their
    /// inbox, so one that had already run is skipped; handlers without one
    /// run again (at least once). Returns how many events it handled.
    ///
    /// Run it periodically in every instance ([`recovery`](Self::recovery)
    /// does), with `older_than` well above the time a message takes to
    /// handle, so that it does not race a live instance's own dispatch.
    pub async fn recover_undispatched(&self, older_than: Duration) -> Result<usize, Error> {
        const BATCH: usize = 256;
        let Some(db) = self.database() else {
            return Ok(0);
        };
        // The events this bus handles; others are left to whoever does.
        let names: Vec<&str> = self
            .inner
            .messages
            .values()
            .map(|m| &m.info)
            .filter(|m| {
                m.kind == crate::message::MessageKind::Event
                    && self.inner.events.contains_key(&m.type_id)
            })
            .map(|m| m.name)
            .collect();
        if names.is_empty() {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let rows = db.undispatched(&names, older_than, BATCH).await?;
            for row in &rows {
                tracing::warn!(
                    name = row.name,
                    id = %row.metadata.message_id,
                    "dispatching an event its process did not finish"
                );
                let handled = match self.inner.messages.get(row.name.as_str()) {
                    Some(registration) => {
                        // In the trace of the handler that committed it.
                        let span = tracing::info_span!(
                            "recover",
                            otel.name = %format_args!("recover {}", row.name),
                            messaging.destination.name = row.name.as_str(),
                            trace_id = tracing::field::Empty,
                        );
                        row.trace.continue_in(&span);
                        TraceContext::record_trace_id(&span);
                        (registration.dispatch)(self, row.metadata, &row.payload)
                            .instrument(span)
                            .await
                    }
                    None => Err(IncomingError::UnknownMessage {
                        name: row.name.clone(),
                    }),
                };
                if let Err(e) = handled {
                    tracing::error!(error = %e, name = row.name, "a recovered event failed");
                }
            }
            let ids: Vec<MessageId> = rows.iter().map(|r| r.metadata.message_id).collect();
            if !ids.is_empty() {
                db.mark_dispatched(&ids).await?;
            }
            total += rows.len();
            if rows.len() < BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs [`recover_undispatched`](Self::recover_undispatched) every
    /// `every` (and once at once), for events older than `older_than`,
    /// until `shutdown` resolves. Errors are logged and the next round
    /// tries again.
    ///
    /// ```no_run
    /// # async fn run(bus: eda_core::MessageBus) {
    /// use std::time::Duration;
    /// let recovery = bus.recovery(Duration::from_secs(5), Duration::from_secs(10), std::future::pending());
    /// tokio::spawn(recovery);
    /// # }
    /// ```
    pub fn recovery(
        &self,
        every: Duration,
        older_than: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let bus = self.clone();
        async move {
            let rounds = async {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match bus.recover_undispatched(older_than).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(events = n, "recovered undispatched events"),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not recover undispatched events")
                        }
                    }
                }
            };
            tokio::select! {
                () = rounds => {}
                () = shutdown => {}
            }
        }
    }
}
