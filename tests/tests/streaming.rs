//! Server-streaming calls through a resilient client, against a real tonic server on
//! 127.0.0.1: retried until committed (the response headers), never after; recorded by the
//! breaker when the stream ends.

mod common;

use common::{Action, Scripted, drain, serve};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{GetUserReply, ListUsersRequest};
use tonic::{Code, Status};

#[steadfast::resilient_client(
    service = "streams",
    client = UserServiceClient,
    timeout = "5s",
    retry(max_attempts = 3, initial_backoff = "5ms", max_backoff = "20ms"),
    breaker(min_failures = 3, failure_ratio = 0.5),
)]
trait Streams {
    async fn list_users(
        &self,
        req: ListUsersRequest,
    ) -> Result<tonic::Streaming<GetUserReply>, Status>;
}

fn request() -> ListUsersRequest {
    ListUsersRequest {
        from_id: 1,
        count: 3,
        interval_ms: 1,
    }
}

async fn client(url: String) -> StreamsClient {
    StreamsClient::connect(
        ClientConfig::endpoints([url])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn unavailable_before_the_first_message_is_retried() {
    let scripted = Scripted::new([
        Action::Fail(Code::Unavailable),
        Action::Fail(Code::Unavailable),
        Action::Ok,
    ]);
    let server = serve(scripted.clone()).await;
    let streams = client(server.url()).await;
    let stream = streams.list_users(request()).await.unwrap();
    let (ids, status) = drain(stream).await;
    assert_eq!(ids, [1, 2, 3]);
    assert!(status.is_none(), "{status:?}");
    assert_eq!(scripted.calls(), 3, "two retries, then the stream");
    let retried: Vec<Option<String>> = scripted
        .seen()
        .iter()
        .map(|s| s.previous_attempts.clone())
        .collect();
    assert_eq!(retried, [None, Some("1".into()), Some("2".into())]);
}

#[tokio::test]
async fn unavailable_after_the_stream_started_is_not_retried_and_reaches_the_caller() {
    let scripted = Scripted::new([Action::FailStream(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let streams = client(server.url()).await;
    let stream = streams.list_users(request()).await.unwrap();
    let (ids, status) = drain(stream).await;
    assert_eq!(ids, [1], "the message before the failure arrives");
    assert_eq!(status.map(|s| s.code()), Some(Code::Unavailable));
    assert_eq!(scripted.calls(), 1, "committed: never sent again");
}

#[tokio::test]
async fn streams_that_fail_after_starting_open_the_breaker() {
    let scripted = Scripted::new([Action::FailStream(Code::Unavailable)]);
    let server = serve(scripted.clone()).await;
    let streams = client(server.url()).await;
    // Each stream starts well (headers, one message) and then fails: recorded at its end.
    for _ in 0..3 {
        let stream = streams.list_users(request()).await.unwrap();
        let (_, status) = drain(stream).await;
        assert_eq!(status.map(|s| s.code()), Some(Code::Unavailable));
    }
    let calls = scripted.calls();
    let rejected = streams.list_users(request()).await.unwrap_err();
    assert_eq!(rejected.code(), Code::Unavailable);
    assert!(
        rejected.metadata().get("steadfast-breaker-open").is_some(),
        "{rejected:?}"
    );
    assert_eq!(
        scripted.calls(),
        calls,
        "rejected without reaching the server"
    );
}

#[tokio::test]
async fn a_stream_that_goes_quiet_for_its_idle_timeout_ends_with_unavailable() {
    let scripted = Scripted::new([Action::Ok]);
    let server = serve(scripted.clone()).await;
    let streams = StreamsClient::connect(
        ClientConfig::endpoints([server.url()])
            .unwrap()
            .stream_idle_timeout(std::time::Duration::from_millis(150))
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    // Messages every 20 ms: never idle for 150 ms, runs to its end.
    let fast = ListUsersRequest {
        from_id: 1,
        count: 10,
        interval_ms: 20,
    };
    let (ids, status) = drain(streams.list_users(fast).await.unwrap()).await;
    assert_eq!(ids.len(), 10);
    assert!(status.is_none(), "{status:?}");
    // One message every 500 ms: cut 150 ms after the stream started.
    let slow = ListUsersRequest {
        from_id: 1,
        count: 3,
        interval_ms: 500,
    };
    let started = tokio::time::Instant::now();
    let (ids, status) = drain(streams.list_users(slow).await.unwrap()).await;
    let took = started.elapsed();
    assert!(ids.is_empty(), "{ids:?}");
    let status = status.expect("cut");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("idle timeout"), "{status:?}");
    assert!(
        took >= std::time::Duration::from_millis(140)
            && took <= std::time::Duration::from_millis(250),
        "cut after {took:?}"
    );
    scripted
        .until_cancelled("the server never saw the cancellation")
        .await;
}
