//! The server-side deadline layer, driven directly as a tower service under paused time.

use std::convert::Infallible;
use std::time::Duration;

use steadfast::Context;
use steadfast::deadline::DeadlineLayer;
use tower::{Layer, Service, ServiceExt};

type Resp = http::Response<tonic::body::Body>;

fn request(timeout: Option<&str>) -> http::Request<()> {
    let mut req = http::Request::builder().uri("/user.UserService/GetUser");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    req.body(()).unwrap()
}

fn grpc_status(resp: &Resp) -> Option<&str> {
    resp.headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn hung_handler_gets_deadline_exceeded_at_the_deadline() {
    let hang = tower::service_fn(|_req: http::Request<()>| async {
        std::future::pending::<Result<Resp, Infallible>>().await
    });
    let mut svc = DeadlineLayer::new().layer(hang);
    let started = tokio::time::Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some("150m")))
        .await
        .unwrap();
    assert_eq!(
        grpc_status(&resp),
        Some("4"),
        "DEADLINE_EXCEEDED, trailers-only"
    );
    assert!(
        resp.headers()
            .contains_key(steadfast::deadline::DEADLINE_EXPIRED_KEY),
        "marked, so the caller knows its own timeout expired"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(150));
}

#[tokio::test(start_paused = true)]
async fn handler_sees_the_deadline_in_context_and_extensions() {
    let svc = tower::service_fn(|req: http::Request<()>| async move {
        let from_ext = req
            .extensions()
            .get::<Context>()
            .and_then(Context::remaining);
        let current = Context::current().remaining();
        assert_eq!(from_ext, Some(Duration::from_secs(2)));
        assert_eq!(current, Some(Duration::from_secs(2)));
        Ok::<Resp, Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let resp = DeadlineLayer::new()
        .layer(svc)
        .oneshot(request(Some("2S")))
        .await
        .unwrap();
    assert_eq!(grpc_status(&resp), None);
}

#[tokio::test(start_paused = true)]
async fn no_or_malformed_header_means_no_deadline() {
    for header in [None, Some("soon"), Some("123456789S")] {
        let svc = tower::service_fn(|_req: http::Request<()>| async move {
            assert_eq!(Context::current().deadline(), None);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<Resp, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let resp = DeadlineLayer::new()
            .layer(svc)
            .oneshot(request(header))
            .await
            .unwrap();
        assert_eq!(
            grpc_status(&resp),
            None,
            "{header:?}: the handler ran to completion"
        );
    }
}
