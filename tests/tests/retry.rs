//! `#[resilient_client]` against a real tonic server on 127.0.0.1 with scripted answers.

mod common;

use std::time::Duration;

use common::{Action, Scripted, serve};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tokio::time::Instant;
use tonic::{Code, Status};

#[steadfast::resilient_client(
    service = "user-svc",
    client = UserServiceClient,
    timeout = "2s",
    retry(max_attempts = 3, initial_backoff = "20ms", max_backoff = "100ms", multiplier = 2.0,
          on = [Unavailable, ResourceExhausted]),
    // These tests watch retries alone: a breaker that never trips keeps it out of the way.
    breaker(min_failures = 10000),
)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;

    #[no_retry]
    async fn create_user(&self, req: CreateUserRequest) -> Result<CreateUserReply, Status>;
}

#[steadfast::resilient_client(
    service = "slow-user-svc",
    client = UserServiceClient,
    timeout = "700ms",
    retry(max_attempts = 5, initial_backoff = "10ms", per_attempt_timeout = "200ms"),
)]
trait SlowUsers {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// The same service with methods that take `tonic::Request<M>`, so metadata reaches it.
#[steadfast::resilient_client(
    service = "user-svc-with-metadata",
    client = UserServiceClient,
    timeout = "2s",
    retry(max_attempts = 3, initial_backoff = "20ms", max_backoff = "100ms"),
)]
trait UsersWithMetadata {
    async fn get_user(&self, req: tonic::Request<GetUserRequest>) -> Result<GetUserReply, Status>;
}

fn config(url: &str) -> ClientConfig {
    // An isolated throttle per test, so tests do not drain each other's bucket.
    ClientConfig::endpoints([url])
        .unwrap()
        .downstreams(Downstreams::new())
}

fn get(id: u64) -> GetUserRequest {
    GetUserRequest { id }
}

#[tokio::test]
async fn two_unavailable_then_success_takes_exactly_three_attempts() {
    let svc = Scripted::new([
        Action::Fail(Code::Unavailable),
        Action::Fail(Code::Unavailable),
        Action::Ok,
    ]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    let reply = users.get_user(get(42)).await.unwrap();
    assert_eq!(reply.name, "user-42");
    assert_eq!(svc.calls(), 3);
    let previous: Vec<_> = svc
        .seen()
        .into_iter()
        .map(|s| s.previous_attempts)
        .collect();
    assert_eq!(previous, [None, Some("1".into()), Some("2".into())]);
    // Every attempt carries the call's trace, each with a span id of its own.
    let parents: Vec<_> = svc
        .seen()
        .into_iter()
        .map(|s| {
            let tp = s.traceparent.expect("traceparent on every attempt");
            steadfast::trace::Traceparent::parse(tp.as_bytes()).unwrap()
        })
        .collect();
    assert!(
        parents.iter().all(|p| p.trace_id == parents[0].trace_id),
        "{parents:?}"
    );
    let mut ids: Vec<_> = parents.iter().map(|p| p.parent_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one span per attempt: {parents:?}");
}

#[tokio::test]
async fn invalid_argument_is_not_retried() {
    let svc = Scripted::new([Action::Fail(Code::InvalidArgument)]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    let err = users.get_user(get(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(svc.calls(), 1);
}

#[tokio::test]
async fn no_retry_method_makes_one_attempt() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable)]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    let err = users
        .create_user(CreateUserRequest { name: "a".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(svc.calls(), 1);
}

#[tokio::test]
async fn every_attempt_carries_a_deadline_within_the_overall_timeout() {
    let svc = Scripted::new([Action::Fail(Code::ResourceExhausted), Action::Ok]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    users.get_user(get(1)).await.unwrap();
    let seen = svc.seen();
    assert_eq!(seen.len(), 2);
    let first = seen[0].grpc_timeout.expect("grpc-timeout sent");
    let second = seen[1].grpc_timeout.expect("grpc-timeout sent");
    assert!(first <= Duration::from_secs(2));
    assert!(
        second < first,
        "the retry gets what is left: {second:?} < {first:?}"
    );
}

#[tokio::test]
async fn slow_server_attempts_time_out_and_are_retried() {
    // Two slow answers, then a fast one: the third attempt succeeds.
    let slow = Action::Sleep(Duration::from_secs(5));
    let svc = Scripted::new([slow.clone(), slow, Action::Ok]);
    let server = serve(svc.clone()).await;
    let users = SlowUsersClient::connect(config(&server.url()))
        .await
        .unwrap();
    let started = Instant::now();
    users.get_user(get(3)).await.unwrap();
    assert_eq!(svc.calls(), 3);
    assert!(started.elapsed() < Duration::from_millis(700));
    for seen in svc.seen() {
        assert!(seen.grpc_timeout.unwrap() <= Duration::from_millis(200));
    }
}

#[tokio::test]
async fn always_slow_server_ends_in_deadline_exceeded_within_the_deadline() {
    let svc = Scripted::new([Action::Sleep(Duration::from_secs(5))]);
    let server = serve(svc.clone()).await;
    let users = SlowUsersClient::connect(config(&server.url()))
        .await
        .unwrap();
    let started = Instant::now();
    let err = users.get_user(get(3)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // 200 + 10 + 200 + 20 + 200 = 630 ms, then 70 ms for a fourth attempt.
    assert_eq!(svc.calls(), 4);
    // The deadline is 700 ms; a little slack for scheduling on a loaded machine.
    assert!(
        elapsed < Duration::from_millis(700 + 150),
        "took {elapsed:?}"
    );
    let last = svc.seen().last().unwrap().grpc_timeout.unwrap();
    assert!(
        last <= Duration::from_millis(70),
        "last attempt got {last:?}"
    );
}

#[tokio::test]
async fn pushback_delay_is_honoured() {
    let svc = Scripted::new([Action::Pushback(Code::Unavailable, "500"), Action::Ok]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    users.get_user(get(1)).await.unwrap();
    let seen = svc.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    // The backoff alone would be 16..24 ms; the server asked for 500 ms.
    assert!(gap >= Duration::from_millis(500), "retried after {gap:?}");
    assert!(gap < Duration::from_millis(900), "retried after {gap:?}");
}

#[tokio::test]
async fn negative_pushback_stops_retries() {
    let svc = Scripted::new([Action::Pushback(Code::Unavailable, "-1"), Action::Ok]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    let err = users.get_user(get(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(svc.calls(), 1);
}

#[tokio::test]
async fn throttling_brings_attempts_per_call_toward_one_in_an_outage() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable)]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url())).await.unwrap();
    let calls = 60;
    let mut per_call = Vec::new();
    for _ in 0..calls {
        let before = svc.calls();
        users.get_user(get(1)).await.unwrap_err();
        per_call.push(svc.calls() - before);
    }
    // The bucket (10 tokens) drains to half within the first two calls ...
    assert_eq!(&per_call[..2], [3, 2]);
    // ... after which every call makes exactly one attempt.
    assert!(per_call[2..].iter().all(|n| *n == 1), "{per_call:?}");
    let ratio = svc.calls() as f64 / calls as f64;
    assert!(ratio < 1.1, "attempts/calls = {ratio}");
}

#[tokio::test]
async fn clients_of_one_service_share_a_throttle() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable)]);
    let server = serve(svc.clone()).await;
    let shared = Downstreams::new();
    let cfg = || {
        ClientConfig::endpoints([server.url()])
            .unwrap()
            .downstreams(shared.clone())
    };
    let a = UsersClient::connect(cfg()).await.unwrap();
    let b = UsersClient::connect(cfg()).await.unwrap();
    a.get_user(get(1)).await.unwrap_err(); // 3 attempts, 10 -> 7 tokens
    a.get_user(get(1)).await.unwrap_err(); // 2 attempts, 7 -> 5: throttled
    let before = svc.calls();
    b.get_user(get(1)).await.unwrap_err();
    assert_eq!(
        svc.calls() - before,
        1,
        "the second client sees the drained bucket"
    );
}

#[tokio::test]
async fn service_config_json_overrides_the_attribute_at_run_time() {
    let svc = Scripted::new([Action::Fail(Code::Internal)]);
    let server = serve(svc.clone()).await;
    let json = r#"{
      "methodConfig": [{
        "name": [{"service": "user-svc", "method": "GetUser"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 1.5, "retryableStatusCodes": ["INTERNAL"]}
      }],
      "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.5}
    }"#;
    let sc = steadfast::retry::ServiceConfig::from_json(json).unwrap();
    let users = UsersClient::connect(config(&server.url()).service_config(sc))
        .await
        .unwrap();
    let err = users.get_user(get(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        svc.calls(),
        4,
        "INTERNAL is retryable and maxAttempts is 4 per the JSON"
    );
    // A `no_retry` method stays single-attempt whatever the config says.
    let before = svc.calls();
    users
        .create_user(CreateUserRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(svc.calls() - before, 1);
}

#[tokio::test]
async fn request_metadata_reaches_the_server_on_every_attempt() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let users = UsersWithMetadataClient::connect(config(&server.url()))
        .await
        .unwrap();
    let mut req = tonic::Request::new(get(7));
    req.metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let reply = users.get_user(req).await.unwrap();
    assert_eq!(reply.name, "user-7");
    let seen = svc.seen();
    assert_eq!(seen.len(), 2, "one retry");
    for s in &seen {
        assert_eq!(s.tenant.as_deref(), Some("acme"), "{s:?}");
        assert!(s.traceparent.is_some(), "steadfast's headers are added too");
    }
    assert_eq!(seen[1].previous_attempts.as_deref(), Some("1"));
}
