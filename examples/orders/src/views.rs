//! What the HTTP API reads. The order is its own read model: a client asks
//! where an order stands, which is what the aggregate holds, so there is no
//! separate view to keep (allocation's `views` is one because its readers
//! want orders and its aggregate is the product).

use eda_core::{Error, MessageBus};

use crate::domain::model::Order;
use crate::service_layer::unit_of_work::OrdersUow;

/// The order as committed; `None` for an order never placed here.
pub async fn order(orderid: &str, bus: &MessageBus) -> Result<Option<Order>, Error> {
    // Read only, then dropped: rolled back, nothing saved, and no version
    // check that could conflict with the handlers.
    let mut uow = bus.begin::<OrdersUow>().await?;
    let order = uow.orders().read(&orderid.to_owned()).await?;
    Ok(order.cloned())
}
