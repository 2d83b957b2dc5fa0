//! Client spans: one span per outgoing call ([`ClientSpanLayer`]) and one per attempt
//! ([`PropagateMetadataLayer`](super::PropagateMetadataLayer)), named and attributed after
//! the OpenTelemetry RPC conventions. Each attempt has its own span id, and that id is the
//! parent the callee sees in `traceparent`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::Context;
use crate::outcome::AttemptInfo;

/// The caller's `tracing` span, as a request extension: the call's span is its child
/// (else the current span when the call is first polled is).
#[derive(Clone, Debug)]
pub struct CallerSpan(pub tracing::Span);

/// Opens the client span of each call, a child of the caller's current `tracing` span (or
/// of the [`CallerSpan`] in the request's extensions), with the attributes of the
/// OpenTelemetry RPC conventions: `rpc.system = "grpc"`, `rpc.service` (the full gRPC
/// service name, once known), `rpc.method`, `rpc.grpc.status_code`, `peer.service` (the
/// steadfast name of the downstream), and `otel.kind = "client"`. The call's trace context
/// becomes this span's, so every attempt is its child.
///
/// ```
/// use steadfast::trace::{ClientSpanLayer, PropagateMetadataLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ClientSpanLayer::new("user-svc", Some("user.UserService"), "GetUser"))
///     .layer(PropagateMetadataLayer::new())
///     .service_fn(|req: tonic::Request<()>| async move {
///         let sent = req.metadata().get("traceparent").is_some();
///         Ok::<_, tonic::Status>(tonic::Response::new(sent))
///     });
/// assert!(svc.oneshot(tonic::Request::new(())).await.unwrap().into_inner());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ClientSpanLayer {
    names: Arc<Names>,
    caller: Option<tracing::Span>,
}

#[derive(Debug)]
pub(crate) struct Names {
    peer: Box<str>,
    method: Box<str>,
    /// The full gRPC service name: given, or learned from the first call that reaches the
    /// transport (tonic names it on the request).
    service: OnceLock<Box<str>>,
}

impl ClientSpanLayer {
    /// Spans for calls of `method` on the downstream `peer` (its steadfast name), whose
    /// full gRPC service name is `service` when known (else it is learned from the first
    /// call that reaches a steadfast [`Channel`](crate::client::Channel)).
    pub fn new(peer: &str, service: Option<&str>, method: &str) -> Self {
        let known = OnceLock::new();
        if let Some(s) = service {
            let _ = known.set(s.into());
        }
        ClientSpanLayer {
            names: Arc::new(Names {
                peer: peer.into(),
                method: method.into(),
                service: known,
            }),
            caller: None,
        }
    }

    /// The same layer for one call whose caller's span is `caller` (captured where the call
    /// was made, before it was spawned or polled elsewhere).
    pub fn with_caller(mut self, caller: tracing::Span) -> Self {
        self.caller = Some(caller);
        self
    }
}

/// A request extension asking the transport to tell a [`ClientSpanLayer`] that was built
/// without it the call's gRPC service name.
#[derive(Clone, Debug)]
pub struct LearnSpanService(Arc<Names>);

impl LearnSpanService {
    /// Passes on the gRPC service name tonic put on an outgoing request.
    pub fn learn_from(extensions: &http::Extensions) {
        if let (Some(learn), Some(method)) = (
            extensions.get::<LearnSpanService>(),
            extensions.get::<tonic::GrpcMethod<'static>>(),
        ) {
            let _ = learn.0.service.set(method.service().into());
        }
    }
}

impl<S> Layer<S> for ClientSpanLayer {
    type Service = ClientSpan<S>;
    fn layer(&self, inner: S) -> ClientSpan<S> {
        ClientSpan {
            inner,
            names: self.names.clone(),
            caller: self.caller.clone(),
        }
    }
}

/// The service of [`ClientSpanLayer`].
#[derive(Clone, Debug)]
pub struct ClientSpan<S> {
    inner: S,
    names: Arc<Names>,
    caller: Option<tracing::Span>,
}

impl<S> ClientSpan<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, M, R> Service<tonic::Request<M>> for ClientSpan<S>
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
        let caller = match self.caller.take() {
            Some(caller) => caller,
            None => req
                .extensions_mut()
                .remove::<CallerSpan>()
                .map_or_else(tracing::Span::current, |c| c.0),
        };
        let names = &self.names;
        let service = names.service.get();
        if service.is_none() {
            req.extensions_mut().insert(LearnSpanService(names.clone()));
        }
        let span = tracing::info_span!(
            parent: &caller,
            "grpc.client",
            otel.name = tracing::field::Empty,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = tracing::field::Empty,
            rpc.method = &*names.method,
            rpc.grpc.status_code = tracing::field::Empty,
            peer.service = &*names.peer,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if let Some(service) = service {
            record_names(&span, service, &names.method);
        }
        // The call's own trace, if it came with one (not one made up for it below).
        let own = req
            .extensions()
            .get::<Context>()
            .and_then(Context::trace)
            .cloned();
        let parent = super::caller_context(&caller, own.as_ref());
        let ctx = super::child_of(&parent, &span, &caller);
        // The call's context (the task's when the request brought none) takes the call's
        // trace: set in place, never a root trace made up only to be replaced.
        match req.extensions_mut().get_mut::<Context>() {
            Some(call) => call.set_trace(ctx),
            None => {
                let mut call = Context::current();
                call.set_trace(ctx);
                req.extensions_mut().insert(call);
            }
        }
        SpanFuture::new(
            self.inner.call(req),
            span,
            Finish::Call(service.is_none().then(|| names.clone())),
        )
    }
}

pin_project! {
    /// The inner future of a [`SpanFuture`]: instrumented with the span when a subscriber
    /// records it (entered on every poll and while the future is dropped), bare otherwise.
    #[project = InnerProj]
    enum Inner<F> {
        Bare { #[pin] fut: F },
        Instrumented { #[pin] fut: tracing::instrument::Instrumented<F> },
    }
}

impl<F: Future> Inner<F> {
    fn new(fut: F, span: &tracing::Span) -> Self {
        use tracing::Instrument;
        if span.is_disabled() {
            Inner::Bare { fut }
        } else {
            Inner::Instrumented {
                fut: fut.instrument(span.clone()),
            }
        }
    }
}

impl<F: Future> Future for Inner<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        match self.project() {
            InnerProj::Bare { fut } => fut.poll(cx),
            InnerProj::Instrumented { fut } => fut.poll(cx),
        }
    }
}

pin_project! {
    /// The response future of [`ClientSpan`] and
    /// [`PropagateMetadata`](super::PropagateMetadata): runs the call or attempt inside its
    /// span (unless no subscriber records it) and records how it ended on the span.
    pub struct SpanFuture<F> {
        #[pin]
        inner: Inner<F>,
        span: tracing::Span,
        finish: Finish,
        done: bool,
    }

    impl<F> PinnedDrop for SpanFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped before it ended: the caller gave up, or another hedged copy won.
            if !*this.done {
                this.span
                    .record("rpc.grpc.status_code", tonic::Code::Cancelled as i32);
            }
        }
    }
}

/// What a [`SpanFuture`] records at the end besides the status.
pub(crate) enum Finish {
    /// A call: its gRPC names, when they were learned during the call.
    Call(Option<Arc<Names>>),
    /// An attempt: the endpoint that served it.
    Attempt(Option<AttemptInfo>),
}

impl<F: Future> SpanFuture<F> {
    pub(crate) fn new(inner: F, span: tracing::Span, finish: Finish) -> Self {
        SpanFuture {
            inner: Inner::new(inner, &span),
            span,
            finish,
            done: false,
        }
    }
}

impl<F> std::fmt::Debug for SpanFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanFuture").finish_non_exhaustive()
    }
}

impl<F, R> Future for SpanFuture<F>
where
    F: Future<Output = Result<tonic::Response<R>, Status>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        *this.done = true;
        match this.finish {
            Finish::Call(Some(names)) => {
                if let Some(service) = names.service.get() {
                    record_names(this.span, service, &names.method);
                }
            }
            Finish::Attempt(Some(info)) if !this.span.is_disabled() => {
                if let Some(endpoint) = info.endpoint() {
                    this.span.record("steadfast.endpoint", &*endpoint);
                }
                if let Some(uri) = info.address().and_then(|a| a.parse::<http::Uri>().ok()) {
                    if let Some(host) = uri.host() {
                        this.span.record("server.address", host);
                    }
                    if let Some(port) = uri.port_u16() {
                        this.span.record("server.port", port);
                    }
                }
            }
            Finish::Call(None) | Finish::Attempt(_) => {}
        }
        let code = match &out {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        // Any failure marks a client span as failed, as the conventions ask.
        this.span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            this.span.record("otel.status_code", "error");
        }
        Poll::Ready(out)
    }
}

/// Records the gRPC names: `rpc.service` and the OpenTelemetry span name `service/method`
/// (formatted only when a subscriber records it).
pub(crate) fn record_names(span: &tracing::Span, service: &str, method: &str) {
    span.record("rpc.service", service);
    span.record(
        "otel.name",
        tracing::field::display(format_args!("{service}/{method}")),
    );
}
