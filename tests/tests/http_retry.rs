//! A6 retries for a plain tonic-generated client: `HttpRetryLayer` over a tonic `Channel`,
//! against a real tonic server on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{Action, Scripted, serve};
use steadfast::retry::{HttpRetry, HttpRetryLayer, RetryPolicy, ServiceConfig};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{CreateUserRequest, GetUserRequest};
use tonic::Code;
use tower::ServiceBuilder;

fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy()
}

/// A plain tonic client over `layer` and a channel to `url`.
fn client(
    layer: HttpRetryLayer,
    url: &str,
) -> UserServiceClient<HttpRetry<tonic::transport::Channel>> {
    UserServiceClient::new(ServiceBuilder::new().layer(layer).service(channel(url)))
}

fn policy() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_plain_tonic_client_retries_unavailable_with_a6_headers() {
    let svc = Scripted::new([
        Action::Fail(Code::Unavailable),
        Action::Fail(Code::Unavailable),
        Action::Ok,
    ]);
    let server = serve(svc.clone()).await;
    let channel = ServiceBuilder::new()
        .layer(HttpRetryLayer::new(policy()))
        .service(channel(&server.url()));
    let mut users = UserServiceClient::new(channel);
    let reply = users.get_user(GetUserRequest { id: 5 }).await.unwrap();
    assert_eq!(reply.into_inner().name, "user-5");
    let previous: Vec<_> = svc
        .seen()
        .into_iter()
        .map(|s| s.previous_attempts)
        .collect();
    assert_eq!(previous, [None, Some("1".into()), Some("2".into())]);
}

#[tokio::test]
async fn non_retryable_codes_and_exhausted_attempts_end_the_call() {
    let svc = Scripted::new([Action::Fail(Code::InvalidArgument)]);
    let server = serve(svc.clone()).await;
    let mut users = client(HttpRetryLayer::new(policy()), &server.url());
    let err = users.get_user(GetUserRequest { id: 5 }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(svc.calls(), 1);

    let svc = Scripted::new([Action::Fail(Code::Unavailable)]);
    let server = serve(svc.clone()).await;
    let mut users = client(HttpRetryLayer::new(policy()), &server.url());
    let err = users.get_user(GetUserRequest { id: 5 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(svc.calls(), 3, "max_attempts");
}

#[tokio::test]
async fn a_body_over_the_buffer_bound_is_sent_once_without_retries() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let mut users = client(HttpRetryLayer::new(policy()).buffer_limit(4), &server.url());
    // The encoded request (5-byte frame header and the message) is larger than 4 bytes.
    let err = users
        .get_user(GetUserRequest { id: 123456 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(svc.calls(), 1);
    // Within the bound it would have been retried.
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let mut users = client(
        HttpRetryLayer::new(policy()).buffer_limit(64),
        &server.url(),
    );
    users.get_user(GetUserRequest { id: 123456 }).await.unwrap();
    assert_eq!(svc.calls(), 2);
}

#[tokio::test]
async fn service_config_chooses_per_method_and_bounds_by_its_timeout() {
    let config = ServiceConfig::from_json(
        r#"{"methodConfig": [{
            "name": [{"service": "user.UserService", "method": "GetUser"}],
            "timeout": "0.4s",
            "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
        }]}"#,
    )
    .unwrap();
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let mut users = client(
        HttpRetryLayer::service_config(config.clone()),
        &server.url(),
    );
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    assert_eq!(svc.calls(), 2, "GetUser has a retry policy");
    let timeouts: Vec<_> = svc.seen().into_iter().map(|s| s.grpc_timeout).collect();
    assert!(
        timeouts
            .iter()
            .all(|t| t.is_some_and(|t| t <= Duration::from_millis(400))),
        "every attempt carries what is left of the 0.4 s: {timeouts:?}"
    );
    assert!(timeouts[1] < timeouts[0], "{timeouts:?}");

    // CreateUser has no entry: one attempt.
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let mut users = client(HttpRetryLayer::service_config(config), &server.url());
    let err = users
        .create_user(CreateUserRequest { name: "ada".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(svc.calls(), 1);
}

#[tokio::test]
async fn a_server_that_is_not_there_ends_the_call_with_unavailable_not_a_hang() {
    // Nothing listens: every attempt is refused (sent again at once, then counted).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut users = client(HttpRetryLayer::new(policy()), &url);
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
