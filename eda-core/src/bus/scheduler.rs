//! The scheduler: delivering the messages units of work scheduled, when
//! they are due ([`MessageBus::deliver_due`], [`MessageBus::scheduler`]).
//!
//! - A due **event** leaves the schedule in one transaction that writes it
//!   as its commit would have: to the outbox when it is external (the relay
//!   publishes it), to the dispatch journal when it has handlers here (then
//!   handled here, and by the journal's recovery if this process dies
//!   first).
//! - A due **command** is handled here as if it came from a broker (a
//!   handler with a unit of work records it in its inbox, so a second
//!   delivery is skipped), then leaves the schedule. A handler that fails
//!   is tried again after the [`SchedulerOptions::retry`] backoff, and
//!   parked after its last attempt.
//!
//! A claimed message is left to its instance for
//! [`SchedulerOptions::lease`]: if that instance dies, another (or the
//! same, restarted) delivers it after that.

use std::time::Duration;

use tracing::Instrument;

use super::MessageBus;
use crate::error::{Error, IncomingError};
use crate::message::{MessageId, MessageKind, Timestamp};
use crate::outbox::{ExternalMessage, OutboxWrite};
use crate::schedule::{ScheduledMessage, SchedulerOptions};
use crate::trace_context::TraceContext;

impl MessageBus {
    /// Delivers the scheduled messages that are due now, in rounds of
    /// [`SchedulerOptions::batch`] until none is left; returns how many it
    /// delivered (parked and retried ones not counted). Only messages this
    /// bus can deliver are taken: commands it handles, events it handles or
    /// publishes (another service, or a newer version of this one, on the
    /// same tables delivers its own).
    ///
    /// [`scheduler`](Self::scheduler) calls it periodically; a test can
    /// call it directly.
    pub async fn deliver_due(&self, options: &SchedulerOptions) -> Result<usize, Error> {
        let Some(db) = self.database() else {
            return Ok(0);
        };
        let names = self.deliverable();
        if names.is_empty() {
            return Ok(0);
        }
        let batch = options.batch.max(1);
        let mut delivered = 0;
        loop {
            let due = db
                .claim_due(&names, Timestamp::now(), options.lease, batch)
                .await?;
            let claimed = due.len();
            // In order of due time; the events due between two commands
            // together, in one transaction.
            let is_event = |s: &ScheduledMessage| {
                self.inner
                    .messages
                    .get(s.message.name.as_str())
                    .is_some_and(|m| m.info.kind == MessageKind::Event)
            };
            for run in due.chunk_by(|a, b| is_event(a) == is_event(b)) {
                if is_event(&run[0]) {
                    delivered += self.release_events(run.to_vec()).await?;
                } else {
                    delivered += self.deliver_commands(run, options).await?;
                }
            }
            if claimed < batch {
                return Ok(delivered);
            }
        }
    }

    /// Runs [`deliver_due`](Self::deliver_due) every
    /// [`SchedulerOptions::poll`] until `shutdown` resolves (a round under
    /// way is finished first). Errors are logged, and the next round tries
    /// again.
    ///
    /// ```no_run
    /// # async fn run(bus: eda_core::MessageBus) {
    /// use eda_core::SchedulerOptions;
    /// tokio::spawn(bus.scheduler(SchedulerOptions::default(), std::future::pending()));
    /// # }
    /// ```
    pub fn scheduler(
        &self,
        options: SchedulerOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let bus = self.clone();
        async move {
            let mut tick = tokio::time::interval(options.poll.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = &mut shutdown => return,
                }
                if let Err(e) = bus.deliver_due(&options).await {
                    tracing::warn!(error = %e, "could not deliver scheduled messages");
                }
            }
        }
    }

    /// The names of the messages this bus delivers when they are due.
    fn deliverable(&self) -> Vec<&'static str> {
        self.inner
            .messages
            .values()
            .map(|m| &m.info)
            .filter(|m| match m.kind {
                MessageKind::Command => self.inner.commands.contains_key(&m.type_id),
                MessageKind::Event => m.external || self.inner.events.contains_key(&m.type_id),
            })
            .map(|m| m.name)
            .collect()
    }

    /// Due events: out of the schedule and into the outbox or the journal,
    /// in one transaction; then the ones with handlers here are handled.
    async fn release_events(&self, events: Vec<ScheduledMessage>) -> Result<usize, Error> {
        if events.is_empty() {
            return Ok(0);
        }
        let db = self.database().ok_or(Error::NoDatabase)?;
        let ids: Vec<MessageId> = events.iter().map(ScheduledMessage::id).collect();
        let mut tx = db.begin().await?;
        let removed = tx.remove_scheduled(&ids).await?;
        let journal = tx.keeps_journal();
        // Removed by another instance whose lease on them had expired:
        // theirs to deliver.
        let released: Vec<(OutboxWrite, bool)> = events
            .into_iter()
            .filter(|s| removed.contains(&s.id()))
            .map(|s| {
                let (external, local) = match self.inner.messages.get(s.message.name.as_str()) {
                    Some(m) => (
                        m.info.external,
                        self.inner.events.contains_key(&m.info.type_id),
                    ),
                    None => (false, false),
                };
                let row = OutboxWrite {
                    message: s.message,
                    publish: external,
                    dispatch: local && journal,
                };
                (row, local)
            })
            .collect();
        // As a commit writes its events: a database without a journal
        // writes the ones to publish (`write_events`' default).
        let rows: Vec<OutboxWrite> = released
            .iter()
            .filter(|(r, _)| r.publish || r.dispatch)
            .map(|(r, _)| r.clone())
            .collect();
        let written = if rows.is_empty() {
            Ok(())
        } else {
            tx.write_events(&rows).await
        };
        match written {
            Ok(()) => tx.commit().await?,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
        let mut journaled = Vec::new();
        for (row, local) in &released {
            if *local {
                if let Err(e) = self.deliver(&row.message).await {
                    tracing::error!(error = %e, name = row.message.name, "a scheduled event failed");
                }
                if row.dispatch {
                    journaled.push(row.message.metadata.message_id);
                }
            }
        }
        if !journaled.is_empty() {
            self.mark_dispatched(&journaled).await;
        }
        Ok(released.len())
    }

    /// Due commands: each handled here, then out of the schedule; one that
    /// failed is tried again later, or parked.
    async fn deliver_commands(
        &self,
        commands: &[ScheduledMessage],
        options: &SchedulerOptions,
    ) -> Result<usize, Error> {
        if commands.is_empty() {
            return Ok(0);
        }
        let db = self.database().ok_or(Error::NoDatabase)?;
        let mut done = Vec::new();
        for scheduled in commands {
            let message = &scheduled.message;
            match self.deliver(message).await {
                Ok(()) => done.push(scheduled.id()),
                Err(e) => {
                    let attempts = scheduled.attempts.max(1);
                    // Tried again only if trying again can help.
                    let retry = !matches!(
                        e,
                        IncomingError::Malformed { .. } | IncomingError::UnknownMessage { .. }
                    ) && attempts < options.retry.attempts();
                    let next = retry.then(|| {
                        let after = options.retry.delay(attempts);
                        Timestamp::from_system_time(Timestamp::now().to_system_time() + after)
                    });
                    if next.is_some() {
                        tracing::warn!(error = %e, name = message.name, id = %scheduled.id(), attempts,
                            "a scheduled command failed; it will be tried again");
                    } else {
                        tracing::error!(error = %e, name = message.name, id = %scheduled.id(), attempts,
                            "a scheduled command failed for good: it is parked, and will not be tried again");
                    }
                    db.retry_scheduled(scheduled.id(), next).await?;
                }
            }
        }
        if !done.is_empty() {
            let mut tx = db.begin().await?;
            match tx.remove_scheduled(&done).await {
                Ok(_) => tx.commit().await?,
                Err(e) => {
                    let _ = tx.rollback().await;
                    return Err(e);
                }
            }
        }
        Ok(done.len())
    }

    /// Handles one scheduled message here, as if it came from a broker, in
    /// the trace of the handler that scheduled it.
    async fn deliver(&self, message: &ExternalMessage) -> Result<(), IncomingError> {
        let Some(registration) = self.inner.messages.get(message.name.as_str()) else {
            return Err(IncomingError::UnknownMessage {
                name: message.name.clone(),
            });
        };
        let span = tracing::info_span!(
            "scheduled",
            otel.name = %format_args!("scheduled {}", message.name),
            messaging.destination.name = message.name.as_str(),
            messaging.message.id = %message.metadata.message_id,
            trace_id = tracing::field::Empty,
        );
        message.trace.continue_in(&span);
        TraceContext::record_trace_id(&span);
        (registration.dispatch)(self, message.metadata, &message.payload)
            .instrument(span)
            .await
    }
}
