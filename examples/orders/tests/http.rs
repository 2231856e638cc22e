//! The HTTP entrypoint, in process, on the in-memory database: placing and
//! reading orders, and bad input answered with a 4xx and a JSON reason.
#![allow(missing_docs)]

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use contracts::{Allocated, AllocationFailed, FailureReason};
use eda_core::{Envelope, InMemoryDatabase, MessageBus};
use orders::entrypoints::http::{MAX_BODY_BYTES, router};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app() -> (axum::Router, MessageBus) {
    let bus = MessageBus::builder()
        .scope("orders")
        .adapter(orders::service_layer::OrderTimeout::default())
        .adapter(InMemoryDatabase::new())
        .build()
        .expect("wiring");
    (router(bus.clone()), bus)
}

/// Sends a request (a JSON body, if any, with its content type) and
/// returns the status and the JSON answer, checking that it is JSON.
async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    call_as(app, method, uri, body.map(|b| (b, "application/json"))).await
}

async fn call_as(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some((_, content_type)) = body {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let request = request
        .body(body.map_or_else(Body::empty, |(b, _)| Body::from(b.to_owned())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{method} {uri} answers JSON"
    );
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {bytes:?}"));
    (status, json)
}

async fn place(app: &axum::Router, body: &str) -> (StatusCode, Value) {
    call(app, "POST", "/orders", Some(body)).await
}

const ORDER: &str =
    r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 2}, {"sku": "CHAIR", "qty": 1}]}"#;

#[tokio::test]
async fn placing_an_order_is_a_201_and_the_order_reads_pending() {
    let (app, _) = app();
    let (status, body) = place(&app, ORDER).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({"orderid": "o1", "status": "pending"}));

    let (status, body) = call(&app, "GET", "/orders/o1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "orderid": "o1",
            "status": "pending",
            "reason": null,
            "lines": [
                {"sku": "LAMP", "qty": 2, "batchref": null},
                {"sku": "CHAIR", "qty": 1, "batchref": null},
            ],
        })
    );
}

#[tokio::test]
async fn the_order_reads_confirmed_once_allocated_and_cancelled_with_its_reason() {
    let (app, bus) = app();
    place(&app, ORDER).await;
    place(
        &app,
        r#"{"orderid": "o2", "lines": [{"sku": "SOFA", "qty": 1}]}"#,
    )
    .await;
    for (sku, batchref) in [("LAMP", "b1"), ("CHAIR", "b2")] {
        let allocated = Allocated {
            orderid: "o1".into(),
            sku: sku.into(),
            qty: 1,
            batchref: batchref.into(),
        };
        assert!(bus.publish(Envelope::new(allocated)).await.is_ok());
    }
    let failed = AllocationFailed {
        orderid: "o2".into(),
        sku: "SOFA".into(),
        qty: 1,
        reason: FailureReason::UnknownSku,
    };
    assert!(bus.publish(Envelope::new(failed)).await.is_ok());

    let (status, body) = call(&app, "GET", "/orders/o1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["lines"][0]["batchref"], "b1");
    assert_eq!(body["lines"][1]["batchref"], "b2");

    let (_, body) = call(&app, "GET", "/orders/o2", None).await;
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["reason"], "unknown sku: SOFA");
}

#[tokio::test]
async fn an_orderid_placed_before_is_a_409() {
    let (app, _) = app();
    place(&app, ORDER).await;
    let (status, body) = place(&app, ORDER).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body, json!({"message": "order o1 was placed already"}));
}

#[tokio::test]
async fn an_unknown_order_is_a_404() {
    let (app, _) = app();
    let (status, body) = call(&app, "GET", "/orders/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"message": "no order nope"}));
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_json_reason_never_a_500() {
    let (app, _) = app();
    let lines = |n: usize| {
        let lines: Vec<_> = (0..n)
            .map(|i| json!({"sku": format!("SKU-{i}"), "qty": 1}))
            .collect();
        json!({"orderid": "o1", "lines": lines}).to_string()
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let json = "application/json";
    let cases: Vec<(String, &str, StatusCode, &str)> =
        vec![
        ("{not json".into(), json, StatusCode::BAD_REQUEST, "request body as JSON"),
        (ORDER.into(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type"),
        (r#"{"orderid": "o1"}"#.into(), json, unprocessable, "missing field `lines`"),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 1}], "extra": 1}"#.into(),
            json,
            unprocessable,
            "unknown field",
        ),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": "two"}]}"#.into(),
            json,
            unprocessable,
            "invalid type",
        ),
        (
            r#"{"orderid": "", "lines": [{"sku": "LAMP", "qty": 1}]}"#.into(),
            json,
            unprocessable,
            "orderid must not be empty",
        ),
        (
            r#"{"orderid": "o1", "lines": [{"sku": " ", "qty": 1}]}"#.into(),
            json,
            unprocessable,
            "sku must not be empty",
        ),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 0}]}"#.into(),
            json,
            unprocessable,
            "qty of LAMP must be a positive integer, not 0",
        ),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": -5}]}"#.into(),
            json,
            unprocessable,
            "qty of LAMP must be a positive integer, not -5",
        ),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 4294967296}]}"#.into(),
            json,
            unprocessable,
            "positive integer, not 4294967296",
        ),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 1.5}]}"#.into(),
            json,
            unprocessable,
            "invalid type",
        ),
        (lines(0), json, unprocessable, "1 to 100 lines, not 0"),
        (lines(101), json, unprocessable, "1 to 100 lines, not 101"),
        (
            r#"{"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 1}, {"sku": "LAMP", "qty": 2}]}"#
                .into(),
            json,
            unprocessable,
            "sku LAMP is in the order twice",
        ),
    ];
    for (body, content_type, expected, reason) in &cases {
        let (status, answer) = call_as(&app, "POST", "/orders", Some((body, content_type))).await;
        assert_eq!(status, *expected, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{body}: {message:?} lacks {reason:?}"
        );
    }
    // Nothing was placed by all that; the most lines an order may have is
    // fine.
    let (status, _) = call(&app, "GET", "/orders/o1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = place(&app, &lines(100)).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let (app, _) = app();
    let big = format!(
        r#"{{"orderid": "{}", "lines": [{{"sku": "LAMP", "qty": 1}}]}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let (status, body) = place(&app, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["message"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unknown_route_is_a_404_in_json() {
    let (app, _) = app();
    let (status, body) = call(&app, "GET", "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"message": "no such route"}));
}
