//! gRFC A6 "committed" calls: once response headers have arrived, a failure is final.
//!
//! The server here is a raw HTTP/2 gRPC service, so the test controls exactly when headers
//! and trailers are sent: either a trailers-only UNAVAILABLE (not committed, retried), or
//! response headers followed by UNAVAILABLE in the trailers (committed, not retried).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

#[steadfast::resilient_client(service = "committed-svc", client = UserServiceClient)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// Answers every call with UNAVAILABLE, either trailers-only or after response headers.
#[derive(Clone)]
struct Raw {
    headers_first: bool,
    calls: Arc<AtomicUsize>,
}

impl NamedService for Raw {
    const NAME: &'static str = "user.UserService";
}

impl tower::Service<http::Request<Body>> for Raw {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let response = if self.headers_first {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "14".parse().unwrap());
            trailers.insert("grpc-message", "failed mid-response".parse().unwrap());
            let frames = tokio_stream::iter([Ok::<_, Status>(
                http_body::Frame::<Bytes>::trailers(trailers),
            )]);
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(StreamBody::new(frames).boxed_unsync()))
                .unwrap()
        } else {
            Status::unavailable("trailers only").into_http()
        };
        std::future::ready(Ok(response))
    }
}

async fn serve(headers_first: bool) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = Raw {
        headers_first,
        calls: calls.clone(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, calls)
}

async fn call(url: String) -> Status {
    let config = ClientConfig::endpoints([url])
        .unwrap()
        .downstreams(Downstreams::new());
    let users = UsersClient::connect(config).await.unwrap();
    users.get_user(GetUserRequest { id: 1 }).await.unwrap_err()
}

#[tokio::test]
async fn trailers_only_failure_is_retried() {
    let (url, calls) = serve(false).await;
    let err = call(url).await;
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "default policy: 3 attempts"
    );
}

#[tokio::test]
async fn failure_after_response_headers_is_committed_and_not_retried() {
    let (url, calls) = serve(true).await;
    let err = call(url).await;
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "headers had arrived: committed"
    );
}
