//! The handlers: one per command, and the reactions to events (APwP's
//! `handlers.py`). The bus finds them by their attributes; nothing calls them
//! directly.

use contracts::{AllocationFailed, AllocationRefused, FailureReason, OrderCancelled, OrderPlaced};
use eda_core::{Causation, CommandError, command_handler, event_handler};

use crate::adapters::notifications::{NotificationError, Notifications};
use crate::domain::commands::{
    Allocate, AllocateOrder, ChangeBatchQuantity, CreateBatch, DeallocateOrder,
};
use crate::domain::errors::AllocationError;
use crate::domain::events::{Deallocated, OutOfStock};
use crate::domain::model::{Batch, OrderLine, Product};
use crate::service_layer::unit_of_work::{AllocationUow, ByBatchref};

/// Where out-of-stock notifications go.
pub const STOCK_ADDRESS: &str = "stock@made.com";

/// What a command handler returns: its output, or the domain's error, or
/// the framework's (which `?` sends to `CommandError::Bus`).
type Handled<T> = Result<T, CommandError<AllocationError>>;

/// Adds a batch to its product, creating the product if it is new.
#[command_handler]
async fn add_batch(cmd: CreateBatch, uow: &mut AllocationUow) -> Handled<()> {
    let batch = Batch::new(cmd.reference, cmd.sku.clone(), cmd.qty, cmd.eta);
    let product = match uow.products().get(&cmd.sku).await? {
        Some(product) => product,
        None => uow.products().add(Product::new(cmd.sku, Vec::new()))?,
    };
    product.batches.push(batch);
    uow.commit().await?;
    Ok(())
}

/// Allocates an order line; `None` when out of stock (the product raised
/// `OutOfStock`, which is committed like any other change).
#[command_handler]
async fn allocate(cmd: Allocate, uow: &mut AllocationUow) -> Handled<Option<String>> {
    let line = OrderLine::new(cmd.orderid, cmd.sku, cmd.qty);
    let Some(product) = uow.products().get(&line.sku).await? else {
        return Err(AllocationError::InvalidSku(line.sku).into());
    };
    let batchref = product.allocate(line);
    uow.commit().await?;
    Ok(batchref)
}

/// Allocates every line of an order placed in the orders service, in one
/// unit of work: each line that cannot be allocated raises an
/// `AllocationFailed` with the reason, for the orders service.
///
/// The handler raises it, not the product, for both reasons: an unknown SKU
/// has no product to raise anything, the message is about an order (the
/// contract with orders) rather than a product, and `Product::allocate`
/// stays what the plain `Allocate` uses (whose caller is answered directly,
/// with no `AllocationFailed`). The product still raises `OutOfStock`, as
/// for any allocation.
#[command_handler]
async fn allocate_order(cmd: AllocateOrder, uow: &mut AllocationUow) -> Handled<()> {
    for line in cmd.lines {
        let failure = match uow.products().get(&line.sku).await? {
            None => Some(FailureReason::UnknownSku),
            Some(product) => product
                .allocate(OrderLine::new(
                    cmd.orderid.clone(),
                    line.sku.clone(),
                    line.qty,
                ))
                .is_none()
                .then_some(FailureReason::OutOfStock),
        };
        if let Some(reason) = failure {
            uow.raise(AllocationFailed {
                orderid: cmd.orderid.clone(),
                sku: line.sku,
                qty: line.qty,
                reason,
            })?;
        }
    }
    uow.commit().await?;
    Ok(())
}

/// Releases a cancelled order's allocations from each of its products.
/// A product is read first and changed only if it holds a line of the
/// order, so that the others (the one that was out of stock, say) are
/// neither written nor in conflict with allocations running meanwhile.
#[command_handler]
async fn deallocate_order(cmd: DeallocateOrder, uow: &mut AllocationUow) -> Handled<()> {
    for sku in &cmd.skus {
        let holds = uow
            .products()
            .read(sku)
            .await?
            .is_some_and(|p| p.holds_order(&cmd.orderid));
        if holds && let Some(product) = uow.products().get(sku).await? {
            product.deallocate_order(&cmd.orderid);
        }
    }
    uow.commit().await?;
    Ok(())
}

/// Changes a batch's quantity; the lines it deallocates raise `Deallocated`.
#[command_handler]
async fn change_batch_quantity(cmd: ChangeBatchQuantity, uow: &mut AllocationUow) -> Handled<()> {
    let finder = ByBatchref(cmd.batchref);
    let Some(product) = uow.products().find(&finder).await? else {
        return Err(AllocationError::UnknownBatch(finder.0).into());
    };
    product
        .change_batch_quantity(&finder.0, cmd.qty)
        .map_err(AllocationError::from)?;
    uow.commit().await?;
    Ok(())
}

/// Allocates a deallocated line again, as a new `Allocate` command caused
/// by the `Deallocated` (its own unit of work, retried on conflict like any
/// command; sent once however often the event is dispatched).
#[event_handler]
async fn reallocate(event: &Deallocated, cause: &Causation) -> Handled<()> {
    let command = Allocate::new(event.orderid.clone(), event.sku.clone(), event.qty);
    cause.send(command).await?;
    Ok(())
}

/// Allocates an order placed in the orders service, as an `AllocateOrder`
/// caused by the `OrderPlaced`: applied once however often the event is
/// delivered.
#[event_handler]
async fn allocate_placed_order(event: &OrderPlaced, cause: &Causation) -> Handled<()> {
    let command = AllocateOrder {
        orderid: event.orderid.clone(),
        lines: event.lines.clone(),
    };
    cause.send(command).await?;
    Ok(())
}

/// Releases what was allocated to a cancelled order, as a `DeallocateOrder`
/// caused by the `OrderCancelled` (once however often it is delivered).
#[event_handler]
async fn release_cancelled_order(event: &OrderCancelled, cause: &Causation) -> Handled<()> {
    let command = DeallocateOrder {
        orderid: event.orderid.clone(),
        skus: event.lines.iter().map(|l| l.sku.clone()).collect(),
    };
    cause.send(command).await?;
    Ok(())
}

/// Deallocates a line that orders refused: it was allocated after its
/// order had been cancelled (the order timed out while this service was
/// away). Through `DeallocateOrder`, caused by the refusal (once however
/// often it is delivered); a line no longer allocated changes nothing.
#[event_handler]
async fn release_refused_allocation(event: &AllocationRefused, cause: &Causation) -> Handled<()> {
    let command = DeallocateOrder {
        orderid: event.orderid.clone(),
        skus: vec![event.sku.clone()],
    };
    cause.send(command).await?;
    Ok(())
}

/// Tells the stock team that a product ran out.
#[event_handler]
async fn send_out_of_stock_notification(
    event: &OutOfStock,
    notifications: &Notifications,
) -> Result<(), NotificationError> {
    notifications
        .send(STOCK_ADDRESS, &format!("Out of stock for {}", event.sku))
        .await
}
