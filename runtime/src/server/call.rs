//! Runtime half of `#[traced]`: where a handler's context comes from, and what happens when it
//! ends. Generated code creates the span itself (so its call site is the user's) and calls
//! these through `::steadfast::__private::trace`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::Context;
use crate::trace::{SpanId, TraceContext, TraceId, extract, extract_metadata};
use crate::wire::{DEADLINE_EXPIRED_KEY, GRPC_TIMEOUT, parse_grpc_timeout};

/// One handled call.
#[derive(Debug)]
pub struct Call {
    ctx: Context,
    /// Whether this call opened the hop itself (no server layer did): then its span is bound
    /// to the trace context (and, with `otel`, gets its OpenTelemetry parent).
    own: bool,
    service: &'static str,
    method: &'static str,
    started: Instant,
}

/// `my_crate::svc::UserSvc` -> `UserSvc`.
fn short_type_name(name: &'static str) -> &'static str {
    let base = name.split('<').next().unwrap_or(name);
    base.rsplit("::").next().unwrap_or(base)
}

impl Call {
    /// A tonic handler: the context the server layers put in the request, or else the trace
    /// and deadline from the request's own metadata.
    pub fn grpc<T>(
        req: &tonic::Request<T>,
        service_type: &'static str,
        method: &'static str,
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
            && let Some(v) = req.metadata().get(GRPC_TIMEOUT)
            && let Ok(t) = parse_grpc_timeout(v.as_encoded_bytes())
        {
            ctx = ctx.with_timeout(t);
        }
        Call::new(ctx, own, short_type_name(service_type), method)
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
        self.ctx = self.ctx.clone().with_trace(trace);
    }

    /// Runs a tonic handler's body: inside the context and span, bounded by the incoming
    /// deadline; logs the end at info with latency and code, and records metrics.
    pub async fn run_grpc<F, U>(
        self,
        span: tracing::Span,
        body: F,
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
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.finish(&span, crate::code::code_name(code), true);
        result
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
        self.finish(&span, code(&out), metrics);
        out
    }

    fn finish(&self, span: &tracing::Span, code: &'static str, metrics: bool) {
        let elapsed: Duration = self.started.elapsed();
        span.in_scope(|| {
            if metrics {
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
        if metrics {
            crate::metrics::server_call(
                self.service,
                self.method,
                code,
                elapsed,
                Some(self.trace_id()),
            );
        }
    }
}

/// `OK` or `ERROR` for a `Result`, for handlers whose return type is a `Result`.
pub fn result_code<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "OK" } else { "ERROR" }
}

/// `OK` for anything else.
pub fn ok_code<T>(_: &T) -> &'static str {
    "OK"
}
