//! Trace propagation on outgoing gRPC calls: one span per attempt, whose context goes into
//! the attempt's metadata.

use std::task::{Context as TaskContext, Poll};

use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::client::{Finish, SpanFuture};
use crate::Context;
use crate::outcome::AttemptInfo;

/// Opens a span for every attempt (`grpc.attempt`, with `rpc.grpc.attempt`, the status
/// code, and the endpoint that served it: `steadfast.endpoint` (instance id),
/// `server.address` and `server.port`), a child of the call's span, and writes its trace
/// context (`traceparent`, `tracestate`, `X-Trace-ID`) into the attempt's metadata: each
/// attempt has its own span id, and the callee's span is its child. The call's context is
/// its [`Context`] (a request extension set by the client stack), else the running task's,
/// else a new trace.
///
/// ```
/// use steadfast::trace::PropagateMetadataLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(PropagateMetadataLayer::new())
///     .service_fn(|req: tonic::Request<()>| async move {
///         let sent = req.metadata().get("traceparent").is_some();
///         Ok::<_, tonic::Status>(tonic::Response::new(sent))
///     });
/// assert!(svc.oneshot(tonic::Request::new(())).await.unwrap().into_inner());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateMetadataLayer {
    _priv: (),
}

impl PropagateMetadataLayer {
    /// The layer.
    pub fn new() -> Self {
        PropagateMetadataLayer { _priv: () }
    }
}

impl<S> Layer<S> for PropagateMetadataLayer {
    type Service = PropagateMetadata<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PropagateMetadata { inner }
    }
}

/// The service of [`PropagateMetadataLayer`].
#[derive(Clone, Debug)]
pub struct PropagateMetadata<S> {
    inner: S,
}

impl<S> PropagateMetadata<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        PropagateMetadata { inner }
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

impl<S, M, R> Service<tonic::Request<M>> for PropagateMetadata<S>
where
    S: Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>,
{
    type Response = tonic::Response<R>;
    type Error = Status;
    type Future = SpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::Request<M>) -> Self::Future {
        // The call's trace: set by the client span layer above, else the one `of_call` gives.
        let call = match req.extensions().get::<Context>().and_then(Context::trace) {
            Some(trace) => trace.clone(),
            None => Context::of_call(req.extensions_mut())
                .trace()
                .cloned()
                .expect("of_call gives every call a trace"),
        };
        // Attempts are made while the call's future runs, inside the call's span.
        let parent = tracing::Span::current();
        // Set by the retry layer on every attempt after the first (gRFC A6).
        let attempt = req
            .metadata()
            .get(&*crate::wire::PREVIOUS_ATTEMPTS)
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
            .map_or(1, |previous| previous.saturating_add(1));
        let span = tracing::info_span!(
            parent: &parent,
            "grpc.attempt",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.grpc.attempt = attempt,
            rpc.grpc.status_code = tracing::field::Empty,
            steadfast.endpoint = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        // Each attempt is its own span: the callee's parent is this attempt, not the caller.
        let ctx = super::child_of(&call, &span, &parent);
        super::inject_metadata(&ctx, req.metadata_mut());
        let info = req.extensions().get::<AttemptInfo>().cloned();
        SpanFuture::new(self.inner.call(req), span, Finish::Attempt(info))
    }
}
