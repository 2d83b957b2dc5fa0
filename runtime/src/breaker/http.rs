//! The circuit breaker at the HTTP level, for any tonic-generated client on a plain tonic
//! `Channel`: admission per request, and the outcome read from the response, in its
//! headers (a trailers-only answer) or in its trailers (a normal one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{CircuitBreaker, OwnedPermit, effect, rejection_status};
use crate::outcome::{AttemptOutcome, classify_http, classify_status, http_status_code};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Guards a plain tonic `Channel` (or any `tower::Service` of HTTP/2 gRPC requests) with a
/// [`CircuitBreaker`]: every request asks for admission; an open breaker answers at once
/// with `UNAVAILABLE` and the [`OPEN_REJECTION_KEY`](super::OPEN_REJECTION_KEY) marker (which
/// [`HttpRetryLayer`](crate::retry::HttpRetryLayer) never retries); the outcome is recorded
/// when the status is known: from the headers of a trailers-only answer, from the HTTP
/// status of an answer that is not gRPC (a proxy's 502 counts as `UNAVAILABLE`, as gRPC maps
/// it), or from the trailers once the response body ends. A response dropped before its trailers records
/// nothing (and frees a half-open probe slot). Outcomes count as in
/// [`Breaker`](super::Breaker): statuses relayed from a deeper hop and requests that never
/// reached a server record nothing.
///
/// Put it under [`HttpRetryLayer`](crate::retry::HttpRetryLayer) so each attempt asks.
///
/// ```
/// use steadfast::breaker::{BreakerConfig, CircuitBreaker, HttpBreakerLayer};
/// use steadfast::retry::{HttpRetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let breaker = std::sync::Arc::new(CircuitBreaker::new("user-svc", BreakerConfig::default()));
/// let channel = ServiceBuilder::new()
///     .layer(HttpRetryLayer::new(RetryPolicy::default()))
///     .layer(HttpBreakerLayer::new(breaker))
///     .service(channel);
/// // let users = UserServiceClient::new(channel); // any tonic-generated client
/// # let _ = channel;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HttpBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl HttpBreakerLayer {
    /// A layer guarding services with `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        HttpBreakerLayer { breaker }
    }
}

impl<S> Layer<S> for HttpBreakerLayer {
    type Service = HttpBreaker<S>;
    fn layer(&self, inner: S) -> HttpBreaker<S> {
        HttpBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service of [`HttpBreakerLayer`].
#[derive(Clone, Debug)]
pub struct HttpBreaker<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S> HttpBreaker<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for HttpBreaker<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = HttpBreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match OwnedPermit::acquire(&self.breaker) {
            Ok(permit) => HttpBreakerFuture {
                inner: Some(self.inner.call(request)),
                permit: Some(permit),
                rejected: None,
            },
            Err(rejected) => {
                self.breaker.rejected();
                HttpBreakerFuture {
                    inner: None,
                    permit: None,
                    rejected: Some(rejection_status(self.breaker.name(), &rejected)),
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`HttpBreaker`].
    pub struct HttpBreakerFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedPermit>,
        rejected: Option<tonic::Status>,
    }
}

impl<F> std::fmt::Debug for HttpBreakerFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBreakerFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for HttpBreakerFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let status = this
                .rejected
                .take()
                .unwrap_or_else(|| tonic::Status::unavailable("circuit breaker open"));
            return Poll::Ready(Ok(status.into_http()));
        };
        let result = ready!(inner.poll(cx)).map_err(Into::into);
        let permit = this.permit.take().expect("polled after completion");
        let response = match result {
            Err(e) => {
                record(permit, classify_http(Err(&*e)));
                return Poll::Ready(Err(e));
            }
            Ok(response) => response,
        };
        let known = classify_status(response.headers())
            .or_else(|| http_status_code(response.status()).map(AttemptOutcome::Remote));
        if let Some(outcome) = known {
            // Trailers-only, or not a gRPC answer (a proxy's error page): known now.
            record(permit, outcome);
            return Poll::Ready(Ok(response.map(tonic::body::Body::new)));
        }
        Poll::Ready(Ok(response.map(|body| {
            tonic::body::Body::new(RecordBody {
                inner: body,
                permit: Some(permit),
            })
        })))
    }
}

fn record(permit: OwnedPermit, outcome: AttemptOutcome) {
    match effect(permit.config(), outcome) {
        Some(o) => permit.record(o),
        None => drop(permit),
    }
}

pin_project! {
    /// A response body that records the call's outcome when its trailers arrive.
    struct RecordBody<B> {
        #[pin]
        inner: B,
        permit: Option<OwnedPermit>,
    }
}

impl<B> Body for RecordBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(permit) = this.permit.take()
                {
                    // Trailers without a status are a broken response: UNKNOWN.
                    let outcome = classify_status(trailers)
                        .unwrap_or(AttemptOutcome::Remote(tonic::Code::Unknown));
                    record(permit, outcome);
                }
            }
            Some(Err(_)) => {
                if let Some(permit) = this.permit.take() {
                    record(permit, AttemptOutcome::Transport);
                }
            }
            // The stream ended without trailers: no status, a broken response.
            None => {
                if let Some(permit) = this.permit.take() {
                    record(permit, AttemptOutcome::Transport);
                }
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
