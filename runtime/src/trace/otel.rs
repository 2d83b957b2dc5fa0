//! The bridge to OpenTelemetry (feature `otel`).
//!
//! Spans that steadfast opens for a hop take their OpenTelemetry parent from the request's
//! W3C context *before* they are first entered (set afterwards, tracing-opentelemetry has
//! already fixed the span's trace, the trap of tracing-opentelemetry issue 253), and then
//! share their ids: the id OpenTelemetry gives the span becomes the hop's `span_id`, in log
//! lines and in the `traceparent` sent downstream. A trace started by an OpenTelemetry peer
//! therefore continues in ours, and ours continues in theirs.

use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags as OtelFlags, TraceState as OtelState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{SpanId, TraceContext, TraceFlags, TraceId};

/// `ctx`'s own span as an OpenTelemetry remote span context (what a callee sees).
pub fn to_otel(ctx: &TraceContext) -> opentelemetry::Context {
    remote(ctx, ctx.span_id())
}

/// The OpenTelemetry context as a steadfast context: a child of its current span, or `None`
/// when it has no valid span.
pub fn from_otel(cx: &opentelemetry::Context) -> Option<TraceContext> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let parent = super::Traceparent {
        trace_id: TraceId::from_bytes(sc.trace_id().to_bytes())?,
        parent_id: SpanId::from_bytes(sc.span_id().to_bytes())?,
        flags: TraceFlags::from_u8(sc.trace_flags().to_u8()),
    };
    let state =
        super::TraceState::parse(&[sc.trace_state().header().as_bytes()]).unwrap_or_default();
    Some(TraceContext::from_parent(parent, state))
}

fn remote(ctx: &TraceContext, span_id: SpanId) -> opentelemetry::Context {
    let state = if ctx.state().is_empty() {
        OtelState::default()
    } else {
        ctx.state()
            .as_str()
            .parse::<OtelState>()
            .unwrap_or_default()
    };
    let sc = SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(ctx.trace_id().to_bytes()),
        opentelemetry::trace::SpanId::from_bytes(span_id.to_bytes()),
        OtelFlags::new(ctx.flags().to_u8() & OtelFlags::SAMPLED.to_u8()),
        true,
        state,
    );
    opentelemetry::Context::new().with_remote_span_context(sc)
}

/// Makes `span` the OpenTelemetry span of the hop described by `ctx`: parent first, then
/// returns `ctx` with the ids OpenTelemetry assigned (unchanged when no OpenTelemetry layer
/// is installed).
pub(crate) fn bind(span: &tracing::Span, ctx: TraceContext) -> TraceContext {
    // No subscriber records the span: there is no OpenTelemetry span to bind.
    if span.is_disabled() {
        return ctx;
    }
    if let Some(parent) = ctx.parent_id() {
        let _ = span.set_parent(remote(&ctx, parent));
    }
    adopt(span, ctx)
}

/// `ctx` with the ids OpenTelemetry gave `span` (its parent comes from `tracing`), or
/// unchanged when no OpenTelemetry layer is installed.
pub(crate) fn adopt(span: &tracing::Span, ctx: TraceContext) -> TraceContext {
    if span.is_disabled() {
        return ctx;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    match (
        TraceId::from_bytes(sc.trace_id().to_bytes()),
        SpanId::from_bytes(sc.span_id().to_bytes()),
    ) {
        (Some(trace_id), Some(span_id)) if sc.is_valid() => ctx.with_ids(trace_id, span_id),
        _ => ctx,
    }
}

/// The OpenTelemetry context of `span` as the parent of a new span: its trace, its span id
/// as `span_id`; `None` when it has no valid OpenTelemetry span (no layer, or disabled).
pub(crate) fn span_context(span: &tracing::Span) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    let state =
        super::TraceState::parse(&[sc.trace_state().header().as_bytes()]).unwrap_or_default();
    Some(TraceContext {
        trace_id: TraceId::from_bytes(sc.trace_id().to_bytes())?,
        span_id: SpanId::from_bytes(sc.span_id().to_bytes())?,
        parent_id: None,
        flags: TraceFlags::from_u8(sc.trace_flags().to_u8()),
        state,
    })
}
