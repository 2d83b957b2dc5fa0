//! The breaker and deadline layers on a plain tonic `Channel`, under a plain
//! tonic-generated client, against a real tonic server on 127.0.0.1: the stack a user
//! builds without the macro, `ServiceBuilder` over a `Channel`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Action, Scripted, serve};
use steadfast::breaker::{
    BreakerConfig, BreakerState, CircuitBreaker, HttpBreakerLayer, is_open_rejection,
};
use steadfast::deadline::HttpDeadlineLayer;
use steadfast::retry::{HttpRetryLayer, RetryPolicy};
use steadfast_examples::pb::user::GetUserRequest;
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use tonic::Code;
use tower::ServiceBuilder;

fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy()
}

fn retry() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_breaker_trips_on_trailers_only_failures_and_retry_never_retries_its_rejection() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable)]);
    let server = serve(svc.clone()).await;
    let breaker = Arc::new(CircuitBreaker::new(
        "plain-user-svc",
        BreakerConfig::builder()
            .min_failures(4)
            .open_timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    ));
    let stack = ServiceBuilder::new()
        .layer(HttpRetryLayer::new(retry()))
        .layer(HttpBreakerLayer::new(breaker.clone()))
        .service(channel(&server.url()));
    let mut users = UserServiceClient::new(stack);

    // Three attempts fail; the fourth failure (first attempt of the second call) trips it,
    // and its second attempt is refused without reaching the server, and not retried.
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(!is_open_rejection(&err));
    assert_eq!(svc.calls(), 3);
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert_eq!(breaker.state(), BreakerState::Open);
    assert!(is_open_rejection(&err), "{err:?}");
    assert_eq!(svc.calls(), 4);
    // Open: fail fast, nothing sent.
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert!(is_open_rejection(&err));
    assert_eq!(svc.calls(), 4);
}

#[tokio::test]
async fn outcomes_in_trailers_count_and_probes_close_the_breaker() {
    let svc = Scripted::new([Action::Ok]);
    let server = serve(svc.clone()).await;
    let open_for = Duration::from_secs(1);
    let breaker = Arc::new(CircuitBreaker::new(
        "plain-user-svc-2",
        BreakerConfig::builder()
            .min_failures(2)
            .failure_ratio(0.5)
            .open_timeout(open_for)
            .half_open_successes(2)
            .build()
            .unwrap(),
    ));
    let mut users = UserServiceClient::new(
        ServiceBuilder::new()
            .layer(HttpBreakerLayer::new(breaker.clone()))
            .service(channel(&server.url())),
    );
    // Successes arrive in trailers (a normal response): each is recorded once the body
    // ends, which the client reads before returning.
    for id in 1..=5 {
        users.get_user(GetUserRequest { id }).await.unwrap();
    }
    let counts = breaker.counts();
    assert_eq!((counts.requests, counts.failures), (5, 0), "{counts:?}");

    // A NotFound answer is the caller's problem, not a failure of the service.
    svc.script([Action::Fail(Code::NotFound)]);
    users.get_user(GetUserRequest { id: 9 }).await.unwrap_err();
    assert_eq!(breaker.counts().failures, 0);

    // Internal errors trip it (6 successes, so 7 failures make the ratio pass 0.5).
    svc.script([Action::Fail(Code::Internal)]);
    while breaker.state() == BreakerState::Closed {
        users.get_user(GetUserRequest { id: 2 }).await.unwrap_err();
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let sent = svc.calls();
    assert!(is_open_rejection(
        &users.get_user(GetUserRequest { id: 2 }).await.unwrap_err()
    ));
    assert_eq!(svc.calls(), sent);

    // Half-open after open_timeout; two successful probes (outcomes in trailers) close it.
    svc.script([Action::Ok]);
    tokio::time::sleep(open_for).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    users.get_user(GetUserRequest { id: 3 }).await.unwrap();
    users.get_user(GetUserRequest { id: 3 }).await.unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test]
async fn the_deadline_layer_bounds_calls_by_its_timeout_and_the_callers_deadline() {
    let svc = Scripted::new([Action::Sleep(Duration::from_secs(5))]);
    let server = serve(svc.clone()).await;
    let mut users = UserServiceClient::new(
        ServiceBuilder::new()
            .layer(HttpDeadlineLayer::new(Some(Duration::from_millis(300))))
            .service(channel(&server.url())),
    );
    // Its own timeout: sent as grpc-timeout, and the call ends with DEADLINE_EXCEEDED.
    let started = tokio::time::Instant::now();
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let sent = svc.seen()[0].grpc_timeout.expect("grpc-timeout sent");
    assert!(
        sent <= Duration::from_millis(300) && sent > Duration::from_millis(200),
        "{sent:?}"
    );

    // Inside a handler whose caller left 100 ms: the shorter deadline is sent.
    let err = steadfast::Context::new()
        .with_timeout(Duration::from_millis(100))
        .scope(users.get_user(GetUserRequest { id: 2 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let sent = svc.seen()[1].grpc_timeout.unwrap();
    assert!(sent <= Duration::from_millis(100), "{sent:?}");

    // A deadline already passed: answered at once, nothing sent.
    let err = steadfast::Context::new()
        .with_timeout(Duration::ZERO)
        .scope(users.get_user(GetUserRequest { id: 3 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(svc.calls(), 2);
}

#[tokio::test]
async fn a_proxy_error_page_counts_as_unavailable_for_the_breaker() {
    // A load balancer in front of a dead service: 502 with an HTML page, no gRPC status.
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            "<html><body>502 Bad Gateway</body></html>",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Served over HTTP/2, as gRPC clients speak it.
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(app))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let breaker = Arc::new(CircuitBreaker::new(
        "behind-a-proxy",
        BreakerConfig::builder().min_failures(3).build().unwrap(),
    ));
    let channel = channel(&url);
    let mut users = UserServiceClient::new(
        ServiceBuilder::new()
            .layer(HttpBreakerLayer::new(breaker.clone()))
            .service(channel),
    );
    for _ in 0..3 {
        let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
        assert!(!is_open_rejection(&err), "{err:?}");
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "{:?}",
        breaker.counts()
    );
}
