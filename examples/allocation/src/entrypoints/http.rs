//! The HTTP entrypoint (APwP's `flask_app.py`), on axum: JSON in and out.
//!
//! - `POST /batches` `{"ref", "sku", "qty", "eta"}` (eta: a date or null) →
//!   201.
//! - `POST /allocate` `{"orderid", "sku", "qty"}` → 201 `{"batchref"}`; an
//!   unknown sku → 400 `{"message": "Invalid sku <sku>"}`; out of stock →
//!   409 `{"message": "Out of stock for sku <sku>"}`.
//! - `GET /allocations/{orderid}` → 200 `[{"sku", "batchref"}]` from the read
//!   model, or 404.
//!
//! Bad input is a 4xx with a JSON reason, never a 500: malformed JSON (400),
//! a wrong content type (415), missing fields or wrong types (422), a
//! quantity that is not a positive integer (422), a body over 1 MiB (413).
//! A failure of the framework (the database is down) is a 503 or 500 whose
//! body says no more than that; the details go to the log.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDate;
use eda_core::{CommandError, MessageBus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::commands::{Allocate, CreateBatch};
use crate::domain::errors::AllocationError;
use crate::views;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The service's routes, on this bus.
pub fn router(bus: MessageBus) -> Router {
    Router::new()
        .route("/batches", post(add_batch))
        .route("/allocate", post(allocate))
        .route("/allocations/{orderid}", get(allocations))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(bus)
}

/// An error response: a status and `{"message": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// A failure of the framework: logged in full, answered without details.
    fn internal<E: std::fmt::Display + std::fmt::Debug>(error: CommandError<E>) -> Self {
        match &error {
            CommandError::Bus(e) if e.is_conflict() => {
                tracing::warn!(error = %e, "conflict outlived the retries");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the request conflicted with others; try again",
                )
            }
            CommandError::Bus(e) => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
            CommandError::Handler(e) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(Message {
                message: &self.message,
            }),
        )
            .into_response()
    }
}

/// `Json<T>`, with its rejections answered in JSON like every other error.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

fn reject(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body larger than {MAX_BODY_BYTES} bytes")
    } else {
        rejection.body_text()
    };
    ApiError::new(status, message)
}

/// A quantity: a positive integer that fits the domain's `u32`.
fn quantity(qty: i64) -> Result<u32, ApiError> {
    u32::try_from(qty).ok().filter(|q| *q > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("qty must be a positive integer, not {qty}"),
        )
    })
}

fn not_blank(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field} must not be empty"),
        ));
    }
    Ok(())
}

/// `POST /batches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    /// The batch's reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The product.
    pub sku: String,
    /// Units purchased.
    pub qty: i64,
    /// When it arrives; null: in the warehouse.
    #[serde(default)]
    pub eta: Option<NaiveDate>,
}

async fn add_batch(
    State(bus): State<MessageBus>,
    Body(batch): Body<NewBatch>,
) -> Result<StatusCode, ApiError> {
    not_blank("ref", &batch.reference)?;
    not_blank("sku", &batch.sku)?;
    let qty = quantity(batch.qty)?;
    bus.handle(CreateBatch::new(batch.reference, batch.sku, qty, batch.eta))
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::CREATED)
}

/// `POST /allocate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAllocation {
    /// The order.
    pub orderid: String,
    /// The product.
    pub sku: String,
    /// Units ordered.
    pub qty: i64,
}

#[derive(Serialize)]
struct Allocated {
    batchref: String,
}

async fn allocate(
    State(bus): State<MessageBus>,
    Body(line): Body<NewAllocation>,
) -> Result<Response, ApiError> {
    not_blank("orderid", &line.orderid)?;
    not_blank("sku", &line.sku)?;
    let qty = quantity(line.qty)?;
    let sku = line.sku.clone();
    match bus.handle(Allocate::new(line.orderid, line.sku, qty)).await {
        Ok(Some(batchref)) => {
            Ok((StatusCode::CREATED, Json(Allocated { batchref })).into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Out of stock for sku {sku}"),
        )),
        Err(CommandError::Handler(e @ AllocationError::InvalidSku(_))) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// A line of `GET /allocations/{orderid}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocationLine {
    /// The product.
    pub sku: String,
    /// The batch it is allocated to.
    pub batchref: String,
}

async fn allocations(
    State(bus): State<MessageBus>,
    Path(orderid): Path<String>,
) -> Result<Json<Vec<AllocationLine>>, ApiError> {
    let lines = views::allocations(&orderid, &bus)
        .await
        .map_err(|e| ApiError::internal(CommandError::<AllocationError>::Bus(e)))?;
    if lines.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no allocations for order {orderid}"),
        ));
    }
    Ok(Json(
        lines
            .into_iter()
            .map(|a| AllocationLine {
                sku: a.sku,
                batchref: a.batchref,
            })
            .collect(),
    ))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}
