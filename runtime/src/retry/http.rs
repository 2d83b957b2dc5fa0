//! gRFC A6 retries at the HTTP level, for any tonic-generated client on a plain tonic
//! `Channel`: the request body is buffered (up to a bound, like grpc-go's per-RPC retry
//! buffer) so that it can be sent again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use tokio::time::Instant;
use tonic::body::Body;
use tower::ServiceExt;

use super::{PREVIOUS_ATTEMPTS_KEY, Pushback, RetryPolicy, RetryThrottle, ServiceConfig};
use crate::outcome::{AttemptOutcome, MAX_TRANSPARENT_RETRIES, classify_http};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default bound of the request buffer per call: 256 KiB, as grpc-go's.
pub const DEFAULT_BUFFER_LIMIT: usize = 256 * 1024;

/// A6 retries for a plain tonic `Channel` (or any `tower::Service` of HTTP/2 requests):
/// put it under any tonic-generated client and its calls are retried.
///
/// What it does per call:
/// - The policy comes from the [`RetryPolicy`] given to [`new`](Self::new), or per method from
///   a [`ServiceConfig`] ([`service_config`](Self::service_config)); a method without one is
///   passed through untouched, unbuffered.
/// - The request body is buffered when it is complete at once and within the bound
///   ([`DEFAULT_BUFFER_LIMIT`], set with [`buffer_limit`](Self::buffer_limit)): that is every
///   unary call. A larger body, or a stream still open (client and bidirectional streaming),
///   is sent once, without retries (a debug log says so).
/// - An attempt is retried only before it is committed: a trailers-only answer (HTTP 200
///   with `grpc-status` in the headers) with a retryable code, or a connection that failed.
///   A response that started is returned as it is.
/// - Backoff, server pushback (`grpc-retry-pushback-ms`), the retry throttle,
///   `grpc-previous-rpc-attempts`, transparent retry of attempts that never reached a server
///   and statuses relayed from a deeper hop work as in [`RetryLayer`](super::RetryLayer).
/// - The call's `grpc-timeout` (set by tonic from `Request::set_timeout`, or by the
///   service config's `timeout`) is the overall deadline: each attempt is sent with what is
///   left of it, and no backoff runs past it.
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::{HttpRetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let policy = RetryPolicy::builder().max_attempts(4).build().unwrap();
/// let channel = ServiceBuilder::new()
///     .layer(HttpRetryLayer::new(policy))
///     .service(channel);
/// // let users = UserServiceClient::new(channel); // any tonic-generated client
/// # let _ = channel;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HttpRetryLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policies: Policies,
    throttle: Option<Arc<RetryThrottle>>,
    buffer_limit: usize,
}

#[derive(Debug)]
enum Policies {
    One(RetryPolicy),
    Config(ServiceConfig),
}

impl HttpRetryLayer {
    /// Retries every call per `policy`, with the A6 default retry throttle.
    pub fn new(policy: RetryPolicy) -> Self {
        HttpRetryLayer {
            shared: Arc::new(Shared {
                policies: Policies::One(policy),
                throttle: Some(Arc::new(RetryThrottle::default())),
                buffer_limit: DEFAULT_BUFFER_LIMIT,
            }),
        }
    }

    /// Retries each method per its entry in `config` (methods without a `retryPolicy` are not
    /// retried), with the config's `retryThrottling` (A6's default when it has none), and
    /// bounds calls by the entry's `timeout` when the caller set none.
    ///
    /// ```
    /// use steadfast::retry::{HttpRetryLayer, ServiceConfig};
    ///
    /// let config = ServiceConfig::from_json(r#"{"methodConfig": [{
    ///     "name": [{"service": "user.UserService"}],
    ///     "timeout": "1.5s",
    ///     "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
    ///                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    /// }]}"#)?;
    /// let layer = HttpRetryLayer::service_config(config);
    /// # let _ = layer;
    /// # Ok::<(), steadfast::Error>(())
    /// ```
    pub fn service_config(config: ServiceConfig) -> Self {
        let throttle = config.throttle().unwrap_or_default();
        HttpRetryLayer {
            shared: Arc::new(Shared {
                policies: Policies::Config(config),
                throttle: Some(Arc::new(throttle)),
                buffer_limit: DEFAULT_BUFFER_LIMIT,
            }),
        }
    }

    /// Draws retries from `throttle` (share one between the layers of one downstream), or
    /// from none.
    pub fn throttle(mut self, throttle: Option<Arc<RetryThrottle>>) -> Self {
        self.shared_mut().throttle = throttle;
        self
    }

    /// The largest request body buffered for retries, in bytes (default
    /// [`DEFAULT_BUFFER_LIMIT`]); a larger one is sent once, without retries.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.shared_mut().buffer_limit = bytes;
        self
    }

    fn shared_mut(&mut self) -> &mut Shared {
        if Arc::get_mut(&mut self.shared).is_none() {
            let s = &*self.shared;
            self.shared = Arc::new(Shared {
                policies: match &s.policies {
                    Policies::One(p) => Policies::One(*p),
                    Policies::Config(c) => Policies::Config(c.clone()),
                },
                throttle: s.throttle.clone(),
                buffer_limit: s.buffer_limit,
            });
        }
        Arc::get_mut(&mut self.shared).expect("just made unique")
    }
}

impl<S> tower_layer::Layer<S> for HttpRetryLayer {
    type Service = HttpRetry<S>;

    fn layer(&self, inner: S) -> HttpRetry<S> {
        HttpRetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`HttpRetryLayer`].
#[derive(Clone, Debug)]
pub struct HttpRetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> HttpRetry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Shared {
    /// The policy and default timeout of the method at `path` (`/pkg.Service/Method`).
    fn lookup(&self, path: &str) -> (Option<RetryPolicy>, Option<Duration>) {
        match &self.policies {
            Policies::One(p) => (Some(*p), None),
            Policies::Config(config) => {
                let mut parts = path.trim_start_matches('/').splitn(2, '/');
                let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                config
                    .lookup(service, method)
                    .map_or((None, None), |m| (m.retry, m.timeout))
            }
        }
    }
}

/// The response future of [`HttpRetry`].
pub type HttpRetryFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

impl<S> tower_service::Service<http::Request<Body>> for HttpRetry<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = HttpRetryFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> HttpRetryFuture {
        // The readied service takes this call; each later attempt readies a clone.
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        Box::pin(async move { shared.run(ready, request).await })
    }
}

/// What buffering the request body gave.
enum Buffered {
    /// The whole body, ready to be sent again.
    Whole(Bytes),
    /// Too large or still streaming: what was read, and the rest.
    Partial(Body),
}

impl Shared {
    async fn run<S>(
        &self,
        mut ready: S,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError>
    where
        S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone,
        S::Error: Into<BoxError>,
    {
        let (policy, default_timeout) = self.lookup(request.uri().path());
        let Some(policy) = policy else {
            return ready.call(request).await.map_err(Into::into);
        };
        let (parts, body) = request.into_parts();
        let body = match buffer(body, self.buffer_limit).await? {
            Buffered::Whole(bytes) => bytes,
            Buffered::Partial(body) => {
                tracing::debug!(
                    path = parts.uri.path(),
                    limit = self.buffer_limit,
                    "request body over the retry buffer or still streaming: sent once, without retries"
                );
                return ready
                    .call(http::Request::from_parts(parts, body))
                    .await
                    .map_err(Into::into);
            }
        };
        // The overall deadline: the caller's grpc-timeout, else the config's timeout.
        let timeout = parts
            .headers
            .get(crate::wire::GRPC_TIMEOUT)
            .and_then(|v| crate::wire::parse_grpc_timeout(v.as_bytes()).ok())
            .or(default_timeout);
        let deadline = timeout.map(|t| Instant::now() + t);
        let template = ready.clone();
        let mut first = Some(ready);
        let (mut attempts, mut transparent, mut backoff_n) = (0u32, 0u32, 0u32);
        loop {
            attempts += 1;
            let mut req = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            *req.extensions_mut() = parts.extensions.clone();
            if attempts > 1 {
                req.headers_mut()
                    .insert(PREVIOUS_ATTEMPTS_KEY, http::HeaderValue::from(attempts - 1));
            }
            // This attempt's time: what is left of the call, cut to the per-attempt timeout.
            // tonic's channel enforces it; the server sees it as grpc-timeout.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(tonic::Status::deadline_exceeded(
                    "the call's deadline passed before the next attempt",
                )
                .into());
            }
            let attempt_time = match (left, policy.per_attempt_timeout()) {
                (Some(l), Some(p)) => Some(l.min(p)),
                (l, p) => l.or(p),
            };
            if let Some(t) = attempt_time {
                req.headers_mut().insert(
                    crate::wire::GRPC_TIMEOUT,
                    crate::wire::grpc_timeout_value(t),
                );
            }
            // The first attempt goes to the service the caller readied; later ones ready a
            // clone of it.
            let result = match first.take() {
                Some(mut ready) => ready.call(req).await,
                None => template.clone().oneshot(req).await,
            }
            .map_err(Into::<BoxError>::into);
            let outcome = classify_http(result.as_ref().map_err(|e| &**e as _));
            match outcome {
                AttemptOutcome::Success => {
                    if let Some(t) = &self.throttle {
                        t.on_success();
                    }
                    return result;
                }
                AttemptOutcome::PassedThrough(_) => return result,
                // A breaker below failed fast: the downstream was not asked, and asking
                // again now would only be refused again.
                _ if result.as_ref().is_ok_and(|r| {
                    r.headers().contains_key(crate::breaker::OPEN_REJECTION_KEY)
                }) =>
                {
                    return result;
                }
                AttemptOutcome::NotSent if transparent < MAX_TRANSPARENT_RETRIES => {
                    transparent += 1;
                    attempts -= 1;
                    continue;
                }
                _ => {}
            }
            let pushback = match &result {
                Ok(response) => Pushback::from_metadata(
                    &tonic::metadata::MetadataMap::from_headers(response.headers().clone()),
                ),
                Err(_) => Pushback::Absent,
            };
            // Our own attempt timeout is retried (the attempt ran out, not the call).
            let retryable = outcome == AttemptOutcome::Timeout
                || policy.retryable_codes().contains(outcome.code());
            // As the typed layer: "do not retry" pushback counts against the throttle
            // whatever the code; a non-retryable code does not.
            if pushback == Pushback::DoNotRetry {
                if let Some(t) = &self.throttle {
                    t.on_failure();
                }
                return result;
            }
            if !retryable {
                return result;
            }
            if let Some(t) = &self.throttle
                && !t.on_failure()
            {
                return result;
            }
            if attempts >= policy.max_attempts() {
                return result;
            }
            let delay = match pushback {
                Pushback::RetryAfter(d) => {
                    backoff_n = 0;
                    d
                }
                _ => {
                    backoff_n += 1;
                    policy.jittered_backoff(backoff_n, fastrand::f64())
                }
            };
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return result;
            }
            tracing::debug!(
                path = parts.uri.path(),
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Reads the body while it is complete at once and within `limit`.
async fn buffer(mut body: Body, limit: usize) -> Result<Buffered, BoxError> {
    let mut read = BytesMut::new();
    loop {
        if body.is_end_stream() {
            return Ok(Buffered::Whole(read.freeze()));
        }
        // Wait for the first frame; after it, a body that is not complete at once is a stream.
        let waited = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !read.is_empty() => {
                Poll::Ready(None::<Option<Result<Frame<Bytes>, tonic::Status>>>)
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        match waited {
            None => return Ok(Buffered::Partial(prefixed(read.freeze(), None, body))),
            Some(None) => return Ok(Buffered::Whole(read.freeze())),
            Some(Some(Err(status))) => return Err(status.into()),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    read.extend_from_slice(&data);
                    if read.len() > limit {
                        return Ok(Buffered::Partial(prefixed(read.freeze(), None, body)));
                    }
                }
                Err(frame) => {
                    // Request trailers: not a unary call; send what was read, then the rest.
                    return Ok(Buffered::Partial(prefixed(
                        read.freeze(),
                        Some(frame),
                        body,
                    )));
                }
            },
        }
    }
}

/// A body that yields `data`, then `frame`, then the rest of `rest`.
fn prefixed(data: Bytes, frame: Option<Frame<Bytes>>, rest: Body) -> Body {
    Body::new(Prefixed {
        data: (!data.is_empty()).then_some(data),
        frame,
        rest,
    })
}

struct Prefixed {
    data: Option<Bytes>,
    frame: Option<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(frame) = self.frame.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.frame.is_none() && self.rest.is_end_stream()
    }
}
