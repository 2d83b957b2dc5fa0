//! Spans exported over OTLP/gRPC: the three example binaries as separate processes over a
//! real etcd, each exporting to a small OTLP collector on 127.0.0.1 (the collector service
//! from opentelemetry-proto). One request through gateway -> order-svc -> user-svc must
//! arrive as one whole trace: every span's parent is in the trace, client and server spans
//! of each hop are linked, and each carries its service's name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{Proc, field};

#[allow(dead_code)]
#[path = "../../tests/tests/common/etcd.rs"]
mod etcd;

/// One exported span with the service that sent it.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Exported>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                out.push(Exported {
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> (String, Collector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let svc = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (url, collector)
    }

    fn trace(&self, trace_id: &str) -> Vec<Exported> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// Starts `bin` exporting to `collector`, with its logs on (spans at info are exported).
fn start(bin: &str, args: &[&str], collector: &str) -> (Proc, String) {
    let name = bin.rsplit('/').next().unwrap();
    common::start(
        bin,
        args,
        &[
            ("RUST_LOG", "info"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", name),
        ],
    )
}

/// POSTs an order; the status and the `x-trace-id` the gateway answered with.
async fn post_order(addr: SocketAddr) -> (u16, Option<String>) {
    let body = r#"{"user_id": 1, "item": "book", "quantity": 1}"#;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /orders HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let trace = text
        .lines()
        .find_map(|l| l.strip_prefix("x-trace-id: ").map(str::to_owned));
    (status, trace)
}

#[tokio::test]
async fn one_request_through_three_binaries_arrives_as_one_whole_trace() {
    let etcd = etcd::Etcd::start().await;
    let registry = etcd.url("");
    let data = tempfile::tempdir().unwrap();
    let (collector_url, collector) = Collector::start().await;
    let common = ["--registry", registry.as_str(), "--lease-ttl", "3s"];
    let (_user, _) = start(
        env!("CARGO_BIN_EXE_user-svc"),
        &[&common[..], &["--instance-id", "u1"]].concat(),
        &collector_url,
    );
    let data_dir = data.path().to_str().unwrap();
    let (_order, _) = start(
        env!("CARGO_BIN_EXE_order-svc"),
        &[
            &common[..],
            &["--instance-id", "o1", "--data-dir", data_dir],
        ]
        .concat(),
        &collector_url,
    );
    let (_gateway, line) = start(env!("CARGO_BIN_EXE_gateway"), &common, &collector_url);
    let gateway: SocketAddr = field(&line, "http").parse().unwrap();

    // Registration happens once healthy: retry until the chain is discovered end to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let trace_id = loop {
        let (status, trace) = post_order(gateway).await;
        if status == 201 {
            break trace.expect("x-trace-id on the response");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached 201: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Wait for the whole trace: both server spans of user-svc and order-svc, and the
    // gateway's root, exported within the batch delay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = collector.trace(&trace_id);
        let has = |service: &str, name: &str, kind: SpanKind| {
            spans
                .iter()
                .any(|s| s.service == service && s.name == name && s.kind == kind)
        };
        if has("user-svc", "user.UserService/GetUser", SpanKind::Server)
            && has(
                "order-svc",
                "order.OrderService/CreateOrder",
                SpanKind::Server,
            )
            && has("gateway", "POST", SpanKind::Server)
            && has("order-svc", "user.UserService/GetUser", SpanKind::Client)
        {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {trace_id} never arrived whole: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let by_id: HashMap<&str, &Exported> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |s: &Exported| -> &Exported {
        by_id
            .get(s.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("the parent of {s:?} is in the trace"))
    };
    // Whole: one root (the gateway's request), every other span's parent exported too.
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(
        (roots[0].service.as_str(), roots[0].kind),
        ("gateway", SpanKind::Server)
    );
    for s in spans.iter().filter(|s| !s.parent_span_id.is_empty()) {
        parent(s);
    }

    // Each hop: the callee's server span is a child of the caller's attempt span, a child
    // of the caller's call span; walking up from user-svc reaches the gateway's root.
    let hop = |callee: &str, name: &str, caller: &str| -> &Exported {
        let server = spans
            .iter()
            .find(|s| s.service == callee && s.name == name && s.kind == SpanKind::Server)
            .unwrap();
        assert_eq!(
            server.attributes.get("rpc.system").map(String::as_str),
            Some("grpc")
        );
        let attempt = parent(server);
        assert_eq!(
            (
                attempt.service.as_str(),
                attempt.name.as_str(),
                attempt.kind
            ),
            (caller, "grpc.attempt", SpanKind::Client),
            "{server:?}"
        );
        assert_eq!(
            attempt
                .attributes
                .get("rpc.grpc.attempt")
                .map(String::as_str),
            Some("1")
        );
        assert_eq!(
            attempt
                .attributes
                .get("rpc.grpc.status_code")
                .map(String::as_str),
            Some("0")
        );
        let call = parent(attempt);
        assert_eq!(
            (call.service.as_str(), call.name.as_str(), call.kind),
            (caller, name, SpanKind::Client)
        );
        call
    };
    let order_call = hop("user-svc", "user.UserService/GetUser", "order-svc");
    let gateway_call = hop("order-svc", "order.OrderService/CreateOrder", "gateway");
    let mut up = order_call;
    while up.service == "order-svc" {
        up = parent(up);
    }
    // The first gateway span above order-svc's is the gateway's attempt, child of its call.
    assert_eq!(
        (up.name.as_str(), up.kind),
        ("grpc.attempt", SpanKind::Client)
    );
    assert_eq!(
        parent(up).span_id,
        gateway_call.span_id,
        "order-svc's spans hang under the gateway's call"
    );
    let mut up = gateway_call;
    while !up.parent_span_id.is_empty() {
        up = parent(up);
    }
    assert_eq!(up.span_id, roots[0].span_id);
}
