//! Trace context across gRPC, HTTP and spawned tasks: W3C `traceparent` / `tracestate`, and
//! the `X-Trace-ID` header for callers that only know a trace id.
//!
//! # Extraction (servers)
//! 1. One valid `traceparent`: continue that trace. Our span gets a new id and the caller's
//!    span becomes its parent; a valid `tracestate` is kept, an invalid one dropped.
//! 2. Otherwise, a valid `X-Trace-ID` (32 hex digits or a UUID): continue that trace id with
//!    a new span and no parent.
//! 3. Otherwise: a new trace with a random 128-bit id (flags sampled and random).
//!
//! Invalid headers are logged with `warn!`, showing the value escaped and truncated; raw
//! header bytes never reach a log line. Several `traceparent` headers are invalid.
//!
//! # Propagation
//! - gRPC: every `#[resilient_client]` call injects `traceparent`, `tracestate` and
//!   `x-trace-id` on every attempt; [`TraceLayer`] extracts them on the server and answers
//!   with `x-trace-id`.
//! - HTTP: [`TraceLayer`] serves axum/hyper the same way; [`PropagateLayer`] and [`inject`]
//!   propagate on outbound HTTP calls.
//! - Tasks: the context lives in [`Context`] (a task-local) and in the current
//!   `tracing` span (fields `trace_id`, `span_id`). [`spawn`] and
//!   [`InCurrentContext::in_current_context`] carry both into another task. A bare
//!   `tokio::spawn` loses them: the new task has no context, and calls it makes start new
//!   traces.

mod client;
#[doc(hidden)]
pub(crate) mod context;
mod ids;
mod layer;
mod metadata;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
mod traceparent;
mod tracestate;

use std::future::Future;

use http::HeaderMap;
use tonic::metadata::MetadataMap;
use tracing::Instrument;

pub use self::client::{CallerSpan, ClientSpan, ClientSpanLayer, LearnSpanService, SpanFuture};
pub use self::ids::{SpanId, TraceId};
pub(crate) use self::layer::RequestPath;
pub use self::layer::{Propagate, PropagateLayer, Trace, TraceLayer};
pub use self::metadata::{PropagateMetadata, PropagateMetadataLayer};
pub use self::traceparent::{TraceFlags, Traceparent, TraceparentError};
pub use self::tracestate::{TraceState, TraceStateError};

pub use self::context::Context;

pub use crate::wire::{TRACEPARENT, TRACESTATE, X_TRACE_ID};

/// The trace context of one hop: which trace, this hop's span, and the caller's span.
///
/// ```
/// use steadfast::trace::TraceContext;
///
/// let root = TraceContext::new_root();
/// let child = root.child();
/// assert_eq!(child.trace_id(), root.trace_id());
/// assert_eq!(child.parent_id(), Some(root.span_id()));
/// assert_ne!(child.span_id(), root.span_id());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: Option<SpanId>,
    flags: TraceFlags,
    state: TraceState,
}

impl TraceContext {
    /// A new trace: random ids, flags sampled and random (our ids are fully random).
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags: TraceFlags::SAMPLED.union(TraceFlags::RANDOM),
            state: TraceState::EMPTY,
        }
    }

    /// A new span of the same trace whose parent is this one (same flags and state).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            flags: self.flags.outgoing(),
            state: self.state.clone(),
        }
    }

    /// Continues a caller's trace: our span is new, the caller's span is its parent.
    pub fn from_parent(parent: Traceparent, state: TraceState) -> TraceContext {
        TraceContext {
            trace_id: parent.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(parent.parent_id),
            flags: parent.flags.outgoing(),
            state,
        }
    }

    /// Continues a trace known only by its id (from `X-Trace-ID`). The random flag is not
    /// set: nothing says the id is random.
    pub fn from_trace_id(trace_id: TraceId) -> TraceContext {
        TraceContext {
            trace_id,
            span_id: SpanId::random(),
            parent_id: None,
            flags: TraceFlags::SAMPLED,
            state: TraceState::EMPTY,
        }
    }

    /// The same context with other ids (used when OpenTelemetry assigns them).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) fn with_ids(mut self, trace_id: TraceId, span_id: SpanId) -> TraceContext {
        self.trace_id = trace_id;
        self.span_id = span_id;
        self
    }

    /// Records this context's ids on `span` (fields `trace_id`, `span_id`, `parent_span_id`)
    /// and, with the `otel` feature, binds the span's OpenTelemetry parent and adopts the ids
    /// OpenTelemetry assigns. Returns the context to run the hop in.
    pub fn bind_span(self, span: &tracing::Span) -> TraceContext {
        #[cfg(feature = "otel")]
        let this = otel::bind(span, self);
        #[cfg(not(feature = "otel"))]
        let this = self;
        span.record("trace_id", tracing::field::display(this.trace_id));
        span.record("span_id", tracing::field::display(this.span_id));
        if let Some(parent) = this.parent_id {
            span.record("parent_span_id", tracing::field::display(parent));
        }
        this
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }
    /// This hop's span id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }
    /// The caller's span id, if the caller sent one.
    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id
    }
    /// The trace flags.
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }
    /// The `tracestate`.
    pub fn state(&self) -> &TraceState {
        &self.state
    }

    /// The `traceparent` to send downstream: this hop's span is the callee's parent.
    pub fn traceparent(&self) -> String {
        let bytes = traceparent::format(self.trace_id, self.span_id, self.flags);
        String::from_utf8(bytes.to_vec()).expect("ASCII")
    }
}

/// The trace context a new outgoing call continues: the call's own trace `ctx` (given with
/// the call, or the hop's), else a new trace. With `otel`, the caller's OpenTelemetry span
/// is the parent when it belongs to that trace (a span inside the handler), or when the call
/// has no trace of its own (an ordinary `tracing` span under tracing-opentelemetry).
pub(crate) fn caller_context(caller: &tracing::Span, ctx: Option<&TraceContext>) -> TraceContext {
    #[cfg(feature = "otel")]
    if let Some(parent) = otel::span_context(caller)
        && ctx.is_none_or(|c| c.trace_id == parent.trace_id)
    {
        return parent;
    }
    let _ = caller;
    ctx.cloned().unwrap_or_else(TraceContext::new_root)
}

/// The context of a new span `span` whose parent is `parent`: a new span id of the same
/// trace, recorded on the span's `trace_id`, `span_id` and `parent_span_id` fields. With
/// `otel`, the span takes the id OpenTelemetry gives it; its OpenTelemetry parent is its
/// `tracing` parent `tracing_parent` when that is `parent`'s span, else `parent` as a
/// remote span context.
pub(crate) fn child_of(
    parent: &TraceContext,
    span: &tracing::Span,
    tracing_parent: &tracing::Span,
) -> TraceContext {
    let child = parent.child();
    #[cfg(feature = "otel")]
    let child = match otel::span_context(tracing_parent) {
        Some(p) if p.trace_id == parent.trace_id && p.span_id == parent.span_id => {
            otel::adopt(span, child)
        }
        _ => otel::bind(span, child),
    };
    #[cfg(not(feature = "otel"))]
    let _ = tracing_parent;
    span.record("trace_id", tracing::field::display(child.trace_id));
    span.record("span_id", tracing::field::display(child.span_id));
    if let Some(parent) = child.parent_id {
        span.record("parent_span_id", tracing::field::display(parent));
    }
    child
}

/// Parses an `X-Trace-ID`: 32 hex digits (any case) or a UUID; never all zero.
///
/// ```
/// use steadfast::trace::parse_x_trace_id;
/// assert!(parse_x_trace_id(b"4BF92F3577B34DA6A3CE929D0E0E4736").is_some());
/// assert!(parse_x_trace_id(b"123e4567-e89b-12d3-a456-426614174000").is_some());
/// assert!(parse_x_trace_id(b"not-a-trace").is_none());
/// ```
pub fn parse_x_trace_id(value: &[u8]) -> Option<TraceId> {
    let v = traceparent::trim_ows(value);
    let hex: Vec<u8> = match v.len() {
        32 => v.to_vec(),
        36 if [8, 13, 18, 23].iter().all(|&i| v[i] == b'-') => {
            v.iter().copied().filter(|&c| c != b'-').collect()
        }
        _ => return None,
    };
    let lower = hex.to_ascii_lowercase();
    TraceId::from_hex(std::str::from_utf8(&lower).ok()?)
}

/// The headers the extraction reads.
#[derive(Clone, Copy)]
enum Field {
    Traceparent,
    Tracestate,
    XTraceId,
}

/// Where headers are read from: HTTP headers or gRPC metadata. Names are parsed once
/// (constants), and values are iterated where they lie.
trait Carrier {
    fn values(&self, field: Field) -> impl Iterator<Item = &[u8]>;
}

impl Carrier for HeaderMap {
    fn values(&self, field: Field) -> impl Iterator<Item = &[u8]> {
        const NAMES: [http::HeaderName; 3] = [
            http::HeaderName::from_static(TRACEPARENT),
            http::HeaderName::from_static(TRACESTATE),
            http::HeaderName::from_static(X_TRACE_ID),
        ];
        self.get_all(&NAMES[field as usize])
            .iter()
            .map(|v| v.as_bytes())
    }
}

impl Carrier for MetadataMap {
    fn values(&self, field: Field) -> impl Iterator<Item = &[u8]> {
        use crate::wire::{TRACEPARENT_KEY, TRACESTATE_KEY, X_TRACE_ID_KEY};
        let key = match field {
            Field::Traceparent => &*TRACEPARENT_KEY,
            Field::Tracestate => &*TRACESTATE_KEY,
            Field::XTraceId => &*X_TRACE_ID_KEY,
        };
        self.get_all(key).iter().map(|v| v.as_encoded_bytes())
    }
}

fn warn_invalid(header: &str, value: &[u8], why: &dyn std::fmt::Display) {
    tracing::warn!(
        header,
        value = %crate::wire::sanitize(value),
        "ignoring invalid {header}: {why}"
    );
}

fn extract_from(carrier: &impl Carrier) -> TraceContext {
    let mut parents = carrier.values(Field::Traceparent);
    match (parents.next(), parents.next()) {
        (Some(one), None) => match Traceparent::parse(one) {
            Ok(parent) => {
                let states: Vec<&[u8]> = carrier.values(Field::Tracestate).collect();
                let state = TraceState::parse(&states).unwrap_or_else(|why| {
                    warn_invalid(TRACESTATE, &states.concat(), &why);
                    TraceState::EMPTY
                });
                return TraceContext::from_parent(parent, state);
            }
            Err(why) => warn_invalid(TRACEPARENT, one, &why),
        },
        (None, _) => {}
        (Some(_), Some(_)) => {
            let many: Vec<&[u8]> = carrier.values(Field::Traceparent).collect();
            warn_invalid(
                TRACEPARENT,
                &many.join(&b','),
                &"several traceparent headers",
            )
        }
    }
    if let Some(value) = carrier.values(Field::XTraceId).next() {
        match parse_x_trace_id(value) {
            Some(id) => return TraceContext::from_trace_id(id),
            None => warn_invalid(X_TRACE_ID, value, &"expected 32 hex digits or a UUID"),
        }
    }
    TraceContext::new_root()
}

/// The trace context of an incoming HTTP request (see the module docs for the rules).
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
/// let ctx = steadfast::trace::extract(&headers);
/// assert_eq!(ctx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(ctx.parent_id().unwrap().to_string(), "00f067aa0ba902b7");
/// ```
pub fn extract(headers: &HeaderMap) -> TraceContext {
    extract_from(headers)
}

/// The trace context of an incoming gRPC request's metadata.
pub fn extract_metadata(metadata: &MetadataMap) -> TraceContext {
    extract_from(metadata)
}

/// Writes `traceparent`, `tracestate` (when not empty) and `x-trace-id` for a call made
/// from `ctx`: the callee's parent is `ctx`'s span, as given. An outgoing request should be
/// a span of its own, so that two requests from one handler do not share a parent id:
/// [`PropagateLayer`] and every resilient client open one per request (per attempt) and
/// inject its context; by hand, inject `ctx.child()` and record that span.
///
/// ```
/// let ctx = steadfast::trace::TraceContext::new_root();
/// let mut headers = http::HeaderMap::new();
/// steadfast::trace::inject(&ctx, &mut headers);
/// assert_eq!(steadfast::trace::extract(&headers).trace_id(), ctx.trace_id());
/// ```
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    // As in `inject_metadata`: one carved buffer holds the traceparent and, inside it, the
    // trace id's hex.
    let tp = crate::wire::carve(&traceparent::format(ctx.trace_id, ctx.span_id, ctx.flags));
    let trace_id = tp.slice(3..35);
    headers.insert(
        TRACEPARENT,
        http::HeaderValue::from_maybe_shared(tp).expect("ASCII"),
    );
    if let Ok(v) = http::HeaderValue::from_str(ctx.state.as_str())
        && !ctx.state.is_empty()
    {
        headers.insert(TRACESTATE, v);
    }
    headers.insert(
        X_TRACE_ID,
        http::HeaderValue::from_maybe_shared(trace_id).expect("ASCII"),
    );
}

/// [`inject`] into gRPC metadata.
///
/// The values are new on every request, so they are sent as HPACK literals that are never
/// indexed: adding them to the connection's header table would only evict the entries that
/// do repeat (content type, user agent, authority) and make every request larger.
pub fn inject_metadata(ctx: &TraceContext, metadata: &mut MetadataMap) {
    use crate::wire::{TRACEPARENT_KEY, TRACESTATE_KEY, X_TRACE_ID_KEY};
    let unindexed = |mut v: tonic::metadata::AsciiMetadataValue| {
        v.set_sensitive(true);
        v
    };
    // One carved buffer holds both values: the trace id's hex is the traceparent's
    // `00-{trace id}-...`.
    let tp = crate::wire::carve(&traceparent::format(ctx.trace_id, ctx.span_id, ctx.flags));
    let trace_id = tp.slice(3..35);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(tp) {
        metadata.insert(&*TRACEPARENT_KEY, unindexed(v));
    }
    if !ctx.state.is_empty()
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(ctx.state.as_str())
    {
        metadata.insert(&*TRACESTATE_KEY, v);
    }
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(trace_id) {
        metadata.insert(&*X_TRACE_ID_KEY, unindexed(v));
    }
}

/// Spawns `fut` on tokio with the current [`Context`] (trace and deadline) and the current
/// `tracing` span, so its log lines and calls belong to the same trace.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use steadfast::{Context, trace::TraceContext};
/// let ctx = Context::new().with_trace(TraceContext::new_root());
/// let id = ctx.trace().unwrap().trace_id();
/// let seen = ctx.scope(async {
///     steadfast::spawn(async { Context::current().trace().map(|t| t.trace_id()) }).await.unwrap()
/// }).await;
/// assert_eq!(seen, Some(id));
/// # }
/// ```
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.in_current_context())
}

/// Carries the current [`Context`] and `tracing` span into a future that will run elsewhere.
pub trait InCurrentContext: Future + Sized {
    /// Wraps the future so it runs with the context and span current now.
    fn in_current_context(
        self,
    ) -> tracing::instrument::Instrumented<tokio::task::futures::TaskLocalFuture<Context, Self>>
    {
        Context::current()
            .scope_future(self)
            .instrument(tracing::Span::current())
    }
}

impl<F: Future> InCurrentContext for F {}
