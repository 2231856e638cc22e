//! The handlers: placing an order, and following what allocation says
//! about it, or its silence. The bus finds them by their attributes;
//! nothing calls them directly.

use contracts::{Allocated, AllocationFailed};
use eda_core::{CommandError, Error, command_handler, event_handler};

use crate::domain::commands::{ExpireOrder, PlaceOrder};
use crate::domain::errors::OrderError;
use crate::domain::model::{Order, Status};
use crate::service_layer::OrderTimeout;
use crate::service_layer::fulfilment::Fulfilment;
use crate::service_layer::unit_of_work::OrdersUow;

/// Places the order (which raises `OrderPlaced`, for allocation), unless
/// one with this id was placed before, and starts its fulfilment, with an
/// `ExpireOrder` scheduled for the timeout, in the same transaction. Two
/// placed at once with one id: the second insert fails, the bus runs it
/// again, and it finds the first. Or the first commits between the
/// second's read of the order and its start of the fulfilment (each read
/// sees what has committed): the fulfilment is there, so the order is too.
#[command_handler]
async fn place_order(
    cmd: PlaceOrder,
    uow: &mut OrdersUow,
    timeout: &OrderTimeout,
) -> Result<(), CommandError<OrderError>> {
    let order = Order::place(cmd.orderid, cmd.lines)?;
    if uow.orders().read(&order.orderid).await?.is_some() {
        return Err(OrderError::AlreadyPlaced(order.orderid).into());
    }
    let orderid = order.orderid.clone();
    uow.orders().add(order)?;
    let expire = uow.schedule(
        ExpireOrder {
            orderid: orderid.clone(),
        },
        timeout.0,
    )?;
    match uow
        .fulfilments()
        .start(orderid.clone(), Fulfilment { timeout: expire })
        .await
    {
        Ok(_) => {}
        // Started with the order, in one transaction: placed meanwhile.
        Err(Error::ProcessStarted { .. }) => return Err(OrderError::AlreadyPlaced(orderid).into()),
        Err(e) => return Err(e.into()),
    }
    uow.commit().await?;
    Ok(())
}

/// Records the batch of a line (a cancelled order refuses it, and
/// allocation deallocates it). Allocations of orders placed elsewhere
/// (through allocation's own HTTP API) are not this service's business.
#[event_handler]
async fn record_allocation(event: &Allocated, uow: &mut OrdersUow) -> Result<(), Error> {
    match uow.orders().get(&event.orderid).await? {
        Some(order) => {
            if !order.record_allocation(&event.sku, &event.batchref) {
                let (orderid, sku) = (&event.orderid, &event.sku);
                tracing::debug!(%orderid, %sku, "allocated line not in the order, ignored");
            }
            if order.status() == Status::Confirmed {
                end_fulfilment(uow, &event.orderid).await?;
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
/// to release what it allocated to the other lines, and ends its
/// fulfilment.
#[event_handler]
async fn cancel_on_allocation_failure(
    event: &AllocationFailed,
    uow: &mut OrdersUow,
) -> Result<(), Error> {
    match uow.orders().get(&event.orderid).await? {
        Some(order) => {
            if order.record_failure(&event.sku, event.reason) {
                end_fulfilment(uow, &event.orderid).await?;
            } else {
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

/// The order's timeout: if its fulfilment is still running (allocation has
/// not answered for every line), the order is cancelled with the reason
/// `timeout`, which raises `OrderCancelled`. One whose fulfilment ended
/// first is left alone (logged by the process map).
#[command_handler]
async fn expire_order(cmd: ExpireOrder, uow: &mut OrdersUow) -> Result<(), Error> {
    let Some(fulfilment) = uow.fulfilments().get(&cmd.orderid).await? else {
        return Ok(());
    };
    fulfilment.end();
    if let Some(order) = uow.orders().get(&cmd.orderid).await?
        && order.expire()
    {
        let orderid = &cmd.orderid;
        tracing::info!(%orderid, "order cancelled: allocation did not answer in time");
    }
    uow.commit().await
}

/// Ends the order's fulfilment, if it is running, and cancels its timeout.
async fn end_fulfilment(uow: &mut OrdersUow, orderid: &String) -> Result<(), Error> {
    if let eda_core::Lookup::Running(fulfilment) = uow.fulfilments().lookup(orderid).await? {
        fulfilment.end();
        let timeout = fulfilment.timeout;
        uow.cancel_scheduled(timeout).await?;
    }
    Ok(())
}
