//! The HTTP entrypoint, on axum: JSON in and out.
//!
//! - `POST /orders` `{"orderid", "lines": [{"sku", "qty"}]}` → 201
//!   `{"orderid", "status": "pending"}`; an orderid placed before → 409.
//! - `GET /orders/{orderid}` → 200 `{"orderid", "status", "reason",
//!   "lines": [{"sku", "qty", "batchref"}]}` (status `pending`,
//!   `confirmed` or `cancelled`; reason and batchref `null` until there is
//!   one), or 404.
//!
//! Bad input is a 4xx with a JSON reason `{"message": …}`, never a 500:
//! malformed JSON (400), a wrong content type (415), missing or unknown
//! fields, wrong types, an empty orderid or sku, a quantity that is not a
//! positive integer, no lines or more than
//! [`MAX_LINES`](crate::domain::model::MAX_LINES), a SKU twice in
//! one order (422), a body over 1 MiB (413). A failure of the framework (the
//! database is down) is a 503 or 500 whose body says no more than that;
//! the details go to the log.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use contracts::OrderLine;
use eda_core::{CommandError, MessageBus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::commands::PlaceOrder;
use crate::domain::errors::OrderError;
use crate::domain::model::{Order, Status};
use crate::views;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The service's routes, on this bus.
pub fn router(bus: MessageBus) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{orderid}", get(order))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(bus)
}

/// An error response: a status and `{"message": …}`.
#[derive(Debug)]
struct ApiError {
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

    /// A failure of the framework: logged in full, answered without
    /// details.
    fn internal(error: eda_core::Error) -> Self {
        if error.is_conflict() {
            tracing::warn!(error = %error, "conflict outlived the retries");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request conflicted with others; try again",
            )
        } else {
            tracing::error!(error = %error, "request failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

impl From<CommandError<OrderError>> for ApiError {
    fn from(error: CommandError<OrderError>) -> Self {
        match error {
            CommandError::Handler(e @ OrderError::AlreadyPlaced(_)) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            // Every other refusal is about the order as sent.
            CommandError::Handler(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            CommandError::Bus(e) => ApiError::internal(e),
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
struct Body<T>(T);

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

/// `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The order's id, chosen by the client.
    pub orderid: String,
    /// Its lines, one per product.
    pub lines: Vec<NewLine>,
}

/// A line of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLine {
    /// The product.
    pub sku: String,
    /// Units ordered: a positive integer that fits the domain's `u32`
    /// (read wider, so that a larger one gets that reason, not a type
    /// error).
    pub qty: i64,
}

impl NewLine {
    fn into_line(self) -> Result<OrderLine, ApiError> {
        let qty = u32::try_from(self.qty)
            .ok()
            .filter(|q| *q > 0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "qty of {} must be a positive integer, not {}",
                        self.sku, self.qty
                    ),
                )
            })?;
        Ok(OrderLine::new(self.sku, qty))
    }
}

/// The answer to `POST /orders`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placed {
    /// The order.
    pub orderid: String,
    /// `pending`: allocation has not answered yet.
    pub status: String,
}

/// The rules of an order (a non-blank id and SKUs, 1 to 100 lines of
/// distinct SKUs) are the domain's: `PlaceOrder` refuses what breaks them,
/// with the reason, answered 422.
async fn place_order(
    State(bus): State<MessageBus>,
    Body(order): Body<NewOrder>,
) -> Result<Response, ApiError> {
    let lines = order
        .lines
        .into_iter()
        .map(NewLine::into_line)
        .collect::<Result<_, _>>()?;
    bus.handle(PlaceOrder::new(order.orderid.clone(), lines))
        .await?;
    let placed = Placed {
        orderid: order.orderid,
        status: Status::Pending.to_string(),
    };
    Ok((StatusCode::CREATED, Json(placed)).into_response())
}

/// The answer to `GET /orders/{orderid}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderView {
    /// The order.
    pub orderid: String,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// Why it was cancelled; `null` unless it was.
    pub reason: Option<String>,
    /// Its lines, in the order they were placed.
    pub lines: Vec<LineView>,
}

/// A line of [`OrderView`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineView {
    /// The product.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch it is allocated to; `null` until it is.
    pub batchref: Option<String>,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> Self {
        OrderView {
            orderid: order.orderid.clone(),
            status: order.status().to_string(),
            reason: order.reason().map(str::to_owned),
            lines: order
                .lines()
                .iter()
                .map(|l| LineView {
                    sku: l.sku.clone(),
                    qty: l.qty,
                    batchref: l.batchref.clone(),
                })
                .collect(),
        }
    }
}

async fn order(
    State(bus): State<MessageBus>,
    Path(orderid): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    match views::order(&orderid, &bus).await {
        Ok(Some(order)) => Ok(Json(OrderView::from(&order))),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no order {orderid}"),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}
