//! Tower layers: [`TraceLayer`] for servers (gRPC or HTTP), [`PropagateLayer`] for outbound
//! HTTP clients.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::{X_TRACE_ID, extract, inject};
use crate::Context;
use crate::trace::context::CURRENT;

/// Extracts the caller's trace context from each request, runs the handler inside it (as
/// [`Context`] and as a `request` span with `trace_id` and `span_id`), and answers with
/// `x-trace-id`. Works for tonic servers and axum/hyper alike.
///
/// ```
/// use steadfast::trace::TraceLayer;
/// let layer = TraceLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer {
    _priv: (),
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        TraceLayer { _priv: () }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Trace<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Trace { inner }
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

impl<S, B, R> tower_service::Service<http::Request<B>> for Trace<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let span = request_span(&req);
        let path = RequestPath(req.uri().clone());
        req.extensions_mut().insert(path);
        let trace = extract(req.headers()).bind_span(&span);
        let ctx = req
            .extensions()
            .get::<Context>()
            .cloned()
            .unwrap_or_default()
            .with_trace(trace.clone());
        req.extensions_mut().insert(ctx.clone());
        let fut = {
            let _entered = span.enter();
            CURRENT.sync_scope(ctx.clone(), || self.inner.call(req))
        };
        ResponseFuture {
            inner: CURRENT.scope(ctx, fut).instrument(span),
            trace_id: trace.trace_id().to_hex(),
        }
    }
}

/// The path of the request being served (`/pkg.Service/Method` for gRPC), kept in its
/// extensions by [`TraceLayer`] so handlers can name the call as the wire does.
#[derive(Clone, Debug)]
pub(crate) struct RequestPath(http::Uri);

impl RequestPath {
    pub(crate) fn as_str(&self) -> &str {
        self.0.path()
    }
}

/// The server span of one request: for gRPC named `pkg.Service/Method` with the RPC
/// attributes, else named by the HTTP method (the route is not known here).
fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let span = tracing::info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        method = %req.method(),
        path = %path,
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    // Recorded before the span starts: an OpenTelemetry span's name is fixed then.
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) if grpc => {
            span.record("otel.name", path.trim_start_matches('/'));
            span.record("rpc.system", "grpc");
            span.record("rpc.service", service);
            span.record("rpc.method", method);
        }
        _ => {
            span.record("otel.name", req.method().as_str());
        }
    }
    span
}

pin_project! {
    /// Response future of [`Trace`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<TaskLocalFuture<Context, F>>,
        trace_id: [u8; 32],
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = ready!(this.inner.poll(cx));
        if let Ok(response) = &mut out
            && let Ok(v) = http::HeaderValue::from_bytes(this.trace_id)
        {
            response.headers_mut().insert(X_TRACE_ID, v);
        }
        Poll::Ready(out)
    }
}

/// Propagates the current trace context on outbound HTTP requests (`traceparent`,
/// `tracestate`, `x-trace-id`). Each request gets its own client span (`http.client`), a
/// child of the caller's, and the callee sees that span as its parent. A request made
/// outside any trace starts a new one.
///
/// ```
/// use steadfast::trace::PropagateLayer;
/// let layer = PropagateLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateLayer {
    _priv: (),
}

impl PropagateLayer {
    /// The layer.
    pub fn new() -> Self {
        PropagateLayer { _priv: () }
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;
    fn layer(&self, inner: S) -> Propagate<S> {
        Propagate { inner }
    }
}

/// The service of [`PropagateLayer`].
#[derive(Clone, Debug)]
pub struct Propagate<S> {
    inner: S,
}

impl<S> Propagate<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Propagate { inner }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Propagate<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let caller = tracing::Span::current();
        let span = tracing::info_span!(
            "http.client",
            otel.kind = "client",
            http.request.method = %req.method(),
            server.address = req.uri().host(),
            url.path = req.uri().path(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        let parent = super::caller_context(&caller, Context::current().trace());
        // Each outgoing request is its own span: the callee's parent is this request.
        let trace = super::child_of(&parent, &span, &caller);
        inject(&trace, req.headers_mut());
        self.inner.call(req).instrument(span)
    }
}
