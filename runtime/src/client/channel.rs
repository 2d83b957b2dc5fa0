use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;

use crate::retry::CommitMarker;

/// The transport of every steadfast client: a tonic channel (one endpoint or a balanced set)
/// that also tells the retry logic when a call is committed.
///
/// A response whose headers arrive without `grpc-status` has started: from then on, per
/// gRFC A6, the call is committed and is not retried. A "trailers-only" error response does
/// not commit, so it stays retryable.
///
/// Use it as the transport of any tonic-generated client:
/// `UserServiceClient::new(channel)`.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: tonic::transport::Channel,
}

impl Channel {
    /// Wraps a tonic channel.
    pub fn new(inner: tonic::transport::Channel) -> Self {
        Channel { inner }
    }
    /// The tonic channel.
    pub fn get_ref(&self) -> &tonic::transport::Channel {
        &self.inner
    }
    /// Unwraps the tonic channel.
    pub fn into_inner(self) -> tonic::transport::Channel {
        self.inner
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let commit = req.extensions().get::<CommitMarker>().cloned();
        ResponseFuture {
            inner: tower_service::Service::call(&mut self.inner, req),
            commit,
        }
    }
}

pin_project! {
    /// Response future of [`Channel`].
    #[derive(Debug)]
    pub struct ResponseFuture {
        #[pin]
        inner: tonic::transport::channel::ResponseFuture,
        commit: Option<CommitMarker>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<tonic::body::Body>, tonic::transport::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        // Committed: a real gRPC response started (HTTP 200 without `grpc-status` in the
        // headers). A proxy's plain 503 or a trailers-only error is not committed.
        if let (Ok(response), Some(commit)) = (&out, this.commit.as_ref())
            && response.status() == http::StatusCode::OK
            && !response.headers().contains_key("grpc-status")
        {
            commit.commit();
        }
        Poll::Ready(out)
    }
}
