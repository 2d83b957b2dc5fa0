//! Deadlines across hops: on servers, enforce the caller's `grpc-timeout` and hand it to the
//! handler ([`DeadlineLayer`]); on clients, set each call's overall deadline
//! ([`CallDeadlineLayer`]) and bound each attempt by it ([`AttemptTimeoutLayer`]); on a
//! plain tonic `Channel`, bound each call the same way ([`HttpDeadlineLayer`]).

pub(crate) mod body;
mod client;
mod future;
mod http;
mod layer;

use std::task::{Context as TaskContext, Poll};

pub use self::client::{
    AttemptFuture, AttemptTimeout, AttemptTimeoutLayer, CallDeadline, CallDeadlineLayer,
};
pub use self::future::ResponseFuture;
pub use self::http::{HttpDeadline, HttpDeadlineFuture, HttpDeadlineLayer};
pub use self::layer::DeadlineLayer;
use crate::wire::sanitize;
pub use crate::wire::{DEADLINE_EXPIRED_KEY, GRPC_TIMEOUT, parse_grpc_timeout};

use crate::Context;

/// Marks a call whose response is a stream: the client's transport then bounds the whole
/// stream by the call's deadline, and the wait for each message by `idle`, if set.
/// Generated code sets it for methods that return a `Streaming<..>`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct StreamingResponse {
    /// At most this long between two messages (see
    /// [`ClientConfig::stream_idle_timeout`](crate::client::ClientConfig::stream_idle_timeout)).
    pub idle: Option<std::time::Duration>,
}

/// Enforces the incoming `grpc-timeout` of each request and exposes the deadline to the
/// handler through [`Context`].
///
/// A request without `grpc-timeout` runs without a deadline. A malformed value is ignored
/// with a `warn!` that shows the value escaped and truncated. When the deadline passes, the
/// handler's future is dropped and the caller gets `DEADLINE_EXCEEDED`; after the handler
/// has answered, its response body (a streaming response's messages) is cut at the deadline
/// and ends with `DEADLINE_EXCEEDED` in the trailers, and the handler's stream is dropped,
/// so its producer sees the caller gone.
///
/// ```no_run
/// use steadfast::deadline::DeadlineLayer;
/// # use tonic::transport::Server;
/// # fn svc() -> tonic::service::Routes { tonic::service::Routes::default() }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// Server::builder()
///     .layer(DeadlineLayer::new())
///     .add_routes(svc())
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Deadline { inner }
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> tower_service::Service<::http::Request<B>> for Deadline<S>
where
    S: tower_service::Service<::http::Request<B>, Response = ::http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ::http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get(&crate::wire::GRPC_TIMEOUT_HEADER)
            .and_then(|value| {
                parse_grpc_timeout(value.as_bytes())
                    .map_err(|why| {
                        tracing::warn!(
                            value = %sanitize(value.as_bytes()),
                            "ignoring malformed grpc-timeout header: {why}"
                        )
                    })
                    .ok()
            });
        // Build on what an outer layer (e.g. the trace layer) already put in the request.
        let base = req
            .extensions()
            .get::<Context>()
            .cloned()
            .unwrap_or_default();
        let ctx = match timeout {
            Some(t) => base.with_timeout(t),
            None => base,
        };
        req.extensions_mut().insert(ctx.clone());
        ResponseFuture::new(&mut self.inner, req, ctx, timeout)
    }
}
