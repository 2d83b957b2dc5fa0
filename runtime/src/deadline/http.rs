//! The call deadline at the HTTP level, for any tonic-generated client on a plain tonic
//! `Channel`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::Context;
use crate::wire::{DEADLINE_EXPIRED_KEY, GRPC_TIMEOUT, grpc_timeout_value, parse_grpc_timeout};

/// Bounds every call by `min(own timeout, the caller's deadline, the request's own
/// grpc-timeout)` and writes it as the request's `grpc-timeout`: tonic's channel enforces
/// it, the server sees it, and [`HttpRetryLayer`](crate::retry::HttpRetryLayer) below it
/// spends no attempt and no backoff past it. The caller's deadline is the running task's
/// [`Context`] (set by [`DeadlineLayer`](super::DeadlineLayer) in a handler), so a deadline
/// shrinks from hop to hop on plain tonic clients too. A call whose deadline has already
/// passed is answered at once with `DEADLINE_EXCEEDED`, without a request; a call whose
/// deadline passes before the response headers arrive ends with `DEADLINE_EXCEEDED` too
/// (tonic's timer says `CANCELLED`, which gRPC keeps for calls the caller cancelled). The
/// timer is tonic's: it bounds the wait for the response headers, and the server enforces
/// the whole call by the same `grpc-timeout`.
///
/// ```
/// use std::time::Duration;
/// use steadfast::deadline::HttpDeadlineLayer;
/// use steadfast::retry::{HttpRetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let channel = ServiceBuilder::new()
///     .layer(HttpDeadlineLayer::new(Some(Duration::from_secs(2))))
///     .layer(HttpRetryLayer::new(RetryPolicy::default()))
///     .service(channel);
/// // let users = UserServiceClient::new(channel); // any tonic-generated client
/// # let _ = channel;
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HttpDeadlineLayer {
    timeout: Option<Duration>,
}

impl HttpDeadlineLayer {
    /// Calls get at most `timeout` (`None`: only the caller's deadline and the request's
    /// own `grpc-timeout` bound them).
    pub fn new(timeout: Option<Duration>) -> Self {
        HttpDeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for HttpDeadlineLayer {
    type Service = HttpDeadline<S>;
    fn layer(&self, inner: S) -> HttpDeadline<S> {
        HttpDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`HttpDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct HttpDeadline<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> HttpDeadline<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for HttpDeadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HttpDeadlineFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let own = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()).ok());
        let caller =
            Context::current_deadline().map(|d| d.saturating_duration_since(Instant::now()));
        let left = [self.timeout, own, caller].into_iter().flatten().min();
        match left {
            Some(left) if left.is_zero() => HttpDeadlineFuture {
                inner: None,
                expired: Some(expired("the call's deadline passed before it was sent")),
                expires: None,
            },
            left => {
                if let Some(left) = left {
                    request
                        .headers_mut()
                        .insert(GRPC_TIMEOUT, grpc_timeout_value(left));
                }
                HttpDeadlineFuture {
                    inner: Some(self.inner.call(request)),
                    expired: None,
                    expires: left.and_then(|l| Instant::now().checked_add(l)),
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`HttpDeadline`].
    pub struct HttpDeadlineFuture<F, B> {
        #[pin]
        inner: Option<F>,
        expired: Option<http::Response<B>>,
        // When the deadline this layer wrote passes.
        expires: Option<Instant>,
    }
}

impl<F, B> std::fmt::Debug for HttpDeadlineFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDeadlineFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for HttpDeadlineFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<http::Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => match std::task::ready!(inner.poll(cx)).map_err(Into::into) {
                // tonic's timer fired at the deadline written here (not at an earlier
                // `Endpoint::timeout`): the call's deadline passed.
                Err(e)
                    if timed_out(&*e)
                        && this.expires.is_some_and(|at| {
                            Instant::now() + std::time::Duration::from_millis(1) >= at
                        }) =>
                {
                    Poll::Ready(Ok(expired("the call's deadline passed in flight")))
                }
                other => Poll::Ready(other),
            },
            None => Poll::Ready(Ok(this
                .expired
                .take()
                .expect("HttpDeadlineFuture polled after completion"))),
        }
    }
}

/// Whether tonic's `grpc-timeout` timer ended the request.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A trailers-only `DEADLINE_EXCEEDED` answer, marked as our own deadline.
fn expired<B: Default>(message: &'static str) -> http::Response<B> {
    let mut status = tonic::Status::deadline_exceeded(message);
    status.metadata_mut().insert(
        DEADLINE_EXPIRED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status.into_http()
}
