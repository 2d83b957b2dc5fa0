//! Runtime half of `#[traced]`: where a handler's context comes from, and what happens when it
//! ends. Generated code creates the span itself (so its call site is the user's) and calls
//! these through `::steadfast::__private::trace`.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::Context;
use crate::metrics::ServerMethodMetrics;
use crate::trace::RequestPath;
use crate::trace::{SpanId, TraceContext, TraceId, extract, extract_metadata};
use crate::wire::{DEADLINE_EXPIRED_KEY, parse_grpc_timeout};

/// Where `#[traced]` was applied: one `static` per instrumented fn, holding what is
/// resolved once for all its calls (the gRPC names and the metric handles), so a handled
/// call records without a label lookup or an allocation.
#[derive(Debug)]
pub struct Site {
    /// Names from the request path (kept by `TraceLayer`).
    rpc: OnceLock<RpcSite>,
    /// Names from the handler when the path is not known: kept apart, so that one call
    /// without the path never fixes the labels of the calls that have it.
    fallback: OnceLock<RpcSite>,
}

impl RpcSite {
    fn new(service: &str, method: &str) -> RpcSite {
        RpcSite {
            full: format!("{service}/{method}").into(),
            metrics: crate::metrics::Metrics::global().server_method(service, method),
            service: service.into(),
            method: method.into(),
        }
    }
}

#[derive(Debug)]
struct RpcSite {
    service: Box<str>,
    method: Box<str>,
    /// `service/method`, the OpenTelemetry span name.
    full: Box<str>,
    metrics: ServerMethodMetrics,
}

impl Site {
    /// An empty site (generated code makes one `static` per fn).
    pub const fn new() -> Site {
        Site {
            rpc: OnceLock::new(),
            fallback: OnceLock::new(),
        }
    }
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

/// One handled call.
#[derive(Debug)]
pub struct Call {
    ctx: Context,
    /// Whether this call opened the hop itself (no server layer did): then its span is bound
    /// to the trace context (and, with `otel`, gets its OpenTelemetry parent).
    own: bool,
    service: &'static str,
    method: &'static str,
    rpc: Option<&'static RpcSite>,
    peer: Option<std::net::SocketAddr>,
    message_type: &'static str,
    started: Instant,
}

/// `my_crate::svc::UserSvc` -> `UserSvc`.
fn short_type_name(name: &'static str) -> &'static str {
    let base = name.split('<').next().unwrap_or(name);
    base.rsplit("::").next().unwrap_or(base)
}

/// `/pkg.Service/Method` -> (`pkg.Service`, `Method`).
fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

impl Call {
    /// A tonic handler: the context the server layers put in the request, or else the trace
    /// and deadline from the request's own metadata. The gRPC names come from the request
    /// path (kept by [`TraceLayer`](crate::trace::TraceLayer)), else from `#[traced(service =
    /// "pkg.Service")]` (or the handler's type) and the fn name in PascalCase.
    pub fn grpc<T>(
        req: &tonic::Request<T>,
        site: &'static Site,
        service_type: &'static str,
        method: &'static str,
        grpc_service: Option<&'static str>,
        grpc_method: &'static str,
    ) -> Call {
        let mut ctx = req
            .extensions()
            .get::<Context>()
            .cloned()
            .unwrap_or_default();
        let own = ctx.trace().is_none();
        if own {
            ctx = ctx.with_trace(extract_metadata(req.metadata()));
        }
        if ctx.deadline().is_none()
            && let Some(v) = req.metadata().get(&*crate::wire::GRPC_TIMEOUT_KEY)
            && let Ok(t) = parse_grpc_timeout(v.as_encoded_bytes())
        {
            ctx = ctx.with_timeout(t);
        }
        let path = req
            .extensions()
            .get::<RequestPath>()
            .and_then(|p| split_grpc_path(p.as_str()));
        let rpc = match path {
            Some((service, rpc_method)) => {
                site.rpc.get_or_init(|| RpcSite::new(service, rpc_method))
            }
            None => site.fallback.get_or_init(|| {
                let service = grpc_service.unwrap_or_else(|| short_type_name(service_type));
                RpcSite::new(service, grpc_method)
            }),
        };
        let mut call = Call::new(ctx, own, short_type_name(service_type), method);
        call.rpc = Some(rpc);
        call.peer = req.remote_addr();
        call.message_type = std::any::type_name::<T>();
        call
    }

    /// An HTTP handler with the request headers: the trace layer's context, or else the
    /// trace from the headers.
    pub fn http(headers: &http::HeaderMap, service: &'static str, method: &'static str) -> Call {
        let mut ctx = Context::current();
        let own = ctx.trace().is_none();
        if own {
            ctx = ctx.with_trace(extract(headers));
        }
        Call::new(ctx, own, service, method)
    }

    /// Any other async fn: the current hop's context (set by a server layer), or a new trace.
    pub fn handler(service: &'static str, method: &'static str) -> Call {
        let mut ctx = Context::current();
        let own = ctx.trace().is_none();
        if own {
            ctx = ctx.with_trace(TraceContext::new_root());
        }
        Call::new(ctx, own, service, method)
    }

    /// A plain async fn: a child span of the current context (or a new trace).
    pub fn child(service: &'static str, method: &'static str) -> Call {
        let ctx = Context::current();
        let trace = match ctx.trace() {
            Some(t) => t.child(),
            None => TraceContext::new_root(),
        };
        Call::new(ctx.with_trace(trace), true, service, method)
    }

    fn new(ctx: Context, own: bool, service: &'static str, method: &'static str) -> Call {
        Call {
            ctx,
            own,
            service,
            method,
            rpc: None,
            peer: None,
            message_type: "",
            started: Instant::now(),
        }
    }

    fn trace(&self) -> &TraceContext {
        self.ctx.trace().expect("every Call has a trace")
    }
    /// The trace id, for the span.
    pub fn trace_id(&self) -> TraceId {
        self.trace().trace_id()
    }
    /// This span's id, for the span.
    pub fn span_id(&self) -> SpanId {
        self.trace().span_id()
    }
    /// The service name, for the span.
    pub fn service(&self) -> &'static str {
        self.service
    }
    /// The full gRPC service name (`pkg.Service`), for the span's `rpc.service`.
    pub fn rpc_service(&self) -> &str {
        self.rpc.map_or(self.service, |r| &r.service)
    }
    /// The gRPC method name, for the span's `rpc.method`.
    pub fn rpc_method(&self) -> &str {
        self.rpc.map_or(self.method, |r| &r.method)
    }
    /// `pkg.Service/Method`, the span's OpenTelemetry name.
    pub fn otel_name(&self) -> &str {
        self.rpc.map_or(self.method, |r| &r.full)
    }
    /// The span's OpenTelemetry kind: `server` when this call opened the hop, else
    /// `internal` (the server layer's span is the hop's server span).
    pub fn span_kind(&self) -> &'static str {
        if self.own { "server" } else { "internal" }
    }
    /// The request message's Rust type (never its contents).
    pub fn message_type(&self) -> &'static str {
        self.message_type
    }
    /// Records the ids on `span`; when this call opened the hop, binds the span to the trace
    /// context first (with `otel`: sets its OpenTelemetry parent and adopts its ids).
    pub fn bind(&mut self, span: &tracing::Span) {
        let trace = self.trace().clone();
        let trace = if self.own {
            trace.bind_span(span)
        } else {
            span.record("trace_id", tracing::field::display(trace.trace_id()));
            span.record("span_id", tracing::field::display(trace.span_id()));
            if let Some(parent) = trace.parent_id() {
                span.record("parent_span_id", tracing::field::display(parent));
            }
            trace
        };
        if let Some(peer) = self.peer {
            span.record("client.address", tracing::field::display(peer.ip()));
            span.record("client.port", peer.port());
        }
        self.ctx = self.ctx.clone().with_trace(trace);
    }

    /// Runs `f` with this call's context as [`Context::current`].
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        crate::trace::context::CURRENT.sync_scope(self.ctx.clone(), f)
    }

    /// Ends a call whose response stream ended with `code`.
    pub(crate) fn finish_stream(&self, span: &tracing::Span, code: tonic::Code) {
        span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            span.record("otel.status_code", "error");
        }
        self.finish(span, crate::code::code_name(code), Some(code), true);
    }

    /// Runs a tonic handler's body: inside the context and span, bounded by the incoming
    /// deadline; logs the end at info with latency and code, and records metrics. With
    /// `hold` (a handler answering with a stream), a call that starts its stream ends with
    /// the stream instead: the span stays open and each message is produced inside it.
    pub async fn run_grpc<F, U>(
        self,
        span: tracing::Span,
        body: F,
        hold: Option<super::stream::Hold<U>>,
    ) -> Result<tonic::Response<U>, Status>
    where
        F: Future<Output = Result<tonic::Response<U>, Status>>,
    {
        use tracing::Instrument;
        let deadline = self.ctx.deadline();
        let fut = self.ctx.clone().scope(body).instrument(span.clone());
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d, fut).await {
                Ok(r) => r,
                Err(_) => {
                    let mut s =
                        Status::deadline_exceeded("the caller's deadline expired in the handler");
                    s.metadata_mut().insert(
                        DEADLINE_EXPIRED_KEY,
                        tonic::metadata::MetadataValue::from_static("1"),
                    );
                    Err(s)
                }
            },
            None => fut.await,
        };
        match (result, hold) {
            (Ok(response), Some(hold)) => Ok(response.map(|stream| hold(stream, self, span))),
            (result, _) => {
                let code = match &result {
                    Ok(_) => tonic::Code::Ok,
                    Err(s) => s.code(),
                };
                self.finish_stream(&span, code);
                result
            }
        }
    }

    /// Runs any other handler's or fn's body inside the context and span. `code` names the
    /// outcome for logs and metrics (`metrics`: whether to record server metrics).
    pub async fn run<F: Future>(
        self,
        span: tracing::Span,
        body: F,
        code: fn(&F::Output) -> &'static str,
        metrics: bool,
    ) -> F::Output {
        use tracing::Instrument;
        let out = self.ctx.clone().scope(body).instrument(span.clone()).await;
        let code = code(&out);
        if metrics {
            crate::metrics::http_handler(
                self.service,
                self.method,
                code,
                self.started.elapsed(),
                Some(self.trace_id()),
            );
        }
        self.finish(&span, code, None, metrics);
        out
    }

    fn finish(
        &self,
        span: &tracing::Span,
        code: &'static str,
        grpc: Option<tonic::Code>,
        info: bool,
    ) {
        let elapsed: Duration = self.started.elapsed();
        span.in_scope(|| {
            if info {
                tracing::info!(
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    code,
                    "{} finished",
                    self.method
                );
            } else {
                tracing::debug!(
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    code,
                    "{} finished",
                    self.method
                );
            }
        });
        if let (Some(code), Some(rpc)) = (grpc, self.rpc) {
            rpc.metrics.call(code, elapsed, Some(self.trace_id()));
        }
    }
}

/// The codes that mark a server span as failed, per the OpenTelemetry gRPC conventions (the
/// others are the caller's problem, not the server's).
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// `OK` or `ERROR` for a `Result`, for handlers whose return type is a `Result`.
pub fn result_code<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "OK" } else { "ERROR" }
}

/// `OK` for anything else.
pub fn ok_code<T>(_: &T) -> &'static str {
    "OK"
}
