//! The OpenTelemetry bridge (feature `otel`): a trace started by an OpenTelemetry peer
//! continues in steadfast and back again, checked with OpenTelemetry's own
//! `TraceContextPropagator` and its in-memory span exporter.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use steadfast::trace::{extract, inject};
use tracing_subscriber::layer::SubscriberExt;

struct Headers<'a>(&'a mut http::HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            http::HeaderName::from_bytes(key.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
}

struct Read<'a>(&'a http::HeaderMap);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn peer_context() -> (opentelemetry::Context, TraceId, SpanId) {
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let state = "vendor=abc".parse::<TraceState>().unwrap();
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, state);
    (
        opentelemetry::Context::new().with_remote_span_context(sc),
        trace_id,
        span_id,
    )
}

#[test]
fn an_opentelemetry_trace_continues_in_ours_and_back() {
    let propagator = TraceContextPropagator::new();
    let (peer, trace_id, span_id) = peer_context();

    // Their outgoing headers -> our extraction.
    let mut headers = http::HeaderMap::new();
    propagator.inject_context(&peer, &mut Headers(&mut headers));
    let ours = extract(&headers);
    assert_eq!(ours.trace_id().to_bytes(), trace_id.to_bytes());
    assert_eq!(ours.parent_id().unwrap().to_bytes(), span_id.to_bytes());
    assert_eq!(ours.state().get("vendor"), Some("abc"));

    // Our outgoing headers -> their extraction: same trace, our span as their parent.
    let mut back = http::HeaderMap::new();
    inject(&ours, &mut back);
    let theirs = propagator.extract(&Read(&back));
    let sc = theirs.span().span_context().clone();
    assert!(sc.is_valid() && sc.is_remote());
    assert_eq!(sc.trace_id(), trace_id);
    assert_eq!(sc.span_id().to_bytes(), ours.span_id().to_bytes());
    assert!(sc.is_sampled());
    assert_eq!(sc.trace_state().get("vendor"), Some("abc"));

    // And the direct conversions agree.
    let direct = steadfast::trace::otel::from_otel(&peer).unwrap();
    assert_eq!(direct.trace_id(), ours.trace_id());
    let cx = steadfast::trace::otel::to_otel(&ours);
    assert_eq!(
        cx.span().span_context().span_id().to_bytes(),
        ours.span_id().to_bytes()
    );
}

#[steadfast::traced]
async fn handler() -> (String, String) {
    let ctx = steadfast::Context::current();
    let trace = ctx.trace().unwrap();
    (trace.trace_id().to_string(), trace.span_id().to_string())
}

#[tokio::test]
async fn traced_spans_are_exported_under_the_remote_parent_with_our_ids() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    let _guard = tracing::subscriber::set_default(subscriber);

    // A request from an OpenTelemetry peer, as the server layer would see it.
    let (peer, trace_id, span_id) = peer_context();
    let mut headers = http::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&peer, &mut Headers(&mut headers));
    let incoming = extract(&headers);
    assert_eq!(incoming.parent_id().unwrap().to_bytes(), span_id.to_bytes());
    let hop = incoming.span_id();
    let (seen_trace, seen_span) = steadfast::Context::new()
        .with_trace(incoming)
        .scope(handler())
        .await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let span = spans
        .iter()
        .find(|s| s.name == "handler")
        .expect("the #[traced] span was exported");
    // The parent was set before the span was entered: it joined the peer's trace.
    assert_eq!(span.span_context.trace_id(), trace_id);
    // A plain fn's span is a child of the hop it runs in, whose parent is the peer's span.
    assert_eq!(span.parent_span_id.to_bytes(), hop.to_bytes());
    // Our context and log fields use the ids OpenTelemetry assigned.
    assert_eq!(seen_trace, format!("{trace_id}"));
    assert_eq!(seen_span, format!("{}", span.span_context.span_id()));
}
