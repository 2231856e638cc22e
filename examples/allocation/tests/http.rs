//! The HTTP entrypoint, in process, on the in-memory database: APwP's API
//! tests, and bad input answered with a 4xx and a JSON reason.
#![allow(missing_docs)]

use allocation::adapters::notifications::{FakeNotifier, Notifications};
use allocation::entrypoints::http::{MAX_BODY_BYTES, router};
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use eda_core::{InMemoryDatabase, MessageBus};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app() -> axum::Router {
    let bus = MessageBus::builder()
        .scope("allocation")
        .adapter(InMemoryDatabase::new())
        .adapter(Notifications::new(FakeNotifier::default()))
        .build()
        .expect("wiring");
    router(bus)
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap()),
        if status == StatusCode::CREATED && uri == "/batches" {
            None
        } else {
            Some("application/json")
        },
        "{method} {uri} answers JSON"
    );
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json)
}

async fn add_batch(app: &axum::Router, reference: &str, sku: &str, qty: i64, eta: Option<&str>) {
    let body = json!({"ref": reference, "sku": sku, "qty": qty, "eta": eta}).to_string();
    let (status, _) = call(app, "POST", "/batches", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn happy_path_returns_201_and_the_earliest_batch_then_the_allocation_is_readable() {
    let app = app();
    add_batch(&app, "later", "LAMP", 100, Some("2026-12-31")).await;
    add_batch(&app, "earlier", "LAMP", 100, Some("2026-12-01")).await;
    add_batch(&app, "other", "CHAIR", 100, None).await;
    let (status, body) = call(
        &app,
        "POST",
        "/allocate",
        Some(r#"{"orderid":"o1","sku":"LAMP","qty":3}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({"batchref": "earlier"}));
    let (status, body) = call(&app, "GET", "/allocations/o1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([{"sku": "LAMP", "batchref": "earlier"}]));
}

#[tokio::test]
async fn unhappy_path_returns_400_with_the_message_and_the_order_is_not_found() {
    let app = app();
    let (status, body) = call(
        &app,
        "POST",
        "/allocate",
        Some(r#"{"orderid":"o2","sku":"NOPE","qty":3}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"message": "Invalid sku NOPE"}));
    let (status, body) = call(&app, "GET", "/allocations/o2", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].as_str().unwrap().contains("o2"));
}

#[tokio::test]
async fn out_of_stock_is_a_409_with_a_message() {
    let app = app();
    add_batch(&app, "b1", "LAMP", 2, None).await;
    let (status, body) = call(
        &app,
        "POST",
        "/allocate",
        Some(r#"{"orderid":"o1","sku":"LAMP","qty":3}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body, json!({"message": "Out of stock for sku LAMP"}));
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_json_reason_never_a_500() {
    let app = app();
    add_batch(&app, "b1", "LAMP", 10, None).await;
    let cases: &[(&str, &str, &str, StatusCode, &str)] = &[
        (
            "/allocate",
            "{not json",
            "application/json",
            StatusCode::BAD_REQUEST,
            "request body as JSON",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","qty":3}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `sku`",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","sku":"LAMP","qty":"three"}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","sku":"LAMP","qty":0}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "qty must be a positive integer, not 0",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","sku":"LAMP","qty":-5}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "qty must be a positive integer, not -5",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","sku":"LAMP","qty":99999999999}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "positive integer",
        ),
        (
            "/allocate",
            r#"{"orderid":"","sku":"LAMP","qty":1}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "orderid must not be empty",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","sku":"LAMP","qty":1,"extra":1}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            "/allocate",
            r#"{"orderid":"o1","sku":"LAMP","qty":1}"#,
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "/batches",
            r#"{"ref":"b2","sku":"LAMP","qty":5,"eta":"tomorrow"}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "eta",
        ),
        (
            "/batches",
            r#"[1,2,3]"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
    ];
    for (uri, body, content_type, expected, reason) in cases {
        let request = Request::builder()
            .method("POST")
            .uri(*uri)
            .header(header::CONTENT_TYPE, *content_type)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{body}: not JSON: {bytes:?}"));
        assert_eq!(status, *expected, "{uri} {body}: {json}");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{uri} {body}: {message:?} lacks {reason:?}"
        );
    }
    // Nothing was allocated by all that.
    let (status, _) = call(&app, "GET", "/allocations/o1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let app = app();
    let big = format!(
        r#"{{"orderid":"{}","sku":"LAMP","qty":1}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let request = Request::builder()
        .method("POST")
        .uri("/allocate")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let json: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        json["message"].as_str().unwrap().contains("larger than"),
        "{json}"
    );
}

#[tokio::test]
async fn an_unknown_route_is_a_404_in_json() {
    let app = app();
    let (status, body) = call(&app, "GET", "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"message": "no such route"}));
}
