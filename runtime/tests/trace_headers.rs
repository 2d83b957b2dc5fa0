//! Header handling that must never fail: arbitrary bytes in trace headers.

use proptest::prelude::*;
use steadfast::trace::{TraceState, Traceparent, extract, parse_x_trace_id};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Traceparent::parse(&bytes);
        let _ = TraceState::parse(&[&bytes]);
        let _ = parse_x_trace_id(&bytes);
    }

    #[test]
    fn extraction_always_yields_a_valid_context(
        tp in proptest::collection::vec(any::<u8>(), 0..80),
        ts in proptest::collection::vec(any::<u8>(), 0..80),
        xt in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [("traceparent", &tp), ("tracestate", &ts), ("x-trace-id", &xt)] {
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                headers.insert(name, v);
            }
        }
        let ctx = extract(&headers);
        // Whatever came in, what goes out is a well-formed traceparent.
        let out = ctx.traceparent();
        prop_assert!(Traceparent::parse(out.as_bytes()).is_ok(), "{out}");
        prop_assert_eq!(Traceparent::parse(out.as_bytes()).unwrap().trace_id, ctx.trace_id());
    }

    #[test]
    fn valid_traceparents_round_trip(trace in any::<u128>(), span in any::<u64>(), flags in any::<u8>()) {
        prop_assume!(trace != 0 && span != 0);
        let value = format!("00-{trace:032x}-{span:016x}-{flags:02x}");
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", value.parse().unwrap());
        let ctx = extract(&headers);
        prop_assert_eq!(ctx.trace_id().to_string(), format!("{trace:032x}"));
        prop_assert_eq!(ctx.parent_id().unwrap().to_string(), format!("{span:016x}"));
        // Unknown flag bits are zeroed on the way out.
        prop_assert_eq!(ctx.flags().to_u8(), flags & 0x03);
    }
}

#[test]
fn invalid_tracestate_is_dropped_but_traceparent_kept() {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
            .parse()
            .unwrap(),
    );
    headers.insert("tracestate", "a=1,B=2".parse().unwrap());
    let ctx = extract(&headers);
    assert_eq!(
        ctx.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert!(ctx.state().is_empty());
    // A duplicated key is not invalid: the first occurrence is kept, with the rest.
    headers.insert("tracestate", "a=1,b=2,a=3".parse().unwrap());
    assert_eq!(extract(&headers).state().as_str(), "a=1,b=2");
    assert_eq!(
        ctx.flags().to_u8(),
        0x03,
        "the random flag is kept when continuing"
    );
}

#[test]
fn tracestate_without_traceparent_is_discarded() {
    let mut headers = http::HeaderMap::new();
    headers.insert("tracestate", "a=1".parse().unwrap());
    let ctx = extract(&headers);
    assert!(ctx.state().is_empty());
    assert!(ctx.parent_id().is_none());
}

#[test]
fn two_traceparent_headers_start_a_new_trace() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = http::HeaderMap::new();
    headers.append("traceparent", tp.parse().unwrap());
    headers.append("traceparent", tp.parse().unwrap());
    let ctx = extract(&headers);
    assert_ne!(
        ctx.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert!(ctx.parent_id().is_none());
}

#[test]
fn x_trace_id_forms() {
    let cases = [
        (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        ),
        (
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        ),
        (
            "123e4567-e89b-12d3-a456-426614174000",
            Some("123e4567e89b12d3a456426614174000"),
        ),
        ("00000000-0000-0000-0000-000000000000", None),
        ("123e4567e89b-12d3-a456-426614174000-", None),
        ("4bf92f3577b34da6a3ce929d0e0e473", None),
        ("g bf92f3577b34da6a3ce929d0e0e4736", None),
    ];
    for (input, want) in cases {
        let got = parse_x_trace_id(input.as_bytes()).map(|t| t.to_string());
        assert_eq!(got.as_deref(), want, "{input}");
    }
}

#[tokio::test]
async fn propagate_layer_injects_the_current_context_into_outbound_http() {
    use std::sync::{Arc, Mutex};
    use steadfast::trace::{PropagateLayer, TraceContext};
    use tower::{Layer, ServiceExt};
    use tracing_subscriber::fmt::format::FmtSpan;

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Out::default();
    let writer = out.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_span_events(FmtSpan::CLOSE)
            .with_writer(move || writer.clone())
            .finish(),
    );

    let echo = tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, std::convert::Infallible>(req.headers().clone())
    });
    let svc = PropagateLayer::new().layer(echo);
    let ctx = TraceContext::new_root();
    let send = || {
        steadfast::Context::new()
            .with_trace(ctx.clone())
            .scope(svc.clone().oneshot(http::Request::new(())))
    };
    let (first, second) = (send().await.unwrap(), send().await.unwrap());
    let (a, b) = (extract(&first), extract(&second));
    assert_eq!(a.trace_id(), ctx.trace_id());
    assert_eq!(b.trace_id(), ctx.trace_id());
    // Each outgoing request is its own span: the callee's parent is that span, not ours.
    let (pa, pb) = (a.parent_id().unwrap(), b.parent_id().unwrap());
    assert_ne!(pa, ctx.span_id());
    assert_ne!(pa, pb, "one span id per outgoing request");
    let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    for id in [pa, pb] {
        let line = logged
            .lines()
            .find(|l| l.contains(&format!("span_id={id}")))
            .unwrap_or_else(|| panic!("a span with id {id} in {logged}"));
        assert!(line.contains("http.client"), "{line}");
        assert!(
            line.contains(&format!("parent_span_id={}", ctx.span_id())),
            "the request span is a child of ours: {line}"
        );
    }
    assert_eq!(
        first["x-trace-id"].to_str().unwrap(),
        ctx.trace_id().to_string()
    );
}
