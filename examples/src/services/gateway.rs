//! gateway: the HTTP API in front of order-svc.
//!
//! - `POST /orders` with `{"user_id": 1, "item": "book", "quantity": 1}` creates an order.
//! - `GET /orders/{id}` returns one.
//! - Bad JSON, a bad field or an unknown user is a 4xx with a JSON error, never a 500.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tonic::{Code, Status};

use crate::pb::order::order_service_client::OrderServiceClient;
use crate::pb::order::{CreateOrderRequest, GetOrderRequest, Order};

/// order-svc as the gateway sees it.
#[steadfast::resilient_client(
    service = "order-svc",
    client = OrderServiceClient,
    grpc_service = "order.OrderService",
    timeout = "3s",
    retry(max_attempts = 3, initial_backoff = "20ms", max_backoff = "200ms", on = [Unavailable]),
)]
pub trait Orders {
    /// Creates an order.
    #[no_retry]
    async fn create_order(&self, req: CreateOrderRequest) -> Result<Order, Status>;
    /// Reads an order.
    async fn get_order(&self, req: GetOrderRequest) -> Result<Order, Status>;
}

#[derive(Deserialize)]
struct NewOrder {
    user_id: u64,
    item: String,
    quantity: u32,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// gRPC failures as HTTP: the caller's mistakes are 4xx, the system's are 5xx.
fn from_status(s: &Status) -> Response {
    let code = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists => StatusCode::UNPROCESSABLE_ENTITY,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(code, s.message())
}

fn order_json(o: &Order) -> serde_json::Value {
    json!({"id": o.id, "user_id": o.user_id, "user_name": o.user_name, "item": o.item, "quantity": o.quantity})
}

#[steadfast::traced(service = "gateway", skip(orders, body))]
async fn create_order(orders: State<OrdersClient>, body: Bytes) -> Response {
    let new: NewOrder = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid order JSON: {e}")),
    };
    tracing::info!(user_id = new.user_id, item = %new.item, "placing order");
    let req = CreateOrderRequest {
        user_id: new.user_id,
        item: new.item,
        quantity: new.quantity,
    };
    match orders.create_order(req).await {
        Ok(o) => (StatusCode::CREATED, axum::Json(order_json(&o))).into_response(),
        Err(s) => from_status(&s),
    }
}

#[steadfast::traced(service = "gateway", skip(orders))]
async fn get_order(orders: State<OrdersClient>, id: Path<String>) -> Response {
    let Ok(id) = id.0.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not an order id", id.0),
        );
    };
    match orders.get_order(GetOrderRequest { id }).await {
        Ok(o) => axum::Json(order_json(&o)).into_response(),
        Err(s) => from_status(&s),
    }
}

/// The gateway's routes, with trace propagation.
pub fn router(orders: OrdersClient) -> axum::Router {
    axum::Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .with_state(orders)
        .layer(steadfast::trace::TraceLayer::new())
}
