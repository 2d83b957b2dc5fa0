//! Client-streaming and bidirectional calls through a resilient client, against a real tonic
//! server on 127.0.0.1: the request stream is read once and replayed on a retry while it
//! fits the replay buffer; past it, or once the response started, the call is committed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Action, Scripted, drain, serve};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::metrics::Metrics;
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{CountUsersReply, GetUserReply, GetUserRequest};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

#[steadfast::resilient_client(
    service = "uploads",
    client = UserServiceClient,
    grpc_service = "user.UserService",
    timeout = "5s",
    retry(max_attempts = 3, initial_backoff = "5ms", max_backoff = "20ms"),
    breaker(min_failures = 3, failure_ratio = 0.5),
)]
trait Uploads {
    async fn count_users(
        &self,
        ids: impl Stream<Item = GetUserRequest> + Send + 'static,
    ) -> Result<CountUsersReply, Status>;

    #[timeout = "300ms"]
    async fn lookup_users(
        &self,
        ids: tonic::Request<impl Stream<Item = GetUserRequest> + Send + 'static>,
    ) -> Result<tonic::Streaming<GetUserReply>, Status>;
}

fn config(url: String) -> ClientConfig {
    ClientConfig::endpoints([url])
        .unwrap()
        .downstreams(Downstreams::new())
}

async fn client(config: ClientConfig) -> UploadsClient {
    UploadsClient::connect(config).await.unwrap()
}

/// Requests for `ids`, counting how many the caller's stream yields.
fn counted(
    ids: impl IntoIterator<Item = u64, IntoIter: Send + 'static>,
) -> (
    impl Stream<Item = GetUserRequest> + Send + 'static,
    Arc<AtomicU64>,
) {
    let yielded = Arc::new(AtomicU64::new(0));
    let y = yielded.clone();
    let stream = tokio_stream::iter(ids).map(move |id| {
        y.fetch_add(1, Ordering::Relaxed);
        GetUserRequest { id }
    });
    (stream, yielded)
}

#[tokio::test]
async fn a_retry_replays_exactly_the_buffered_messages_in_order() {
    let scripted = Scripted::new([
        Action::Fail(Code::Unavailable),
        Action::Fail(Code::Unavailable),
        Action::Ok,
    ]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    let (ids, yielded) = counted(1..=50);
    let reply = uploads.count_users(ids).await.unwrap();
    assert_eq!(reply.found, 50);
    let seen = scripted.seen();
    assert_eq!(seen.len(), 3, "two retries, then the answer");
    let all: Vec<u64> = (1..=50).collect();
    for (n, s) in seen.iter().enumerate() {
        assert_eq!(s.ids, all, "attempt {n} got every message, in order");
    }
    let retried: Vec<Option<String>> = seen.iter().map(|s| s.previous_attempts.clone()).collect();
    assert_eq!(retried, [None, Some("1".into()), Some("2".into())]);
    assert_eq!(
        yielded.load(Ordering::Relaxed),
        50,
        "the caller's stream is read once per message, not once per attempt"
    );
}

#[tokio::test]
async fn a_failure_while_the_caller_is_still_sending_replays_the_whole_stream() {
    // The server fails after the first of 2,000 messages, while the rest are in flight;
    // the attempt given up may still be asked for its body as the retry starts.
    let scripted = Scripted::new([Action::FailStream(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    let (ids, yielded) = counted(1..=2_000);
    let reply = uploads.count_users(ids).await.unwrap();
    assert_eq!(reply.found, 2_000);
    let seen = scripted.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].ids,
        [1],
        "the first attempt failed after one message"
    );
    assert_eq!(
        seen[1].ids,
        (1..=2_000).collect::<Vec<_>>(),
        "the retry sent them all, in order"
    );
    assert_eq!(yielded.load(Ordering::Relaxed), 2_000);
}

#[tokio::test]
async fn a_request_stream_larger_than_the_replay_buffer_is_not_retried() {
    let scripted = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    // Each `GetUserRequest { id < 128 }` is 2 bytes, plus the 5-byte frame header.
    let uploads = client(config(server.url()).replay_buffer(64)).await;
    let (ids, yielded) = counted(1..=50);
    let err = uploads.count_users(ids).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(scripted.calls(), 1, "committed past the buffer: sent once");
    assert_eq!(scripted.seen()[0].ids.len(), 50, "the call itself went on");
    assert_eq!(yielded.load(Ordering::Relaxed), 50);

    // Within the bound (9 messages, 63 bytes) the same failure is retried.
    let scripted = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url()).replay_buffer(64)).await;
    let reply = uploads.count_users(counted(1..=9).0).await.unwrap();
    assert_eq!(reply.found, 9);
    assert_eq!(scripted.calls(), 2);
}

#[tokio::test]
async fn server_pushback_governs_request_stream_retries_as_for_unary_calls() {
    // "Do not retry": one attempt.
    let scripted = Scripted::new([Action::Pushback(Code::Unavailable, "-1"), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    let err = uploads.count_users(counted(1..=3).0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(scripted.calls(), 1);
    // "Retry after 150 ms": the replay waits for it, not for the 5 ms backoff.
    scripted.script([Action::Pushback(Code::Unavailable, "150"), Action::Ok]);
    let reply = uploads.count_users(counted(1..=3).0).await.unwrap();
    assert_eq!(reply.found, 3);
    let seen = scripted.seen();
    assert_eq!(seen.len(), 3);
    let gap = seen[2].at - seen[1].at;
    assert!(gap >= Duration::from_millis(150), "retried after {gap:?}");
    assert_eq!(seen[2].ids, [1, 2, 3]);
}

#[tokio::test]
async fn the_default_replay_buffer_is_256_kib_per_call() {
    // Each message is 5 + 1 + varint(id) bytes: 8 for ids below 16,384, else 9. 30,000 ids
    // from 1,000 make 254,616 bytes, under 262,144; 40,000 make 344,616.
    let ids = |n: u64| counted((1_000..1_000 + n).collect::<Vec<_>>()).0;
    let scripted = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    let reply = uploads.count_users(ids(30_000)).await.unwrap();
    assert_eq!(reply.found, 30_000);
    assert_eq!(scripted.calls(), 2, "retried from the buffer");
    assert_eq!(scripted.seen()[1].ids.len(), 30_000);

    scripted.script([Action::Fail(Code::Unavailable), Action::Ok]);
    let err = uploads.count_users(ids(40_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(scripted.calls(), 3, "past 256 KiB: sent once");
}

#[tokio::test]
async fn a_client_stream_longer_than_the_deadline_ends_at_the_deadline() {
    let scripted = Scripted::new([Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    // One id, then nothing: the stream never ends. `LookupUsers` has a 300 ms timeout.
    let ids = tokio_stream::iter([GetUserRequest { id: 1 }]).chain(tokio_stream::pending());
    let started = Instant::now();
    let outcome = async {
        let stream = uploads.lookup_users(tonic::Request::new(ids)).await?;
        let (got, status) = drain(stream).await;
        assert_eq!(got, [1], "the answer to the one id");
        Err::<(), _>(status.expect("cut by the deadline"))
    }
    .await;
    let took = started.elapsed();
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        took >= Duration::from_millis(290) && took <= Duration::from_millis(350),
        "ended after {took:?}, not at the 300 ms deadline"
    );
}

#[tokio::test]
async fn bidi_unavailable_before_the_first_answer_is_retried_with_the_stream_replayed() {
    let scripted = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    let (ids, yielded) = counted(1..=5);
    let mut request = tonic::Request::new(ids);
    request
        .metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let (got, status) = drain(uploads.lookup_users(request).await.unwrap()).await;
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(status.is_none(), "{status:?}");
    assert_eq!(scripted.calls(), 2);
    let tenants: Vec<Option<String>> = scripted.seen().iter().map(|s| s.tenant.clone()).collect();
    assert_eq!(
        tenants,
        [Some("acme".into()), Some("acme".into())],
        "metadata on every attempt"
    );
    assert_eq!(yielded.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn bidi_failure_after_the_first_answer_is_not_retried() {
    let scripted = Scripted::new([Action::FailStream(Code::Unavailable), Action::Ok]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    let stream = uploads
        .lookup_users(tonic::Request::new(counted(7..=9).0))
        .await
        .unwrap();
    let (got, status) = drain(stream).await;
    assert_eq!(got, [7], "the answer before the failure");
    assert_eq!(status.map(|s| s.code()), Some(Code::Unavailable));
    assert_eq!(scripted.calls(), 1, "committed: never sent again");
}

#[tokio::test]
async fn a_breaker_opened_by_failing_bidi_streams_rejects_new_streams_fast() {
    let scripted = Scripted::new([Action::FailStream(Code::Unavailable)]);
    let server = serve(scripted.clone()).await;
    let uploads = client(config(server.url())).await;
    for _ in 0..3 {
        let stream = uploads
            .lookup_users(tonic::Request::new(counted(1..=3).0))
            .await
            .unwrap();
        let (_, status) = drain(stream).await;
        assert_eq!(status.map(|s| s.code()), Some(Code::Unavailable));
    }
    let calls = scripted.calls();
    let started = Instant::now();
    let rejected = uploads
        .lookup_users(tonic::Request::new(counted(1..=3).0))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(50), "fast");
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
    // A client stream to the same service is rejected as fast.
    let rejected = uploads.count_users(counted(1..=3).0).await.unwrap_err();
    assert!(rejected.metadata().get("steadfast-breaker-open").is_some());
    assert_eq!(scripted.calls(), calls);
}

/// The value of the series `name{labels}` in `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in\n{text}"))
}

#[tokio::test]
async fn streams_are_counted_with_their_messages_and_final_code() {
    let scripted = Scripted::new([Action::Ok]);
    let server = serve(scripted.clone()).await;
    let metrics = Metrics::new();
    let uploads = client(config(server.url()).metrics(metrics.clone())).await;

    // Client streaming: 5 sent, 1 received, after a retry (the failed attempt is not a
    // stream of its own).
    scripted.script([Action::Fail(Code::Unavailable), Action::Ok]);
    uploads.count_users(counted(1..=5).0).await.unwrap();
    // Bidi: 4 sent, 4 received.
    scripted.script([Action::Ok]);
    let (got, _) = drain(
        uploads
            .lookup_users(tonic::Request::new(counted(1..=4).0))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.len(), 4);
    // Bidi ended by NOT_FOUND after 1 answer (id 0 names no user).
    let (got, status) = drain(
        uploads
            .lookup_users(tonic::Request::new(counted([2, 0]).0))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (got.len(), status.map(|s| s.code())),
        (1, Some(Code::NotFound))
    );
    // Bidi dropped by the caller after its first answer: CANCELLED.
    let mut stream = uploads
        .lookup_users(tonic::Request::new(
            counted([5]).0.chain(tokio_stream::pending()),
        ))
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().id, 5);
    drop(stream);
    // Client streaming given up by the caller before its answer: CANCELLED.
    let (ids, _) = counted([1]);
    let never_ends = ids.chain(tokio_stream::pending());
    let gave_up = tokio::time::timeout(Duration::from_millis(100), uploads.count_users(never_ends));
    assert!(gave_up.await.is_err(), "still waiting for its answer");

    let text = metrics.render_text();
    let m = |name: &str, method: &str, rest: &str| {
        value(
            &text,
            &format!(
                "steadfast_client_{name}{{rpc_service=\"user.UserService\",rpc_method=\"{method}\"{rest}}}"
            ),
        )
    };
    assert_eq!(m("streams_started_total", "CountUsers", ""), 2.0);
    assert_eq!(m("stream_messages_sent_total", "CountUsers", ""), 5.0 + 1.0);
    assert_eq!(m("stream_messages_received_total", "CountUsers", ""), 1.0);
    let code = |c: &str| format!(",rpc_grpc_status_code=\"{c}\"");
    assert_eq!(
        m("stream_duration_seconds_count", "CountUsers", &code("0")),
        1.0
    );
    assert_eq!(
        m("stream_duration_seconds_count", "CountUsers", &code("1")),
        1.0,
        "given up before its answer"
    );

    assert_eq!(m("streams_started_total", "LookupUsers", ""), 3.0);
    assert_eq!(
        m("stream_messages_sent_total", "LookupUsers", ""),
        4.0 + 2.0 + 1.0
    );
    assert_eq!(
        m("stream_messages_received_total", "LookupUsers", ""),
        4.0 + 1.0 + 1.0
    );
    assert_eq!(
        m("stream_duration_seconds_count", "LookupUsers", &code("0")),
        1.0
    );
    assert_eq!(
        m("stream_duration_seconds_count", "LookupUsers", &code("5")),
        1.0
    );
    assert_eq!(
        m("stream_duration_seconds_count", "LookupUsers", &code("1")),
        1.0
    );
}
