//! The resilient client stack: every call of a generated client goes through these layers,
//! outermost first. The order is the design; it is written once, in [`stack`].

use std::future::Future;
use std::sync::Arc;

use tonic::Status;
use tower::ServiceBuilder;
use tower::util::{Either, ServiceFn};

use crate::Context;
use crate::breaker::{Breaker, BreakerLayer};
use crate::deadline::{AttemptTimeout, AttemptTimeoutLayer, CallDeadline, CallDeadlineLayer};
use crate::metrics::{CallMetrics, CallMetricsLayer};
use crate::outcome::{MarkRelayed, MarkRelayedLayer};
use crate::retry::{CallPolicy, Retry, RetryLayer};
use crate::trace::{ClientSpan, ClientSpanLayer, PropagateMetadata, PropagateMetadataLayer};

/// The type of [`stack`] around the service `S`.
pub type ClientStack<S> = ClientSpan<
    CallMetrics<
        MarkRelayed<
            CallDeadline<
                Retry<
                    Either<
                        Breaker<AttemptTimeout<PropagateMetadata<S>>>,
                        AttemptTimeout<PropagateMetadata<S>>,
                    >,
                >,
            >,
        >,
    >,
>;

/// Wraps `inner` (one method of a tonic client, or any
/// `Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>`) in the
/// resilient client stack that `policy` describes. Each line is one public layer, usable on
/// its own; rebuild the stack by hand to drop one or to add your own (rate limit, auth) in
/// between. Below it, the tonic client encodes the message and the
/// [`Channel`](super::Channel) picks the endpoint (discovery, outlier detection, panic mode).
///
/// The layers talk only through two request extensions: the call's [`Context`] (deadline
/// and trace) and each attempt's [`AttemptInfo`](crate::outcome::AttemptInfo) (endpoint to
/// avoid, probe, commit, and the attempt's one classification).
///
/// ```
/// use std::sync::Arc;
/// use steadfast::client::stack;
/// use steadfast::retry::{CallPolicy, RetryPolicy};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let policy = Arc::new(CallPolicy::new("echo-svc", "Echo").retry(Some(RetryPolicy::default())));
/// let echo = tower::service_fn(|req: tonic::Request<u32>| async move {
///     Ok::<_, tonic::Status>(tonic::Response::new(req.into_inner()))
/// });
/// let reply = stack(&policy, echo).oneshot(tonic::Request::new(7)).await.unwrap();
/// assert_eq!(reply.into_inner(), 7);
/// # }
/// ```
pub fn stack<S>(policy: &Arc<CallPolicy>, inner: S) -> ClientStack<S> {
    build(policy, inner, policy.client_span_layer())
}

/// [`stack`] for one call made from the span `caller`.
pub(crate) fn stack_for_call<S>(
    policy: &Arc<CallPolicy>,
    inner: S,
    caller: tracing::Span,
) -> ClientStack<S> {
    build(
        policy,
        inner,
        policy.client_span_layer().with_caller(caller),
    )
}

fn build<S>(policy: &Arc<CallPolicy>, inner: S, span: ClientSpanLayer) -> ClientStack<S> {
    ServiceBuilder::new()
        // The call's span, child of the caller's; the call's trace context becomes its.
        .layer(span)
        // One count and one latency sample per call, by final code.
        .layer(CallMetricsLayer::new(policy.method_metrics()))
        // Errors we return carry their origin to the callers up the chain.
        .layer(MarkRelayedLayer::new(policy.service_name()))
        // The overall deadline: min(own timeout, the caller's deadline).
        .layer(CallDeadlineLayer::new(policy.get_timeout()))
        // gRFC A6: codes, backoff, pushback, throttle; transparent retry of unsent attempts.
        .layer(RetryLayer::new(policy.clone()))
        // Admission per attempt; one breaker shared by every client of the service.
        .option_layer(policy.get_breaker().cloned().map(BreakerLayer::new))
        // grpc-timeout and one timer per attempt; classifies the attempt once.
        .layer(
            AttemptTimeoutLayer::new(policy.per_attempt_timeout())
                .transport_timer(policy.has_transport_timer()),
        )
        // A span per attempt; its traceparent, tracestate and X-Trace-ID on the attempt.
        .layer(PropagateMetadataLayer::new())
        .service(inner)
}

impl CallPolicy {
    /// Runs one call under this policy through the whole [`stack`]. `attempt` sends one
    /// attempt; it is called once per attempt with a fresh copy of the request.
    ///
    /// The caller's [`Context`] (deadline and trace) is read when `call` is invoked, so the
    /// returned future keeps it even when it is spawned onto another task.
    pub fn call<M, R, F, Fut>(
        &self,
        request: tonic::Request<M>,
        attempt: F,
    ) -> impl Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static
    where
        M: Clone + Send + 'static,
        R: Send + 'static,
        F: FnMut(tonic::Request<M>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
    {
        self.call_in(Context::current(), request, attempt)
    }

    /// [`call`](Self::call) with the caller's [`Context`] given explicitly: its deadline
    /// bounds the call and its trace is propagated on every attempt (a call made outside any
    /// trace starts a new one).
    pub fn call_in<M, R, F, Fut>(
        &self,
        ctx: Context,
        mut request: tonic::Request<M>,
        attempt: F,
    ) -> impl Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static
    where
        M: Clone + Send + 'static,
        R: Send + 'static,
        F: FnMut(tonic::Request<M>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
    {
        request.extensions_mut().insert(ctx.for_task());
        let svc = stack(&Arc::new(self.clone()), tower::service_fn(attempt));
        tower::ServiceExt::oneshot(svc, request)
    }
}

/// The stack around one method of a generated client.
pub(crate) type MethodStack<F> = ClientStack<ServiceFn<F>>;
