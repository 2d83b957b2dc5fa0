//! Retries with gRFC A6 semantics: retryable codes, jittered exponential backoff, server
//! pushback, retry throttling, committed calls and an overall deadline.
//!
//! [`RetryLayer`] is one layer of the client stack ([`crate::client::stack`]); generated
//! clients use it, and it works on its own around any typed service
//! (`tonic::Request<M>` with `M: Clone`): the message is cloned for each attempt, which
//! sidesteps the non-cloneable HTTP body that keeps tonic itself from retrying. The deadline
//! and per-attempt timeout are the [`deadline`](crate::deadline) layers' job, admission the
//! [`breaker`]'s; this layer reads their results from the attempt's
//! [`AttemptInfo`] (the one classification of each attempt).
//!
//! Without the macro, [`HttpRetryLayer`] gives any tonic-generated client on a plain tonic
//! `Channel` the same A6 retries at the HTTP level: unary request bodies are buffered (up to
//! [`DEFAULT_BUFFER_LIMIT`], as grpc-go) and sent again while the call is not committed.
//!
//! # What one call does (through the whole stack)
//! 1. The overall deadline is `min(now + timeout, Context::current().deadline())`; it bounds
//!    every attempt and every backoff and is never extended.
//! 2. Each attempt gets `min(per_attempt_timeout, remaining)`, sent as `grpc-timeout`.
//!    Attempts after the first carry `grpc-previous-rpc-attempts`.
//! 3. A failure is retried when all of these hold: no response headers had arrived (the call
//!    was not committed); the code is retryable, or the attempt hit its own per-attempt
//!    timeout; the server sent no "do not retry" pushback; attempts remain; and the
//!    [`RetryThrottle`] allows it.
//! 4. The delay is the server's `grpc-retry-pushback-ms` when present (and the backoff then
//!    restarts), else `min(initial * multiplier^(n-1), max) * U(0.8, 1.2)`.
//! 5. When the deadline is exhausted the call ends with `DEADLINE_EXCEEDED`.
//! 6. An attempt that never reached a server is sent again at once to another endpoint,
//!    uncounted; a status relayed from a deeper hop is never retried (see
//!    [`crate::outcome`]).

mod config;
mod hedge;
mod http;
mod layer;
mod policy;
mod pushback;
mod replay;
mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

pub use self::config::{MethodConfig, MethodName, ServiceConfig};
pub use self::hedge::HedgingPolicy;
pub use self::http::{DEFAULT_BUFFER_LIMIT, HttpRetry, HttpRetryFuture, HttpRetryLayer};
pub use self::layer::RetryLayer;
pub use self::policy::{MAX_ATTEMPTS_LIMIT, RetryPolicy, RetryPolicyBuilder};
pub use self::pushback::{PUSHBACK_KEY, Pushback};
pub use self::replay::{ReplayCommit, ReplayStream};
pub use self::throttle::RetryThrottle;

use crate::Context;
use crate::breaker::{self, CircuitBreaker};
use crate::code::code_name;
use crate::metrics::MethodMetrics;
use crate::outcome::{AttemptInfo, AttemptOutcome, MAX_TRANSPARENT_RETRIES};

pub use crate::wire::PREVIOUS_ATTEMPTS_KEY;

/// Everything that governs one method's calls: overall timeout, retry policy and throttle.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use steadfast::retry::{CallPolicy, RetryPolicy, RetryThrottle};
///
/// let policy = CallPolicy::new("user-svc", "GetUser")
///     .timeout(Some(Duration::from_secs(1)))
///     .retry(Some(RetryPolicy::default()))
///     .throttle(Some(Arc::new(RetryThrottle::default())));
/// assert_eq!(policy.max_attempts(), 3);
/// ```
#[derive(Clone)]
pub struct CallPolicy {
    service: Arc<str>,
    method: Arc<str>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    hedging: Option<HedgingPolicy>,
    throttle: Option<Arc<RetryThrottle>>,
    breaker: Option<Arc<CircuitBreaker>>,
    metrics: Arc<std::sync::OnceLock<Arc<MethodMetrics>>>,
    grpc_service: Option<Arc<str>>,
    span: Arc<std::sync::OnceLock<crate::trace::ClientSpanLayer>>,
    transport_timer: bool,
    jitter: fn() -> f64,
}

impl std::fmt::Debug for CallPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPolicy")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("hedging", &self.hedging)
            .field("throttle", &self.throttle)
            .field(
                "breaker",
                &self.breaker.as_ref().map(|b| b.name().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl CallPolicy {
    /// A policy with no timeout and no retries, named for logs and errors.
    pub fn new(service: impl Into<Arc<str>>, method: impl Into<Arc<str>>) -> Self {
        CallPolicy {
            service: service.into(),
            method: method.into(),
            timeout: None,
            retry: None,
            hedging: None,
            throttle: None,
            breaker: None,
            metrics: Arc::default(),
            grpc_service: None,
            span: Arc::default(),
            transport_timer: false,
            jitter: fastrand::f64,
        }
    }
    /// Sets the overall deadline per call, all attempts and backoffs included.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets the retry policy; `None` makes one attempt per call.
    pub fn retry(mut self, retry: Option<RetryPolicy>) -> Self {
        self.retry = retry;
        self
    }
    /// Sets a hedging policy: calls are sent as several copies ([`HedgingPolicy`]) instead
    /// of being retried; it replaces the retry policy while set. Only for idempotent methods.
    pub fn hedging(mut self, hedging: Option<HedgingPolicy>) -> Self {
        self.hedging = hedging;
        self
    }
    /// The hedging policy, if any.
    pub fn get_hedging(&self) -> Option<HedgingPolicy> {
        self.hedging
    }
    /// Sets the retry throttle, normally shared by every client of the downstream service.
    pub fn throttle(mut self, throttle: Option<Arc<RetryThrottle>>) -> Self {
        self.throttle = throttle;
        self
    }
    /// Sets the circuit breaker, normally shared by every client of the downstream service.
    /// Each attempt asks it for admission and records its outcome.
    pub fn breaker(mut self, breaker: Option<Arc<CircuitBreaker>>) -> Self {
        self.breaker = breaker;
        self
    }
    /// The circuit breaker, if any.
    pub fn get_breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }
    /// Sets where this method's calls and retries are counted (resolved once per method by
    /// [`Metrics::client_method`](crate::metrics::Metrics::client_method)); without it, the
    /// process-wide [`Metrics`](crate::metrics::Metrics) are used, with the gRPC service
    /// name learned from the first call.
    pub fn metrics(mut self, metrics: Option<Arc<MethodMetrics>>) -> Self {
        self.metrics = Arc::new(metrics.map(std::sync::OnceLock::from).unwrap_or_default());
        self
    }
    /// This method's metric handles: the ones set, else the process-wide ones.
    pub fn method_metrics(&self) -> Arc<MethodMetrics> {
        self.metrics
            .get_or_init(|| {
                Arc::new(crate::metrics::Metrics::global().client_method_unresolved(&self.method))
            })
            .clone()
    }
    /// Sets the full gRPC service name of the method (`pkg.Service`), for spans; without
    /// it, the name is learned from the first call that reaches a steadfast
    /// [`Channel`](crate::client::Channel).
    pub fn grpc_service(mut self, name: Option<&str>) -> Self {
        self.grpc_service = name.map(Into::into);
        self.span = Arc::default();
        self
    }
    /// Tells the policy that the transport enforces each attempt's `grpc-timeout` (a tonic
    /// channel does), so the attempt-timeout layer starts no timer of its own.
    pub fn transport_timer(mut self, enforced: bool) -> Self {
        self.transport_timer = enforced;
        self
    }
    /// Whether the transport enforces each attempt's `grpc-timeout`.
    pub fn has_transport_timer(&self) -> bool {
        self.transport_timer
    }
    /// The client span layer of this method, made once.
    pub fn client_span_layer(&self) -> crate::trace::ClientSpanLayer {
        self.span
            .get_or_init(|| {
                crate::trace::ClientSpanLayer::new(
                    &self.service,
                    self.grpc_service.as_deref(),
                    &self.method,
                )
            })
            .clone()
    }
    /// Replaces the jitter source, a function returning uniform samples from `[0, 1)`.
    /// Tests use it to make backoff exact.
    pub fn jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }
    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }
    /// The service name, shared.
    pub fn service_name(&self) -> Arc<str> {
        self.service.clone()
    }
    /// The method name, shared.
    pub fn method_name(&self) -> Arc<str> {
        self.method.clone()
    }
    /// The per-attempt timeout of the retry policy, if any (none while hedging: a hedged
    /// copy runs until it answers, and later copies cover a slow one).
    pub fn per_attempt_timeout(&self) -> Option<Duration> {
        if self.hedging.is_some() {
            return None;
        }
        self.retry.and_then(|r| r.per_attempt_timeout())
    }
    /// The overall timeout.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// The retry policy.
    pub fn get_retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }
    /// Attempts per call: 1 without a retry policy.
    pub fn max_attempts(&self) -> u32 {
        self.retry.map_or(1, |r| r.max_attempts())
    }

    fn exhausted(&self, attempts: u32, last: Option<&Status>) -> Status {
        let last = last
            .map(|s| format!("; last error: {}: {}", code_name(s.code()), s.message()))
            .unwrap_or_default();
        Status::deadline_exceeded(format!(
            "{}/{}: deadline exhausted after {attempts} attempt(s){last}",
            self.service, self.method
        ))
    }
}

/// Retries calls to a typed unary gRPC service under a [`CallPolicy`].
///
/// `S` is any `tower::Service<tonic::Request<M>>` that answers `tonic::Response<R>` or a
/// [`Status`], for example a `tower::service_fn` over a tonic client method.
///
/// ```
/// use steadfast::retry::{CallPolicy, Retry, RetryPolicy};
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let counter = calls.clone();
/// let flaky = tower::service_fn(move |req: tonic::Request<u32>| {
///     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move {
///         if n == 0 { Err(tonic::Status::unavailable("warming up")) }
///         else { Ok(tonic::Response::new(req.into_inner() * 2)) }
///     }
/// });
/// let policy = CallPolicy::new("doubler", "Double").retry(Some(RetryPolicy::default()));
/// let mut svc = Retry::new(flaky, policy);
/// let reply = svc.ready().await.unwrap().call(tonic::Request::new(21)).await.unwrap();
/// assert_eq!(reply.into_inner(), 42);
/// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<CallPolicy>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: impl Into<Arc<CallPolicy>>) -> Self {
        Retry {
            inner,
            policy: policy.into(),
        }
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

/// The response future of [`Retry`].
pub type ResponseFuture<R> =
    Pin<Box<dyn Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static>>;

impl<S, M, R> tower_service::Service<tonic::Request<M>> for Retry<S>
where
    S: tower_service::Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    M: Clone + Send + 'static,
    R: Send + 'static,
{
    type Response = tonic::Response<R>;
    type Error = Status;
    type Future = ResponseFuture<R>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        // Readiness is awaited per attempt on a clone of the inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<M>) -> Self::Future {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        // A request stream is sent to one server at a time: hedging it would upload it
        // several times over.
        let hedging = policy
            .hedging
            .filter(|_| request.extensions().get::<ReplayCommit>().is_none());
        Box::pin(async move {
            match hedging {
                Some(hedging) => policy.hedged(inner, request, hedging).await,
                None => policy.attempts(inner, request).await,
            }
        })
    }
}

impl CallPolicy {
    /// The A6 loop: sends attempts through `inner` until one succeeds or the policy says
    /// stop. Every decision reads the attempt's one classification
    /// ([`AttemptInfo::outcome_of`]).
    async fn attempts<S, M, R>(
        &self,
        mut inner: S,
        request: tonic::Request<M>,
    ) -> Result<tonic::Response<R>, Status>
    where
        S: tower_service::Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>,
        M: Clone,
    {
        let (metadata, extensions, message) = request.into_parts();
        let ctx = extensions.get::<Context>();
        let deadline = ctx.and_then(Context::deadline);
        let trace_id = ctx.and_then(Context::trace).map(|t| t.trace_id());
        let past = |now: Instant| deadline.is_some_and(|d| now >= d);
        // A request stream that outgrew its replay buffer cannot be sent again.
        let replay = extensions.get::<ReplayCommit>().cloned();
        let replayable = || replay.as_ref().is_none_or(|r| !r.is_committed());
        let mut avoid: Option<Arc<str>> = None;
        let mut backoff_n = 0u32;
        let mut attempts = 0u32;
        let mut transparent = 0u32;
        loop {
            attempts += 1;
            // The attempt's one clock read, shared with the layers below through its info.
            // (Not the call's start: a layer above may have made the call wait since.)
            let now = Instant::now();
            if past(now) {
                return Err(self.exhausted(attempts - 1, None));
            }
            let mut req =
                tonic::Request::from_parts(metadata.clone(), extensions.clone(), message.clone());
            if attempts > 1 {
                req.metadata_mut()
                    .insert(&*crate::wire::PREVIOUS_ATTEMPTS, (attempts - 1).into());
            }
            // The attempt starts when the inner service is ready: the read above if it was
            // ready at once, else a new one (a layer in between may make it wait, and the
            // wait is not time the attempt has).
            let mut waited = false;
            let ready = std::future::poll_fn(|cx| {
                let r = inner.poll_ready(cx);
                waited |= r.is_pending();
                r
            })
            .await;
            let started = if waited { Instant::now() } else { now };
            let info = AttemptInfo::started_at(avoid.take(), false, started);
            req.extensions_mut().insert(info.clone());
            let result = match ready {
                Ok(()) => inner.call(req).await,
                Err(status) => Err(status),
            };
            let outcome = info.outcome_of(&result);
            let status = match result {
                Ok(response) => {
                    if let Some(throttle) = &self.throttle {
                        throttle.on_success();
                    }
                    // The response started: the request stream is never sent again, and
                    // its buffer goes.
                    if let Some(replay) = &replay {
                        replay.commit();
                    }
                    return Ok(response);
                }
                Err(status) => status,
            };
            match outcome {
                // Relayed from a deeper hop: not this downstream's failure, and another try
                // here cannot fix it.
                AttemptOutcome::PassedThrough(_) => return Err(status),
                // Never reached a server: send it again at once, elsewhere, uncounted.
                AttemptOutcome::NotSent
                    if transparent < MAX_TRANSPARENT_RETRIES && replayable() =>
                {
                    transparent += 1;
                    attempts -= 1;
                    avoid = info.endpoint();
                    tracing::debug!(
                        service = %self.service, method = %self.method,
                        "connection failed before the request was sent; sending it elsewhere"
                    );
                    continue;
                }
                _ => {}
            }
            if breaker::is_open_rejection(&status) {
                return Err(status); // a breaker rejected it: fail fast, never retried
            }
            if outcome == AttemptOutcome::Timeout && past(Instant::now()) {
                return Err(self.exhausted(attempts, Some(&status)));
            }
            let Some(retry) = self.retry else {
                return Err(status);
            };
            avoid = info.endpoint();
            if info.is_committed() || !replayable() {
                return Err(status);
            }
            let pushback = Pushback::from_metadata(status.metadata());
            if pushback == Pushback::DoNotRetry {
                if let Some(throttle) = &self.throttle {
                    throttle.on_failure();
                }
                return Err(status);
            }
            let retryable = outcome == AttemptOutcome::Timeout
                || retry.retryable_codes().contains(status.code());
            if !retryable {
                return Err(status);
            }
            if let Some(throttle) = &self.throttle
                && !throttle.on_failure()
            {
                tracing::debug!(
                    service = %self.service, method = %self.method,
                    "retry throttled: the downstream is failing too often"
                );
                return Err(status);
            }
            if attempts >= retry.max_attempts() {
                return Err(status);
            }
            let delay = match pushback {
                Pushback::RetryAfter(delay) => {
                    backoff_n = 0;
                    delay
                }
                _ => {
                    backoff_n += 1;
                    retry.jittered_backoff(backoff_n, (self.jitter)())
                }
            };
            if let Some(deadline) = deadline
                && Instant::now()
                    .checked_add(delay)
                    .is_none_or(|at| at >= deadline)
            {
                return Err(self.exhausted(attempts, Some(&status)));
            }
            tracing::debug!(
                service = %self.service, method = %self.method, attempt = attempts,
                code = code_name(status.code()), delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            self.method_metrics().retry(trace_id);
            tokio::time::sleep(delay).await;
            // The attempt given up may have read its request stream past the buffer
            // meanwhile.
            if !replayable() {
                return Err(status);
            }
        }
    }
}
