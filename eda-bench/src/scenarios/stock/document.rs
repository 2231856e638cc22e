//! The stock of [`super`] kept as a document by eda's aggregate store: no
//! repository, no table of its own (issue 13). Its own bus scope, so that a
//! service on another database than Postgres (the `sqlite` scenario) can run
//! it without the Postgres repository of [`super::Stock`].

use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Reserved, sku};

/// The bus scope of the document variant alone.
pub(crate) const SCOPE: &str = module_path!();

/// The aggregate's name in eda's store.
pub(crate) const AGGREGATE: &str = "BenchStockDocument";

/// The stock, as a document.
#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "BenchStockDocument")]
pub(crate) struct StockDocument {
    #[aggregate(id)]
    sku: String,
    qty: i64,
    version: u64,
    events: Events,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "bench.reserve_document", output = i64)]
pub(crate) struct ReserveDocument {
    pub(crate) sku: String,
    pub(crate) seq: u64,
}

#[derive(UnitOfWork)]
pub(crate) struct DocumentUow {
    tx: UowTransaction,
    stock: IdentityMap<StockDocument>,
}

/// [`reserve`](super::reserve), on the document.
#[command_handler]
async fn reserve_document(
    cmd: ReserveDocument,
    uow: &mut DocumentUow,
) -> Result<i64, CommandError<BoxError>> {
    let stock = uow.stock().get(&cmd.sku).await?.ok_or("no such sku")?;
    stock.qty -= 1;
    let qty = stock.qty;
    stock.events.raise(Reserved {
        sku: cmd.sku,
        qty,
        seq: cmd.seq,
    });
    uow.commit().await?;
    Ok(qty)
}

/// The command with sequence number `seq`, on the stock kept as a document.
pub(crate) fn command(seq: u64) -> ReserveDocument {
    ReserveDocument { sku: sku(seq), seq }
}
