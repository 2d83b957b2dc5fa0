//! Client-side deadlines: the overall deadline of a call, and the bound of each attempt.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::Context;
use crate::outcome::{AttemptInfo, AttemptOutcome};

/// Sets the overall deadline of each call: `min(start + timeout, caller's deadline)`, where the
/// caller's deadline is the [`Context`] the call was made in (a handler's incoming
/// `grpc-timeout`), and `start` is when the call began: the instant the
/// [`CallMetricsLayer`](crate::metrics::CallMetricsLayer) outside read (so a layer in between
/// that makes the call wait spends the call's time, as a grpc-go interceptor does), else now. It is written into the call's [`Context`] (a request extension) for the
/// layers inside: the retry layer stops when it passes, and [`AttemptTimeout`] bounds every
/// attempt by it. No timer of its own: the attempt timer enforces it.
///
/// ```
/// use std::time::Duration;
/// use steadfast::deadline::CallDeadlineLayer;
/// use steadfast::Context;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(CallDeadlineLayer::new(Some(Duration::from_secs(1))))
///     .service_fn(|req: tonic::Request<()>| async move {
///         let left = req.extensions().get::<Context>().unwrap().remaining().unwrap();
///         Ok::<_, tonic::Status>(tonic::Response::new(left))
///     });
/// let left = svc.oneshot(tonic::Request::new(())).await.unwrap().into_inner();
/// assert!(left <= Duration::from_secs(1));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CallDeadlineLayer {
    timeout: Option<Duration>,
}

impl CallDeadlineLayer {
    /// Calls get at most `timeout` (or only the caller's deadline, for `None`).
    pub fn new(timeout: Option<Duration>) -> Self {
        CallDeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for CallDeadlineLayer {
    type Service = CallDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`CallDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct CallDeadline<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> CallDeadline<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        CallDeadline { inner, timeout }
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

impl<S, M> Service<tonic::Request<M>> for CallDeadline<S>
where
    S: Service<tonic::Request<M>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::Request<M>) -> S::Future {
        if let Some(timeout) = self.timeout {
            Context::of_call(req.extensions_mut()).set_timeout(timeout);
        }
        self.inner.call(req)
    }
}

/// Bounds each attempt by `min(per_attempt_timeout, what is left of the call's deadline)`:
/// sends the bound as `grpc-timeout` and races the attempt against one timer.
///
/// It also tells the other layers whether *our* timer fired (or the server reported that the
/// `grpc-timeout` we sent expired), through the attempt's
/// [`AttemptInfo`](crate::outcome::AttemptInfo), and classifies the attempt once: every
/// layer outside reads that outcome. A local failure comes out as `UNAVAILABLE` (connection)
/// or `DEADLINE_EXCEEDED` (timeout), whatever tonic reported.
///
/// ```
/// use std::time::Duration;
/// use steadfast::deadline::AttemptTimeoutLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let slow = ServiceBuilder::new()
///     .layer(AttemptTimeoutLayer::new(Some(Duration::from_millis(10))))
///     .service_fn(|_: tonic::Request<()>| async {
///         tokio::time::sleep(Duration::from_secs(5)).await;
///         Ok::<_, tonic::Status>(tonic::Response::new(()))
///     });
/// let err = slow.oneshot(tonic::Request::new(())).await.unwrap_err();
/// assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AttemptTimeoutLayer {
    per_attempt: Option<Duration>,
    transport_timer: bool,
}

impl AttemptTimeoutLayer {
    /// Attempts get at most `per_attempt` (and never more than the call has left).
    pub fn new(per_attempt: Option<Duration>) -> Self {
        AttemptTimeoutLayer {
            per_attempt,
            transport_timer: false,
        }
    }

    /// Tells the layer that the transport below enforces the `grpc-timeout` it sends (a
    /// tonic `Channel` does: its timer ends the request with `TimeoutExpired`), so the
    /// layer starts no timer of its own and reads the transport's: one timer per attempt
    /// instead of two.
    pub fn transport_timer(mut self, enforced: bool) -> Self {
        self.transport_timer = enforced;
        self
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout {
            inner,
            per_attempt: self.per_attempt,
            transport_timer: self.transport_timer,
        }
    }
}

/// The service of [`AttemptTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct AttemptTimeout<S> {
    inner: S,
    per_attempt: Option<Duration>,
    transport_timer: bool,
}

impl<S> AttemptTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, per_attempt: Option<Duration>) -> Self {
        AttemptTimeout {
            inner,
            per_attempt,
            transport_timer: false,
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

impl<S, M, R> Service<tonic::Request<M>> for AttemptTimeout<S>
where
    S: Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>,
{
    type Response = tonic::Response<R>;
    type Error = Status;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::Request<M>) -> Self::Future {
        let info = match req.extensions().get::<AttemptInfo>() {
            Some(info) => info.clone(),
            None => {
                let info = AttemptInfo::new(None, false);
                req.extensions_mut().insert(info.clone());
                info
            }
        };
        // The attempt's start as the layer that made it read the clock; else read it here.
        let now = info.started().unwrap_or_else(Instant::now);
        let remaining = req
            .extensions()
            .get::<Context>()
            .and_then(Context::deadline)
            .map(|d| d.saturating_duration_since(now));
        let bound = match (self.per_attempt, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        if let Some(bound) = bound {
            // Written without a `format!`, rounded up, never indexed (a new value on every
            // request; see `trace::inject_metadata`).
            req.metadata_mut().insert(
                &*crate::wire::GRPC_TIMEOUT_KEY,
                crate::wire::grpc_timeout_metadata(bound),
            );
        }
        // With the transport's timer, only the instant is kept: to tell whether a
        // DEADLINE_EXCEEDED or the transport's `TimeoutExpired` was our bound running out.
        let expires = bound.and_then(|b| now.checked_add(b));
        AttemptFuture {
            inner: self.inner.call(req),
            // Fixed to the attempt's end as computed from its start.
            sleep: expires
                .filter(|_| !self.transport_timer)
                .map(tokio::time::sleep_until),
            expires,
            bound,
            info,
        }
    }
}

pin_project! {
    /// The response future of [`AttemptTimeout`].
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        expires: Option<Instant>,
        bound: Option<Duration>,
        info: AttemptInfo,
    }
}

impl<F> std::fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptFuture")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl<F, R> Future for AttemptFuture<F>
where
    F: Future<Output = Result<tonic::Response<R>, Status>>,
{
    type Output = Result<tonic::Response<R>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let bound = this.bound.unwrap_or_default();
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => {
                if let (Err(status), Some(expires)) = (&result, *this.expires)
                    && (expired_our_timeout(status, bound, expires) || transport_timed_out(status))
                {
                    this.info.set_timed_out();
                }
                result
            }
            Poll::Pending => {
                let Some(sleep) = this.sleep.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                ready!(sleep.poll(cx));
                this.info.set_timed_out();
                Err(Status::deadline_exceeded(format!(
                    "attempt timed out after {bound:?}"
                )))
            }
        };
        let outcome = this.info.outcome_of(&result);
        Poll::Ready(result.map_err(|status| match outcome {
            AttemptOutcome::NotSent | AttemptOutcome::Transport
                if status.code() != tonic::Code::Unavailable =>
            {
                Status::unavailable(format!("connection failed: {}", status.message()))
            }
            AttemptOutcome::Timeout if status.code() != tonic::Code::DeadlineExceeded => {
                Status::deadline_exceeded(format!("attempt timed out after {bound:?}"))
            }
            _ => status,
        }))
    }
}

/// Whether the transport's own `grpc-timeout` timer ended the request (tonic reports it as
/// `TimeoutExpired`).
fn transport_timed_out(status: &Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether a DEADLINE_EXCEEDED from the server reports that the `grpc-timeout` we sent
/// (`bound`, ending at `deadline`) expired: the server marks it, or it arrived when the bound
/// had all but run out. Any other DEADLINE_EXCEEDED is the server's own.
fn expired_our_timeout(status: &Status, bound: Duration, deadline: Instant) -> bool {
    if status.code() != tonic::Code::DeadlineExceeded {
        return false;
    }
    if status.metadata().contains_key(super::DEADLINE_EXPIRED_KEY) {
        return true;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    left <= bound / 10
}
