//! The handlers: placing an order, and following what allocation says
//! about it. The bus finds them by their attributes; nothing calls them
//! directly.

use contracts::{Allocated, AllocationFailed};
use eda_core::{CommandError, Error, command_handler, event_handler};

use crate::domain::commands::PlaceOrder;
use crate::domain::errors::OrderError;
use crate::domain::model::Order;
use crate::service_layer::unit_of_work::OrdersUow;

/// Places the order (which raises `OrderPlaced`, for allocation), unless
/// one with this id was placed before. Two placed at once with one id: the
/// second insert fails, the bus runs it again, and it finds the first.
#[command_handler]
async fn place_order(cmd: PlaceOrder, uow: &mut OrdersUow) -> Result<(), CommandError<OrderError>> {
    let order = Order::place(cmd.orderid, cmd.lines)?;
    if uow.orders().read(&order.orderid).await?.is_some() {
        return Err(OrderError::AlreadyPlaced(order.orderid).into());
    }
    uow.orders().add(order)?;
    uow.commit().await?;
    Ok(())
}

/// Records the batch of a line. Allocations of orders placed elsewhere
/// (through allocation's own HTTP API) are not this service's business.
#[event_handler]
async fn record_allocation(event: &Allocated, uow: &mut OrdersUow) -> Result<(), Error> {
    match uow.orders().get(&event.orderid).await? {
        Some(order) => {
            if !order.record_allocation(&event.sku, &event.batchref) {
                let (orderid, sku) = (&event.orderid, &event.sku);
                tracing::debug!(%orderid, %sku, "allocated line not in the order, ignored");
            }
        }
        None => {
            let orderid = &event.orderid;
            tracing::debug!(%orderid, "allocation of an order placed elsewhere, ignored");
        }
    }
    uow.commit().await
}

/// Cancels the order (once), which raises `OrderCancelled`, for allocation
/// to release what it allocated to the other lines.
#[event_handler]
async fn cancel_on_allocation_failure(
    event: &AllocationFailed,
    uow: &mut OrdersUow,
) -> Result<(), Error> {
    match uow.orders().get(&event.orderid).await? {
        Some(order) => {
            if !order.record_failure(&event.sku, event.reason) {
                let (orderid, status) = (&event.orderid, order.status());
                tracing::debug!(%orderid, %status, "failure ignored: not pending or no such line");
            }
        }
        None => {
            let orderid = &event.orderid;
            tracing::debug!(%orderid, "failure of an order placed elsewhere, ignored");
        }
    }
    uow.commit().await
}
