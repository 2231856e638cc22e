//! The unit of work of the orders handlers.

use eda_core::{IdentityMap, ProcessMap, UnitOfWork, UowTransaction};

use crate::domain::model::Order;
use crate::service_layer::fulfilment::Fulfilment;

/// One transaction over the orders and their fulfilments.
///
/// The bus begins one for each handler that takes `&mut OrdersUow`;
/// handlers reach the orders through `uow.orders()` and end with
/// `uow.commit()`: every order they loaded or added is then saved, with a
/// version check, and the events it raised are handed to the bus (the
/// external ones through the outbox); not committing rolls everything
/// back. For a message from the broker, the inbox records it in the same
/// transaction, so that a redelivery changes nothing.
#[derive(Debug, UnitOfWork)]
pub struct OrdersUow {
    #[uow(transaction)]
    tx: UowTransaction,
    orders: IdentityMap<Order>,
    fulfilments: ProcessMap<Fulfilment>,
}
