//! Metrics are a handle, not a process-wide singleton on the call path: a client counts its
//! calls into the set it was given.

mod common;

use common::{Action, Scripted};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::metrics::Metrics;
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tonic::Status;

#[steadfast::resilient_client(service = "metrics-isolated", client = UserServiceClient,
    grpc_service = "user.UserService", retry(max_attempts = 2, initial_backoff = "1ms"))]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

#[tokio::test]
async fn a_client_counts_into_the_metrics_it_was_given() {
    let script = Scripted::new([Action::Fail(tonic::Code::Unavailable), Action::Ok]);
    let server = common::serve(script).await;
    let mine = Metrics::new();
    let users = UsersClient::connect(
        ClientConfig::endpoints([server.url()])
            .unwrap()
            .downstreams(Downstreams::with_metrics(&mine))
            .metrics(mine.clone()),
    )
    .await
    .unwrap();
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    let text = mine.render();
    let series = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_owned()
    };
    let calls = series(
        r#"rpc_client_duration_seconds_count{rpc_service="user.UserService",rpc_method="GetUser",rpc_grpc_status_code="0"}"#,
    );
    assert!(calls.ends_with("} 1"), "{calls}");
    assert!(
        text.lines().any(|l| l.starts_with("rpc_client_duration_seconds_bucket{")
            && l.contains(r#"rpc_service="user.UserService",rpc_method="GetUser",rpc_grpc_status_code="0""#)
            && l.contains(" # {trace_id=\"")),
        "a bucket carries the call's trace id: {text}"
    );
    let retries = series(
        r#"steadfast_client_retries_total{rpc_service="user.UserService",rpc_method="GetUser"}"#,
    );
    assert!(retries.contains("} 1 # "), "{retries}");
    series(r#"steadfast_breaker_state{service="metrics-isolated"} 0"#);
    assert!(
        !Metrics::global().render().contains("metrics-isolated")
            && !Metrics::global()
                .render()
                .contains(r#"rpc_service="user.UserService",rpc_method="GetUser""#),
        "nothing went to the process-wide set"
    );
}
