//! Circuit breakers per downstream service, built on `failsafe`'s backoff.
//!
//! Every client of one service shares one [`CircuitBreaker`] (through a [`BreakerRegistry`]):
//! all calls to `order-svc`, whatever the method, trip and recover together.
//!
//! # Trip rule and recovery
//! Within a rolling window (10 s), the breaker opens when `failures >= min_failures` (4) and
//! `failures / requests > failure_ratio` (0.6). It stays open for `open_timeout` (30 s;
//! 1 s to 10 min), growing with failsafe's exponential backoff on repeated trips when
//! `max_open_timeout` is set. Then at most `half_open_max_calls` (10) probes run at once;
//! more callers are rejected at once. `half_open_successes` (3) successful probes close it;
//! any failed probe reopens it with a fresh timeout.
//!
//! # What counts as a failure
//! | counts as | codes |
//! | --- | --- |
//! | failure | Unavailable, DeadlineExceeded (our per-attempt timeouts included), Internal, Unknown, ResourceExhausted, DataLoss |
//! | success (the downstream answered) | Ok, InvalidArgument, NotFound, AlreadyExists, PermissionDenied, Unauthenticated, FailedPrecondition, OutOfRange, Unimplemented, Aborted, Cancelled |
//! | nothing | a call the caller cancels (its future dropped); a status relayed from a deeper hop ([`crate::outcome::PASSED_THROUGH_KEY`]); an attempt that never reached a server |
//!
//! A result counts only in the period that admitted it: a call admitted before a trip (or
//! before the last close) that finishes later changes nothing. An open period ends by timer
//! for breakers made by a [`BreakerRegistry`] or [`CircuitBreaker::shared`], so the state and
//! its gauge read `half_open` with no traffic.
//!
//! The table is configurable per service ([`BreakerConfigBuilder::failure_codes`]).
//!
//! # In the client stack
//! Retry is outside the breaker, so each attempt is recorded; the per-attempt timeout is
//! inside, so timeouts count. A rejected call fails fast with `UNAVAILABLE`, a message naming
//! the service, and the metadata key [`OPEN_REJECTION_KEY`]; [`is_open_rejection`] detects it
//! and the retry logic never retries it.
//!
//! # Why not failsafe's `StateMachine` as it is
//! failsafe supplies the backoff of the open period. Its state machine is replaced because it
//! (1) does not limit half-open probes, (2) records nothing when a call's future is dropped,
//! so a cancelled probe can wedge recovery, (3) has no read-only state getter, (4) passes no
//! name to its hooks, and (5) takes a mutex on every admission. Here admission in the closed
//! state is one atomic load and a mutex is taken only on transitions.

mod config;
mod http;
mod layer;
mod registry;
mod state;
mod window;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::outcome::{AttemptInfo, AttemptOutcome, classify};

pub use self::config::{BreakerConfig, BreakerConfigBuilder, DEFAULT_FAILURE_CODES};
pub use self::http::{HttpBreaker, HttpBreakerFuture, HttpBreakerLayer};
pub use self::layer::BreakerLayer;
pub use self::registry::BreakerRegistry;
pub(crate) use self::state::OwnedPermit;
pub use self::state::{
    BreakerEvent, BreakerObserver, BreakerState, CircuitBreaker, Outcome, Permit, Rejected,
    Transition, WindowCounts,
};

/// The metadata key that marks a call rejected by an open breaker.
pub const OPEN_REJECTION_KEY: &str = "steadfast-breaker-open";

/// Whether `status` is a rejection by an open (or saturated half-open) breaker: such calls
/// never reached the downstream and must not be retried.
///
/// ```
/// use steadfast::breaker::{is_open_rejection, BreakerConfig, CircuitBreaker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let breaker = CircuitBreaker::new("order-svc", BreakerConfig::default());
/// for _ in 0..4 { breaker.try_acquire().unwrap().failure(); }
/// let rejected = breaker.try_acquire().unwrap_err();
/// let status = steadfast::breaker::rejection_status("order-svc", &rejected);
/// assert!(is_open_rejection(&status));
/// assert!(status.message().contains("order-svc"));
/// assert!(!is_open_rejection(&tonic::Status::unavailable("down")));
/// # }
/// ```
pub fn is_open_rejection(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.metadata().contains_key(OPEN_REJECTION_KEY)
}

/// The `UNAVAILABLE` status returned for a call the breaker of `service` rejected.
pub fn rejection_status(service: &str, rejected: &Rejected) -> Status {
    let message = match (rejected.state, rejected.retry_after) {
        (BreakerState::Open, Some(after)) => format!(
            "circuit breaker for `{service}` is open; failing fast for another {} ms",
            after.as_millis()
        ),
        (BreakerState::HalfOpen, _) => format!(
            "circuit breaker for `{service}` is half-open and all probe slots are taken; failing fast"
        ),
        _ => format!("circuit breaker for `{service}` is open; failing fast"),
    };
    let mut status = Status::unavailable(message);
    status
        .metadata_mut()
        .insert(OPEN_REJECTION_KEY, MetadataValue::from_static("1"));
    status
}

/// What one attempt's outcome means to the breaker of `config`: `None` records nothing
/// (the request never reached a server, or the failure was passed through from a deeper
/// hop). See the table in [`crate::outcome`].
///
/// ```
/// use steadfast::breaker::{effect, BreakerConfig, Outcome};
/// use steadfast::outcome::AttemptOutcome;
/// use tonic::Code;
///
/// let c = BreakerConfig::default();
/// assert_eq!(effect(&c, AttemptOutcome::Timeout), Some(Outcome::Failure));
/// assert_eq!(effect(&c, AttemptOutcome::Remote(Code::NotFound)), Some(Outcome::Success));
/// assert_eq!(effect(&c, AttemptOutcome::PassedThrough(Code::Unavailable)), None);
/// assert_eq!(effect(&c, AttemptOutcome::NotSent), None);
/// ```
pub fn effect(config: &BreakerConfig, outcome: AttemptOutcome) -> Option<Outcome> {
    match outcome {
        AttemptOutcome::Success => Some(Outcome::Success),
        AttemptOutcome::NotSent | AttemptOutcome::PassedThrough(_) => None,
        AttemptOutcome::Transport | AttemptOutcome::Timeout => Some(Outcome::Failure),
        AttemptOutcome::Remote(code) if config.is_failure(code) => Some(Outcome::Failure),
        AttemptOutcome::Remote(_) => Some(Outcome::Success),
    }
}

/// Guards a typed gRPC service with a [`CircuitBreaker`].
///
/// `S` is any `tower::Service<tonic::Request<M>>` answering `tonic::Response<R>` or a
/// [`Status`]. Put it inside [`Retry`](crate::retry::Retry) so each attempt is recorded.
///
/// ```
/// use std::sync::Arc;
/// use steadfast::breaker::{Breaker, BreakerConfig, CircuitBreaker, is_open_rejection};
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let down = tower::service_fn(|_: tonic::Request<()>| async {
///     Err::<tonic::Response<()>, _>(tonic::Status::unavailable("down"))
/// });
/// let breaker = Arc::new(CircuitBreaker::new("user-svc", BreakerConfig::default()));
/// let mut svc = Breaker::new(down, breaker);
/// for _ in 0..4 {
///     let _ = svc.ready().await.unwrap().call(tonic::Request::new(())).await;
/// }
/// let err = svc.ready().await.unwrap().call(tonic::Request::new(())).await.unwrap_err();
/// assert!(is_open_rejection(&err));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S> Breaker<S> {
    /// Wraps `inner` with `breaker`.
    pub fn new(inner: S, breaker: Arc<CircuitBreaker>) -> Self {
        Breaker { inner, breaker }
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
    /// The breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }
}

impl<S, M, R> tower_service::Service<tonic::Request<M>> for Breaker<S>
where
    S: tower_service::Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>,
{
    type Response = tonic::Response<R>;
    type Error = Status;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::Request<M>) -> Self::Future {
        let permit = match OwnedPermit::acquire(&self.breaker) {
            Ok(permit) => permit,
            Err(rejected) => {
                self.breaker.rejected();
                let status = rejection_status(self.breaker.name(), &rejected);
                return ResponseFuture {
                    state: State::Rejected {
                        status: Some(status),
                    },
                };
            }
        };
        let info = request.extensions().get::<AttemptInfo>().cloned();
        if let Some(info) = &info {
            // The balancer sends probes to endpoints in good standing.
            info.set_probe(permit.is_probe());
        }
        let streaming = request
            .extensions()
            .get::<crate::deadline::StreamingResponse>()
            .is_some();
        ResponseFuture {
            state: State::Called {
                fut: self.inner.call(request),
                permit: Some(permit),
                info,
                streaming,
            },
        }
    }
}

pin_project! {
    /// The response future of [`Breaker`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin] fut: F,
            permit: Option<OwnedPermit>,
            info: Option<AttemptInfo>,
            // The response is a stream: its outcome is known at its end.
            streaming: bool,
        },
        Rejected { status: Option<Status> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, R> Future for ResponseFuture<F>
where
    F: Future<Output = Result<tonic::Response<R>, Status>>,
{
    type Output = Result<tonic::Response<R>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { status } => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::unavailable("circuit breaker open")))),
            StateProj::Called {
                fut,
                permit,
                info,
                streaming,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                // A stream that started is recorded when it ends, by the transport; a
                // half-open probe is recorded at its start, so that a long healthy stream
                // does not hold a probe slot.
                if let (Ok(_), true, Some(info)) = (&result, *streaming, info.as_ref())
                    && permit.as_ref().is_some_and(|p| !p.is_probe())
                    && let Some(permit) = permit.take()
                {
                    info.on_stream_end(Box::new(move |outcome| {
                        match effect(permit.config(), outcome) {
                            Some(o) => permit.record(o),
                            None => drop(permit),
                        }
                    }));
                    return Poll::Ready(result);
                }
                if let Some(permit) = permit.take() {
                    // The attempt's one classification, when a layer inside made it.
                    let outcome = match info {
                        Some(info) => info.outcome_of(&result),
                        None => match &result {
                            Ok(_) => AttemptOutcome::Success,
                            Err(status) => classify(status, false),
                        },
                    };
                    match effect(permit.config(), outcome) {
                        Some(o) => permit.record(o),
                        None => drop(permit), // nothing to record; frees a probe slot
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}
