//! The inbox: how a message that came from outside the service (a broker,
//! or the dispatch journal's recovery) is handled once per handler however
//! often it is delivered (rule 11 of DESIGN.md).
//!
//! Each handler that takes a unit of work with a transaction records the
//! message's id with its own id ([`HandlerRef`](crate::HandlerRef)'s stable
//! id, `#[event_handler(id = "…")]`) in that transaction, before it runs:
//! a redelivery finds the row and the handler is skipped (a duplicate
//! outcome, acknowledged); a handler that fails rolls the row back with
//! everything else, so the redelivery runs it again. A database keeps the
//! rows through [`DatabaseTransaction::record_inbox`](crate::backend::DatabaseTransaction::record_inbox);
//! the SQL adapters prune old ones (`prune_inbox`, run by the host).
//! A handler without a transaction has no inbox: it runs at each delivery.

use crate::context::Context;
use crate::error::Error;
use crate::uow::UowTransaction;

/// For a message from outside, records it in the inbox of the unit of
/// work's transaction. `false`: it was handled already. Callers box it:
/// only a message from outside records itself, and the inbox's future
/// would otherwise make every call's future larger (and slower to move into
/// its box). (The start of a call is written out in `run_command` and
/// `run_event`: a shared `async fn` for it, tried, cost 80 instructions
/// per call more.)
pub(crate) async fn record(
    tx: Option<&mut UowTransaction>,
    ctx: &Context<'_>,
) -> Result<bool, Error> {
    if let Some(tx) = tx
        && !tx.__record_inbox(ctx.handler).await?
    {
        tracing::debug!(handler = ctx.handler, "already handled (inbox), skipped");
        return Ok(false);
    }
    Ok(true)
}
