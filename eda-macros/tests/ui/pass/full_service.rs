//! A whole service: commands, events, a unit of work with every kind of
//! field, an aggregate, repositories for a made-up database, and handlers
//! that take everything the bus can lend.

use std::sync::Arc;

use eda_core::prelude::*;
use eda_core::{Find, RepositoryError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shop.add_product", output = Option<String>)]
pub struct AddProduct {
    pub sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "shop.rename", error = ShopError)]
pub struct Rename {
    pub sku: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "shop.product_added", external)]
pub struct ProductAdded {
    pub sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
pub struct Renamed {
    pub sku: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("no product {0}")]
    NoProduct(String),
}
impl DomainError for ShopError {}

#[derive(Debug, Clone, Aggregate)]
#[aggregate(name = "product")]
pub struct Product {
    #[aggregate(id)]
    pub sku: String,
    pub name: String,
    #[aggregate(version)]
    pub version_number: u64,
    pub events: Events,
}

pub struct Mailer {
    pub sent: std::sync::Mutex<Vec<String>>,
}
impl Adapter for Mailer {}

#[derive(Default)]
pub struct Scratch {
    pub notes: Vec<String>,
}

#[derive(UnitOfWork)]
pub struct ShopUow {
    #[uow(transaction)]
    tx: UowTransaction,
    pub products: IdentityMap<Product>,
    pub mailer: Arc<Mailer>,
    #[uow(skip)]
    pub scratch: Scratch,
}

/// A database connection of a made-up driver.
pub struct FakeConnection;

pub struct FakeProductRepository;

#[repository]
impl Repository for FakeProductRepository {
    type Aggregate = Product;
    type Connection = FakeConnection;

    async fn get(_: &mut FakeConnection, _: &String) -> Result<Option<Product>, RepositoryError> {
        Ok(None)
    }
    async fn add(_: &mut FakeConnection, _: &Product) -> Result<(), RepositoryError> {
        Ok(())
    }
    async fn update(_: &mut FakeConnection, _: &Product, _: u64) -> Result<bool, RepositoryError> {
        Ok(true)
    }
}

pub struct ByName(pub String);

impl Finder<Product> for ByName {
    fn matches(&self, product: &Product) -> bool {
        product.name == self.0
    }
}

#[repository]
impl Find<ByName> for FakeProductRepository {
    async fn find(_: &mut FakeConnection, _: &ByName) -> Result<Option<Product>, RepositoryError> {
        Ok(None)
    }
}

#[command_handler]
async fn add_product(
    cmd: AddProduct,
    uow: &mut ShopUow,
    metadata: &Metadata,
) -> Result<Option<String>, eda_core::Error> {
    let _ = metadata.message_id;
    uow.scratch.notes.push(cmd.sku.clone());
    let mut product = Product {
        sku: cmd.sku.clone(),
        name: String::new(),
        version_number: 0,
        events: Events::new(),
    };
    product.events.raise(ProductAdded {
        sku: cmd.sku.clone(),
    });
    uow.products().add(product)?;
    uow.commit().await?;
    Ok(Some(cmd.sku))
}

#[command_handler]
async fn rename(cmd: &Rename, uow: &mut ShopUow) -> Result<(), CommandError<ShopError>> {
    let product = uow
        .products()
        .get(&cmd.sku)
        .await?
        .ok_or_else(|| ShopError::NoProduct(cmd.sku.clone()))?;
    product.name = cmd.name.clone();
    product.events.raise(Renamed {
        sku: cmd.sku.clone(),
    });
    uow.commit().await?;
    Ok(())
}

#[event_handler]
async fn mail_on_added(event: &ProductAdded, mailer: &Mailer) {
    mailer.sent.lock().unwrap().push(event.sku.clone());
}

#[event_handler]
async fn rename_on_added(event: ProductAdded, bus: &MessageBus) -> anyhow::Result<()> {
    bus.handle(Rename {
        sku: event.sku,
        name: "renamed".into(),
    })
    .await?;
    Ok(())
}

#[event_handler]
async fn log_renamed(_: &Renamed, uow: &mut ShopUow) -> Result<(), BoxError> {
    uow.mailer().sent.lock().unwrap().push("renamed".into());
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = InMemoryDatabase::new();
    let bus = MessageBus::builder()
        .adapter(db.clone())
        .adapter(Mailer {
            sent: Default::default(),
        })
        .build()
        .expect("the wiring is complete");
    let out = bus
        .handle(AddProduct { sku: "LAMP".into() })
        .await
        .expect("the command succeeds");
    assert_eq!(out.as_deref(), Some("LAMP"));
    let product = db.get::<Product>(&"LAMP".to_string()).expect("saved");
    assert_eq!(product.name, "renamed");
    let sent = bus.adapter::<Mailer>().unwrap().sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
}
