//! `/health`, `/health/ready` and `/health/live` over axum.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::Health;
use crate::time::rfc3339_millis;

pub(super) fn report(h: &Health) -> Value {
    let serving = h.is_serving();
    let checks: serde_json::Map<String, Value> = h
        .states()
        .into_iter()
        .map(|(name, s)| {
            let status = match (&s.checked_at, s.healthy, &s.error) {
                (None, _, _) => "pending",
                (_, true, None) => "ok",
                // Failing now, still within the hysteresis: reported, not yet unhealthy.
                (_, true, Some(_)) => "degraded",
                (_, false, _) => "failing",
            };
            let (checked_at, age_ms) = match s.checked_at {
                Some((wall, mono)) => (
                    Value::from(rfc3339_millis(wall)),
                    Value::from(mono.elapsed().as_millis() as u64),
                ),
                None => (Value::Null, Value::Null),
            };
            (
                name,
                json!({
                    "status": status,
                    "critical": s.critical,
                    "latency_ms": s.latency.map(|l| l.as_millis() as u64),
                    "checked_at": checked_at,
                    "age_ms": age_ms,
                    "error": s.error,
                }),
            )
        })
        .collect();
    json!({
        "status": if serving { "SERVING" } else { "NOT_SERVING" },
        "timestamp": rfc3339_millis(std::time::SystemTime::now()),
        "checks": checks,
    })
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn router(h: Health) -> axum::Router {
    let ready = move || {
        let h = h.clone();
        async move {
            let code = if h.is_serving() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(code, report(&h))
        }
    };
    axum::Router::new()
        .route("/health", get(ready.clone()))
        .route("/health/ready", get(ready))
        .route(
            "/health/live",
            get(|| async { json_response(StatusCode::OK, json!({"status": "SERVING"})) }),
        )
}
