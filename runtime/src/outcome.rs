//! How one attempt ended, classified once; retry, breaker, outlier detection and metrics all
//! read this classification instead of re-deciding from the raw status.
//!
//! # Failure origin
//! Every attempt ends in one [`AttemptOutcome`], classified by [`classify`]:
//!
//! | outcome | what happened | retry | breaker | outlier detection (endpoint) |
//! | --- | --- | --- | --- | --- |
//! | `Success` | the downstream answered OK | done | success | success |
//! | `NotSent` (local) | the request never reached a server: connection refused, connect timeout, no connection | *transparent*: sent again at once to another endpoint, not counted as an attempt (at most [`MAX_TRANSPARENT_RETRIES`] per call, then it counts as `Transport`) | nothing | local-origin failure: ejects at once (`consecutive_local_origin_failure`) |
//! | `Transport` (local) | the connection failed under the call (reset, closed, HTTP/2 error) | as `UNAVAILABLE` | failure | local-origin failure |
//! | `Timeout` (local) | our own per-attempt timeout, or the `grpc-timeout` we sent expired at the server | retried (the attempt, not the call, ran out of time) | failure | failure (counts in the success rate; never an immediate ejection) |
//! | `Remote(code)` | a status the downstream itself produced | if `code` is retryable | per the breaker's failure codes | failure if `code` is in [`ENDPOINT_FAILURE_CODES`], else success |
//! | `PassedThrough(code)` | a status the downstream relayed from a deeper hop | never | nothing | nothing |
//!
//! # Passed-through statuses
//! Every error a resilient client returns to its caller carries the metadata key
//! [`PASSED_THROUGH_KEY`], whose value names the service where the failure began. A handler
//! that returns that status (`?`, or `return Err(status)`) sends the key on in its trailers,
//! so the next caller up sees that the failure came from further down: its breaker, its
//! outlier detection and its retries leave the healthy relaying service alone. The key is
//! kept as it is across further hops, so it always names the first failing service. A
//! breaker's fail-fast rejection ([`crate::breaker::OPEN_REJECTION_KEY`]) and an exhausted
//! overall deadline ("deadline exceeded upstream") are errors returned by a client, so they
//! carry the key too.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::code::CodeSet;

/// The metadata key that marks a status relayed from a deeper hop; its value is the service
/// where the failure began.
pub const PASSED_THROUGH_KEY: &str = "steadfast-passed-through";

/// How many times one call is sent again, at once and uncounted, after attempts that never
/// reached a server.
pub const MAX_TRANSPARENT_RETRIES: u32 = 3;

/// The remote codes that count against an endpoint in outlier detection: the same codes a
/// breaker counts as failures by default (Unavailable, DeadlineExceeded, Internal, Unknown,
/// ResourceExhausted, DataLoss). Any other code means the endpoint answered.
pub const ENDPOINT_FAILURE_CODES: CodeSet =
    CodeSet::from_spec(steadfast_spec::CodeSet::DEFAULT_FAILURES);

/// Where a failure began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// In this process or on the wire: no connection, a broken connection, our own timeout.
    Local,
    /// In the downstream itself.
    Remote,
    /// Further down: the downstream relayed another service's failure.
    PassedThrough,
}

/// How one attempt ended. See the [module docs](self) for what each one does.
///
/// ```
/// use steadfast::outcome::{classify, AttemptOutcome, Origin};
/// use tonic::{Code, Status};
///
/// assert_eq!(classify(&Status::not_found("no user"), false), AttemptOutcome::Remote(Code::NotFound));
/// let relayed = steadfast::outcome::mark_passed_through(Status::unavailable("down"), "user-svc");
/// assert_eq!(classify(&relayed, false).origin(), Some(Origin::PassedThrough));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The downstream answered OK.
    Success,
    /// The request never reached a server.
    NotSent,
    /// The connection failed under the call.
    Transport,
    /// The attempt ran out of its own time.
    Timeout,
    /// A status the downstream produced.
    Remote(Code),
    /// A status the downstream relayed from a deeper hop.
    PassedThrough(Code),
}

impl AttemptOutcome {
    /// As one non-zero number (kind in the high byte, gRPC code in the low), so that an
    /// attempt's outcome is kept in an atomic.
    fn encode(self) -> u16 {
        let (kind, code) = match self {
            AttemptOutcome::Success => (1, 0),
            AttemptOutcome::NotSent => (2, 0),
            AttemptOutcome::Transport => (3, 0),
            AttemptOutcome::Timeout => (4, 0),
            AttemptOutcome::Remote(code) => (5, code as i32),
            AttemptOutcome::PassedThrough(code) => (6, code as i32),
        };
        (kind << 8) | (code as u16 & 0xff)
    }

    /// The outcome [`encode`](Self::encode) gave `n`; `None` for 0 (not classified yet).
    fn decode(n: u16) -> Option<AttemptOutcome> {
        let code = Code::from_i32(i32::from(n & 0xff));
        Some(match n >> 8 {
            1 => AttemptOutcome::Success,
            2 => AttemptOutcome::NotSent,
            3 => AttemptOutcome::Transport,
            4 => AttemptOutcome::Timeout,
            5 => AttemptOutcome::Remote(code),
            6 => AttemptOutcome::PassedThrough(code),
            _ => return None,
        })
    }

    /// Where the failure began (`None` for a success).
    pub fn origin(self) -> Option<Origin> {
        match self {
            AttemptOutcome::Success => None,
            AttemptOutcome::NotSent | AttemptOutcome::Transport | AttemptOutcome::Timeout => {
                Some(Origin::Local)
            }
            AttemptOutcome::Remote(_) => Some(Origin::Remote),
            AttemptOutcome::PassedThrough(_) => Some(Origin::PassedThrough),
        }
    }

    /// The gRPC code the caller sees for this outcome (local failures are `UNAVAILABLE`, or
    /// `DEADLINE_EXCEEDED` for a timeout).
    pub fn code(self) -> Code {
        match self {
            AttemptOutcome::Success => Code::Ok,
            AttemptOutcome::NotSent | AttemptOutcome::Transport => Code::Unavailable,
            AttemptOutcome::Timeout => Code::DeadlineExceeded,
            AttemptOutcome::Remote(c) | AttemptOutcome::PassedThrough(c) => c,
        }
    }

    /// What this outcome says about the endpoint that served it, for outlier detection.
    pub fn endpoint_effect(self) -> EndpointEffect {
        match self {
            AttemptOutcome::Success => EndpointEffect::Success,
            AttemptOutcome::NotSent | AttemptOutcome::Transport => EndpointEffect::LocalFailure,
            AttemptOutcome::Timeout => EndpointEffect::Failure,
            AttemptOutcome::Remote(c) if ENDPOINT_FAILURE_CODES.contains(c) => {
                EndpointEffect::Failure
            }
            AttemptOutcome::Remote(_) => EndpointEffect::Success,
            AttemptOutcome::PassedThrough(_) => EndpointEffect::Ignore,
        }
    }
}

/// What one attempt tells outlier detection about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointEffect {
    /// It answered.
    Success,
    /// It failed (counts toward the success rate and the failure percentage).
    Failure,
    /// The connection to it failed (also counts consecutive local-origin failures).
    LocalFailure,
    /// Nothing: the failure was not its own.
    Ignore,
}

/// Classifies a failed attempt's status. `timed_out` says whether our own per-attempt timer
/// fired. Passed-through wins over everything else, then local failures, then the remote
/// code.
pub fn classify(status: &Status, timed_out: bool) -> AttemptOutcome {
    if status.metadata().contains_key(PASSED_THROUGH_KEY) {
        return AttemptOutcome::PassedThrough(status.code());
    }
    if timed_out {
        return AttemptOutcome::Timeout;
    }
    let mut transport = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return AttemptOutcome::NotSent;
        }
        if e.is::<tonic::TimeoutExpired>() {
            return AttemptOutcome::Timeout;
        }
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            transport = true;
        }
        cur = e.source();
    }
    if transport {
        return AttemptOutcome::Transport;
    }
    if status.code() == Code::DeadlineExceeded
        && status
            .metadata()
            .contains_key(crate::wire::DEADLINE_EXPIRED_KEY)
    {
        return AttemptOutcome::Timeout;
    }
    AttemptOutcome::Remote(status.code())
}

/// Classifies an attempt from what the HTTP layer sees: a transport error (no connection, a
/// broken one, tonic's own `grpc-timeout` timer), or a trailers-only status. Used below the
/// typed stack (the channel's own reports) and by [`crate::retry::HttpRetryLayer`].
pub(crate) fn classify_http(
    result: Result<&http::Response<tonic::body::Body>, &(dyn std::error::Error + 'static)>,
) -> AttemptOutcome {
    match result {
        Err(e) => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
            while let Some(err) = cur {
                if err.is::<tonic::ConnectError>() {
                    return AttemptOutcome::NotSent;
                }
                if err.is::<tonic::TimeoutExpired>() {
                    return AttemptOutcome::Timeout;
                }
                cur = err.source();
            }
            AttemptOutcome::Transport
        }
        Ok(response) => classify_status(response.headers()).unwrap_or_else(|| {
            match http_status_code(response.status()) {
                // Headers without a status: the status comes in the trailers, after a
                // response.
                None => AttemptOutcome::Success,
                // Not a gRPC answer at all (a proxy's error page).
                Some(code) => AttemptOutcome::Remote(code),
            }
        }),
    }
}

/// The gRPC code of an HTTP status that is not 200 on a response without `grpc-status`, as
/// gRPC maps them (a proxy or load balancer answered, not the server): `None` for 200.
pub(crate) fn http_status_code(status: http::StatusCode) -> Option<Code> {
    Some(match status.as_u16() {
        200 => return None,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    })
}

/// The outcome the `grpc-status` of headers or trailers tells, if they carry one.
pub(crate) fn classify_status(headers: &http::HeaderMap) -> Option<AttemptOutcome> {
    let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    Some(if code == tonic::Code::Ok {
        AttemptOutcome::Success
    } else if headers.contains_key(PASSED_THROUGH_KEY) {
        AttemptOutcome::PassedThrough(code)
    } else {
        AttemptOutcome::Remote(code)
    })
}

/// Marks `status` as relayed from `service` (kept as it is when already marked, so the
/// value names the first failing service).
///
/// ```
/// use steadfast::outcome::{mark_passed_through, PASSED_THROUGH_KEY};
/// let s = mark_passed_through(tonic::Status::unavailable("down"), "user-svc");
/// let s = mark_passed_through(s, "order-svc");
/// assert_eq!(s.metadata().get(PASSED_THROUGH_KEY).unwrap(), "user-svc");
/// ```
pub fn mark_passed_through(mut status: Status, service: &str) -> Status {
    if !status.metadata().contains_key(PASSED_THROUGH_KEY) {
        let value = MetadataValue::try_from(service)
            .unwrap_or_else(|_| MetadataValue::from_static("unknown"));
        status.metadata_mut().insert(PASSED_THROUGH_KEY, value);
    }
    status
}

type Reporter = Box<dyn Fn(AttemptOutcome) + Send + Sync>;

/// What the layers of one attempt tell each other, carried as a request extension: the
/// caller (retry) sets whether this is a breaker probe and which endpoint to avoid; the
/// balancer records which endpoint it chose and how to report the outcome to it; the
/// transport marks the attempt committed once response headers arrive.
///
/// ```
/// use steadfast::outcome::{AttemptInfo, AttemptOutcome};
/// let info = AttemptInfo::new(None, false);
/// info.set_endpoint("u1".into(), Box::new(|o| assert_eq!(o, AttemptOutcome::Success)));
/// assert_eq!(info.endpoint().as_deref(), Some("u1"));
/// info.report(AttemptOutcome::Success);
/// ```
#[derive(Clone, Default)]
pub struct AttemptInfo(Arc<Inner>);

#[derive(Default)]
struct Inner {
    avoid: Option<Arc<str>>,
    probe: AtomicBool,
    timed_out: AtomicBool,
    /// The outcome, once classified ([`AttemptOutcome::encode`]; 0 until then).
    outcome: AtomicU16,
    committed: AtomicBool,
    endpoint: Mutex<Option<Arc<str>>>,
    address: OnceLock<Arc<str>>,
    reporter: OnceLock<Reporter>,
    reported: AtomicBool,
    /// For a streaming response: what to run with the stream's final outcome.
    stream_end: std::sync::Mutex<Option<StreamEnd>>,
    /// When the attempt started, as read by the layer that made it (one clock read per
    /// attempt, shared by the layers below).
    started: Option<tokio::time::Instant>,
}

/// Told a response stream's final outcome (see [`AttemptInfo::on_stream_end`]).
pub type StreamEnd = Box<dyn FnOnce(AttemptOutcome) + Send>;

impl std::fmt::Debug for AttemptInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptInfo")
            .field("avoid", &self.0.avoid)
            .field("probe", &self.is_probe())
            .field("outcome", &self.outcome())
            .field("committed", &self.is_committed())
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

impl AttemptInfo {
    /// Info for one attempt that should avoid the endpoint `avoid` when another exists, and
    /// that is (or is not) a breaker's half-open probe.
    pub fn new(avoid: Option<Arc<str>>, probe: bool) -> Self {
        AttemptInfo(Arc::new(Inner {
            avoid,
            probe: AtomicBool::new(probe),
            ..Inner::default()
        }))
    }

    /// [`new`](Self::new), for an attempt that started at `at`, as read by the layer that
    /// makes it, so that the layers below need no clock read of their own. Read it right
    /// before the inner service's `call` (after it is ready): the attempt's time is counted
    /// from it.
    ///
    /// ```
    /// use steadfast::outcome::AttemptInfo;
    /// let now = tokio::time::Instant::now();
    /// assert_eq!(AttemptInfo::started_at(None, false, now).started(), Some(now));
    /// assert_eq!(AttemptInfo::new(None, false).started(), None);
    /// ```
    pub fn started_at(avoid: Option<Arc<str>>, probe: bool, at: tokio::time::Instant) -> Self {
        AttemptInfo(Arc::new(Inner {
            avoid,
            probe: AtomicBool::new(probe),
            started: Some(at),
            ..Inner::default()
        }))
    }

    /// When the attempt started, if the layer that made it said.
    pub fn started(&self) -> Option<tokio::time::Instant> {
        self.0.started
    }

    /// Runs `f` with the final outcome of this attempt's response stream, when the stream
    /// ends (its trailers, an error, or the deadline); never if the caller drops the stream
    /// before its end. A breaker records a streaming call this way, at its end.
    pub fn on_stream_end(&self, f: StreamEnd) {
        *self.0.stream_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// The response stream ended with `outcome` (called by the transport).
    pub fn stream_ended(&self, outcome: AttemptOutcome) {
        let f = self
            .0
            .stream_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(f) = f {
            f(outcome);
        }
    }

    /// Marks the attempt as a half-open probe (set by the breaker layer).
    pub fn set_probe(&self, probe: bool) {
        self.0.probe.store(probe, Ordering::Release);
    }
    /// Records that our own per-attempt timer fired (set by the attempt-timeout layer).
    pub fn set_timed_out(&self) {
        self.0.timed_out.store(true, Ordering::Release);
    }
    /// How the attempt ended: classified once, by [`classify`], on the first call; every
    /// later call (from any layer) returns the same outcome. The first call also reports it
    /// to the endpoint's outlier detection.
    pub fn outcome_of<T>(&self, result: &Result<T, Status>) -> AttemptOutcome {
        let outcome = match self.outcome() {
            Some(known) => known,
            None => {
                let mine = match result {
                    Ok(_) => AttemptOutcome::Success,
                    Err(status) => classify(status, self.0.timed_out.load(Ordering::Acquire)),
                };
                // The first classification stays, whoever made it.
                match self.0.outcome.compare_exchange(
                    0,
                    mine.encode(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => mine,
                    Err(first) => AttemptOutcome::decode(first).unwrap_or(mine),
                }
            }
        };
        self.report(outcome);
        outcome
    }
    /// The outcome, once classified.
    pub fn outcome(&self) -> Option<AttemptOutcome> {
        AttemptOutcome::decode(self.0.outcome.load(Ordering::Acquire))
    }
    /// The endpoint to avoid.
    pub fn avoid(&self) -> Option<&str> {
        self.0.avoid.as_deref()
    }
    /// Whether the attempt is a half-open probe (it should go to an endpoint in good
    /// standing).
    pub fn is_probe(&self) -> bool {
        self.0.probe.load(Ordering::Acquire)
    }
    /// Marks the attempt committed: response headers arrived (gRFC A6).
    pub fn commit(&self) {
        self.0.committed.store(true, Ordering::Release);
    }
    /// Whether the attempt is committed.
    pub fn is_committed(&self) -> bool {
        self.0.committed.load(Ordering::Acquire)
    }
    /// Records the chosen endpoint and how to tell it the outcome (set by the balancer).
    pub fn set_endpoint(&self, id: Arc<str>, reporter: Reporter) {
        *self.0.endpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        let _ = self.0.reporter.set(reporter);
    }
    /// Records the address (`http://host:port`) of the endpoint the balancer chose.
    pub fn set_address(&self, address: Arc<str>) {
        let _ = self.0.address.set(address);
    }
    /// The address of the endpoint that served the attempt, if a balancer chose one.
    pub fn address(&self) -> Option<&str> {
        self.0.address.get().map(|a| &**a)
    }
    /// The endpoint that served the attempt, if a balancer chose one.
    pub fn endpoint(&self) -> Option<Arc<str>> {
        self.0
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Whether a balancer is waiting for [`report`](Self::report).
    pub fn wants_report(&self) -> bool {
        self.0.reporter.get().is_some()
    }
    /// Tells the endpoint's outlier detection how the attempt ended. Only the first report
    /// counts.
    pub fn report(&self, outcome: AttemptOutcome) {
        if let Some(r) = self.0.reporter.get()
            && !self.0.reported.swap(true, Ordering::AcqRel)
        {
            r(outcome);
        }
    }
}

/// Marks every error the client returns with [`PASSED_THROUGH_KEY`] (see
/// [`mark_passed_through`]), so that a handler that relays it is not blamed by its own
/// callers. The outermost layer of a resilient client, but for metrics.
///
/// ```
/// use steadfast::outcome::{MarkRelayedLayer, PASSED_THROUGH_KEY};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(MarkRelayedLayer::new("user-svc"))
///     .service_fn(|_: tonic::Request<()>| async {
///         Err::<tonic::Response<()>, _>(tonic::Status::unavailable("down"))
///     });
/// let err = svc.oneshot(tonic::Request::new(())).await.unwrap_err();
/// assert_eq!(err.metadata().get(PASSED_THROUGH_KEY).unwrap(), "user-svc");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MarkRelayedLayer {
    service: Arc<str>,
}

impl MarkRelayedLayer {
    /// Marks errors as coming from `service`.
    pub fn new(service: impl Into<Arc<str>>) -> Self {
        MarkRelayedLayer {
            service: service.into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for MarkRelayedLayer {
    type Service = MarkRelayed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MarkRelayed {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service of [`MarkRelayedLayer`].
#[derive(Clone, Debug)]
pub struct MarkRelayed<S> {
    inner: S,
    service: Arc<str>,
}

impl<S, M, R> tower_service::Service<tonic::Request<M>> for MarkRelayed<S>
where
    S: tower_service::Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>,
{
    type Response = tonic::Response<R>;
    type Error = Status;
    type Future = MarkFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::Request<M>) -> Self::Future {
        MarkFuture {
            inner: self.inner.call(req),
            service: self.service.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`MarkRelayed`].
    pub struct MarkFuture<F> {
        #[pin]
        inner: F,
        service: Arc<str>,
    }
}

impl<F> std::fmt::Debug for MarkFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkFuture").finish_non_exhaustive()
    }
}

impl<F, R> std::future::Future for MarkFuture<F>
where
    F: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
{
    type Output = Result<tonic::Response<R>, Status>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        std::task::Poll::Ready(result.map_err(|s| mark_passed_through(s, this.service)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_timeouts_are_not_connection_failures() {
        let timeout = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(classify(&timeout, false), AttemptOutcome::Timeout);
        assert_eq!(
            classify(&Status::cancelled("x"), true),
            AttemptOutcome::Timeout
        );
        assert_eq!(
            AttemptOutcome::Timeout.endpoint_effect(),
            EndpointEffect::Failure
        );

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let unsent = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(unsent.code(), Code::Unavailable);
        assert_eq!(classify(&unsent, false), AttemptOutcome::NotSent);
        assert_eq!(
            AttemptOutcome::NotSent.endpoint_effect(),
            EndpointEffect::LocalFailure
        );

        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let broken = Status::from_error(Box::new(reset));
        assert_eq!(classify(&broken, false), AttemptOutcome::Transport);
    }

    #[test]
    fn the_server_marked_deadline_is_ours_and_a_relay_wins_over_everything() {
        let mut expired = Status::deadline_exceeded("deadline");
        expired.metadata_mut().insert(
            crate::wire::DEADLINE_EXPIRED_KEY,
            MetadataValue::from_static("1"),
        );
        assert_eq!(classify(&expired, false), AttemptOutcome::Timeout);
        let relayed = mark_passed_through(expired, "user-svc");
        assert_eq!(
            classify(&relayed, true),
            AttemptOutcome::PassedThrough(Code::DeadlineExceeded)
        );
        assert_eq!(
            AttemptOutcome::PassedThrough(Code::Unavailable).endpoint_effect(),
            EndpointEffect::Ignore
        );
        assert_eq!(
            classify(&Status::not_found("no"), false).endpoint_effect(),
            EndpointEffect::Success
        );
        assert_eq!(
            classify(&Status::internal("bug"), false).endpoint_effect(),
            EndpointEffect::Failure
        );
    }

    #[test]
    fn outcomes_survive_their_encoding() {
        let mut all = vec![
            AttemptOutcome::Success,
            AttemptOutcome::NotSent,
            AttemptOutcome::Transport,
            AttemptOutcome::Timeout,
        ];
        for c in 0..=16 {
            all.push(AttemptOutcome::Remote(Code::from_i32(c)));
            all.push(AttemptOutcome::PassedThrough(Code::from_i32(c)));
        }
        for o in all {
            assert_ne!(o.encode(), 0);
            assert_eq!(AttemptOutcome::decode(o.encode()), Some(o), "{o:?}");
        }
        assert_eq!(AttemptOutcome::decode(0), None);
    }

    #[test]
    fn the_first_classification_stays() {
        let info = AttemptInfo::new(None, false);
        assert_eq!(info.outcome(), None);
        let first = info.outcome_of::<()>(&Err(Status::not_found("no user")));
        assert_eq!(first, AttemptOutcome::Remote(Code::NotFound));
        assert_eq!(info.outcome_of(&Ok(())), first);
        assert_eq!(info.outcome(), Some(first));
    }

    #[test]
    fn only_the_first_report_counts() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let info = AttemptInfo::new(Some("e1".into()), true);
        let s = seen.clone();
        info.set_endpoint("e2".into(), Box::new(move |o| s.lock().unwrap().push(o)));
        info.report(AttemptOutcome::Timeout);
        info.report(AttemptOutcome::Success);
        assert_eq!(*seen.lock().unwrap(), [AttemptOutcome::Timeout]);
        assert!(info.is_probe() && info.avoid() == Some("e1"));
    }
}

/// How a streaming call ended, for the metrics layer: its final code and how many messages
/// went each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The final status code (`Cancelled` when the caller dropped the response stream).
    pub code: Code,
    /// Messages read from the caller's request stream (1 for a single request message).
    pub sent: u64,
    /// Messages received (1 for a single response message).
    pub received: u64,
}

/// Told a streaming call's [`StreamSummary`] when it ends (see [`StreamTally::on_end`]).
pub type TallyEnd = Box<dyn FnOnce(StreamSummary) + Send>;

/// The per-call tally of a streaming call (client, server or bidirectional streaming),
/// carried as a request extension: the request stream counts what it sends, the transport
/// counts what the final attempt receives and says how the stream ended, and the metrics
/// layer records it. A call without one is not a stream.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use steadfast::outcome::{StreamSummary, StreamTally};
///
/// let tally = StreamTally::new(true);
/// let seen = Arc::new(Mutex::new(None));
/// let s = seen.clone();
/// tally.on_end(Box::new(move |summary| *s.lock().unwrap() = Some(summary)));
/// tally.ended(tonic::Code::Ok, 3);
/// let summary: StreamSummary = seen.lock().unwrap().unwrap();
/// assert_eq!((summary.code, summary.sent, summary.received), (tonic::Code::Ok, 1, 3));
/// ```
#[derive(Clone, Default)]
pub struct StreamTally(Arc<TallyInner>);

#[derive(Default)]
struct TallyInner {
    response_stream: bool,
    sent: OnceLock<Arc<std::sync::atomic::AtomicU64>>,
    end: Mutex<Option<TallyEnd>>,
}

impl std::fmt::Debug for StreamTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTally")
            .field("response_stream", &self.0.response_stream)
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

impl StreamTally {
    /// A tally for a call whose response is (or is not) a stream.
    pub fn new(response_stream: bool) -> Self {
        StreamTally(Arc::new(TallyInner {
            response_stream,
            ..TallyInner::default()
        }))
    }
    /// Whether the response is a stream (its end comes after the response headers).
    pub fn is_response_stream(&self) -> bool {
        self.0.response_stream
    }
    /// Counts the messages sent with `counter` (the request stream's own count).
    pub fn count_sent(&self, counter: Arc<std::sync::atomic::AtomicU64>) {
        let _ = self.0.sent.set(counter);
    }
    /// Messages sent so far (1 when the request is a single message).
    pub fn sent(&self) -> u64 {
        self.0.sent.get().map_or(1, |c| c.load(Ordering::Relaxed))
    }
    /// Runs `f` when the call ends (set by the metrics layer once the call's response
    /// started).
    pub fn on_end(&self, f: TallyEnd) {
        *self.0.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
    /// The call ended with `code` after `received` messages. Only the first report after
    /// [`on_end`](Self::on_end) counts; before it, a report is an attempt's that was not the
    /// call's answer, and is ignored.
    pub fn ended(&self, code: Code, received: u64) {
        let f = self.0.end.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            f(StreamSummary {
                code,
                sent: self.sent(),
                received,
            });
        }
    }
}
