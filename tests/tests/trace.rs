//! Trace context end to end: HTTP gateway -> order-svc -> user-svc on 127.0.0.1, with the
//! JSON log lines of all three captured and joined by trace id, every span recorded, and
//! secrets kept out of all of them.

mod common;

use common::spans::SpanLog;
use common::traced::TracedUsers;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use serde_json::Value;
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::deadline::DeadlineLayer;
use steadfast::trace::TraceLayer;
use steadfast_examples::pb::order::order_service_client::OrderServiceClient;
use steadfast_examples::pb::order::order_service_server::{OrderService, OrderServiceServer};
use steadfast_examples::pb::order::{CreateOrderRequest, GetOrderRequest, Order};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

// ---------- log capture ----------

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>, Arc<tokio::sync::watch::Sender<u64>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        self.1.send_modify(|n| *n += 1);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The JSON log lines and the spans of this thread, until the guard is dropped.
fn capture() -> (Capture, SpanLog, tracing::subscriber::DefaultGuard) {
    let logs = Capture::default();
    let writer = logs.clone();
    let spans = SpanLog::default();
    let guard = tracing::subscriber::set_default(tracing_subscriber::layer::SubscriberExt::with(
        steadfast::telemetry::subscriber(move || writer.clone()),
        spans.clone(),
    ));
    (logs, spans, guard)
}

impl Capture {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
    fn lines_text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// The lines with `needle`, once there are `n` of them (written by other tasks).
    async fn until(&self, needle: &str, n: usize) -> Vec<Value> {
        let mut written = self.1.subscribe();
        let wait = async {
            loop {
                let lines = self.with_message(needle);
                if lines.len() >= n {
                    return lines;
                }
                written.changed().await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("no {n} `{needle}` lines in {}", self.lines_text()))
    }

    fn with_message(&self, needle: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            .collect()
    }
}

// ---------- user-svc: common::traced::TracedUsers ----------

// ---------- order-svc ----------

#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

struct OrderSvc {
    users: UsersClient,
}

/// A plain async fn: its span is a child of the handler's.
#[steadfast::traced]
async fn audit(order_id: u64) {
    tracing::info!(order_id, "audit record written");
}

#[tonic::async_trait]
impl OrderService for OrderSvc {
    #[steadfast::traced]
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let req = request.into_inner();
        let user = self
            .users
            .get_user(GetUserRequest { id: req.user_id })
            .await?;
        // A spawned task keeps the trace through steadfast::spawn.
        steadfast::spawn(async { tracing::info!("spawned task ran") })
            .await
            .unwrap();
        audit(7).await;
        tracing::info!(user = %user.name, "order created");
        Ok(Response::new(Order {
            id: 7,
            user_id: req.user_id,
            user_name: user.name,
            item: req.item,
            quantity: req.quantity,
        }))
    }

    #[steadfast::traced]
    async fn get_order(
        &self,
        _request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

// ---------- gateway ----------

#[steadfast::resilient_client(service = "order-svc", client = OrderServiceClient)]
trait Orders {
    async fn create_order(&self, req: CreateOrderRequest) -> Result<Order, Status>;
}

#[steadfast::traced(service = "gateway", skip(orders))]
async fn post_order(
    orders: axum::extract::State<OrdersClient>,
    headers: axum::http::HeaderMap,
) -> Result<String, axum::http::StatusCode> {
    let _ = headers;
    tracing::info!("gateway handling order");
    let order = orders
        .create_order(CreateOrderRequest {
            user_id: 42,
            item: "book".into(),
            quantity: 1,
        })
        .await
        .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
    Ok(format!("order {} for {}", order.id, order.user_name))
}

async fn metrics() -> String {
    steadfast::metrics::render()
}

// ---------- plumbing ----------

async fn serve_grpc<S>(svc: S) -> String
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(TraceLayer::new())
            .layer(DeadlineLayer::new())
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

async fn http(addr: SocketAddr, request: String) -> (u16, Vec<(String, String)>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn post_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "POST /orders HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn one_trace_id_across_gateway_order_and_user_services() {
    let (logs, spans, _guard) = capture();

    let user_url = serve_grpc(UserServiceServer::new(TracedUsers)).await;
    let cfg = |url: String| {
        ClientConfig::endpoints([url])
            .unwrap()
            .downstreams(Downstreams::new())
    };
    let users = UsersClient::connect(cfg(user_url)).await.unwrap();
    let order_url = serve_grpc(OrderServiceServer::new(OrderSvc { users })).await;
    let orders = OrdersClient::connect(cfg(order_url)).await.unwrap();
    let app = axum::Router::new()
        .route("/orders", post(post_order))
        .route("/metrics", get(metrics))
        .with_state(orders)
        .layer(TraceLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // 1. No trace from the caller: the gateway starts one and returns it.
    let (status, headers, body) = http(addr, post_request(addr, "")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "order 7 for user-42");
    let trace_id = header(&headers, "x-trace-id").expect("x-trace-id on the response");
    assert_eq!(trace_id.len(), 32);

    let one = |msg: &str| {
        let lines = logs.with_message(msg);
        assert_eq!(lines.len(), 1, "one `{msg}` line in {:#?}", logs.lines());
        lines.into_iter().next().unwrap()
    };
    let gateway = one("gateway handling order");
    let order = one("order created");
    let user = one("looking up user");
    let spawned = one("spawned task ran");
    let audit = one("audit record written");
    for line in [&gateway, &order, &user, &spawned, &audit] {
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    }
    // Each hop's parent is the caller's attempt span, a child of the caller's call span, a
    // child of the caller's own span; the client spans are named as gRPC names them.
    let client_chain = |callee: &Value, caller: &Value, service: &str, method: &str| {
        let attempt = spans
            .by_span_id(callee["parent_span_id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("the parent of {callee} is a recorded span"));
        assert_eq!(attempt.name, "grpc.attempt", "{attempt:?}");
        assert_eq!(attempt.get("rpc.grpc.attempt"), Some("1"), "{attempt:?}");
        assert_eq!(
            attempt.get("rpc.grpc.status_code"),
            Some("0"),
            "{attempt:?}"
        );
        assert_eq!(attempt.get("trace_id"), caller["trace_id"].as_str());
        let call = spans
            .by_span_id(attempt.get("parent_span_id").unwrap())
            .expect("the attempt's parent is the call span");
        assert_eq!(call.name, "grpc.client", "{call:?}");
        assert_eq!(attempt.parent, Some(call.id), "the tracing parents agree");
        assert_eq!(
            call.get("parent_span_id"),
            caller["span_id"].as_str(),
            "{call:?}"
        );
        assert_eq!(call.get("rpc.system"), Some("grpc"));
        // Learned from tonic on the first call: no `grpc_service` was given.
        assert_eq!(call.get("rpc.service"), Some(service), "{call:?}");
        assert_eq!(call.get("rpc.method"), Some(method), "{call:?}");
        assert_eq!(call.get("otel.kind"), Some("client"));
        assert_eq!(call.get("rpc.grpc.status_code"), Some("0"));
    };
    client_chain(&order, &gateway, "order.OrderService", "CreateOrder");
    client_chain(&user, &order, "user.UserService", "GetUser");
    assert_ne!(order["span_id"], user["span_id"]);
    // The server spans carry the gRPC names from the request path, and no message content.
    let rpc = spans.named("rpc");
    let user_rpc = rpc
        .iter()
        .find(|s| s.get("span_id") == user["span_id"].as_str())
        .expect("user-svc's rpc span");
    assert_eq!(user_rpc.get("rpc.service"), Some("user.UserService"));
    assert_eq!(user_rpc.get("rpc.method"), Some("GetUser"));
    assert_eq!(user_rpc.get("otel.name"), Some("user.UserService/GetUser"));
    // The server layer's span is the hop's server span; the handler's is inside it.
    assert_eq!(user_rpc.get("otel.kind"), Some("internal"));
    let request = spans
        .spans()
        .into_iter()
        .find(|s| s.name == "request" && s.get("span_id") == user["span_id"].as_str())
        .expect("user-svc's request span");
    assert_eq!(request.get("otel.kind"), Some("server"));
    assert_eq!(request.get("otel.name"), Some("user.UserService/GetUser"));
    assert_eq!(request.get("rpc.service"), Some("user.UserService"));
    assert_eq!(user_rpc.get("rpc.grpc.status_code"), Some("0"));
    assert_eq!(user_rpc.get("client.address"), Some("127.0.0.1"));
    assert!(
        user_rpc
            .get("message_type")
            .is_some_and(|t| t.ends_with("GetUserRequest")),
        "{user_rpc:?}"
    );
    assert!(
        user_rpc.get("request").is_none(),
        "the request is never recorded"
    );
    // A plain fn's span is a child of the handler's span; a spawned task stays in the span.
    assert_eq!(audit["parent_span_id"], order["span_id"]);
    assert_eq!(spawned["span_id"], order["span_id"]);
    // The tonic handler logged its end with a code.
    let finished: Vec<_> = logs.with_message("get_user finished");
    assert!(
        finished
            .iter()
            .any(|l| l["trace_id"] == trace_id.as_str() && l["fields"]["code"] == "Ok"),
        "{finished:#?}"
    );

    // 2. A caller-supplied X-Trace-ID (a UUID) is continued by all three services.
    let uuid = "123e4567-e89b-12d3-a456-426614174000";
    let (status, headers, _) =
        http(addr, post_request(addr, &format!("x-trace-id: {uuid}\r\n"))).await;
    assert_eq!(status, 200);
    let continued = uuid.replace('-', "");
    assert_eq!(
        header(&headers, "x-trace-id").as_deref(),
        Some(continued.as_str())
    );
    let with_id: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["trace_id"] == continued.as_str())
        .collect();
    for msg in ["gateway handling order", "order created", "looking up user"] {
        assert!(
            with_id.iter().any(|l| l["message"] == msg),
            "`{msg}` carries the caller's id"
        );
    }

    // 3. An invalid traceparent starts a new trace and is logged escaped, never raw.
    let (status, headers, _) = http(
        addr,
        post_request(addr, "traceparent: 00-zz\u{e9}vil-01\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let fresh = header(&headers, "x-trace-id").unwrap();
    assert_ne!(fresh, trace_id);
    let warned = logs.with_message("ignoring invalid traceparent");
    assert!(!warned.is_empty());
    assert!(
        warned.iter().all(|l| !l.to_string().contains('\u{e9}')),
        "raw bytes never reach a log line"
    );
    assert!(
        warned
            .iter()
            .any(|l| l.to_string().contains("\\\\xc3\\\\xa9")),
        "shown escaped: {warned:?}"
    );

    // 4. /metrics has the trace id as an exemplar, never as a label.
    let (_, _, text) = http(
        addr,
        format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        text.contains(&format!("trace_id=\"{trace_id}\""))
            || text.contains(&format!("trace_id=\"{continued}\""))
            || text.contains(&format!("trace_id=\"{fresh}\"")),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line.split(" # ").next().unwrap();
        assert!(
            !labels.contains("trace_id"),
            "trace_id must not be a label: {line}"
        );
        if line.contains(" # {trace_id=") {
            assert!(
                line.starts_with("steadfast_") || line.starts_with("rpc_"),
                "{line}"
            );
        }
    }
    // Client and server series of one call join on (rpc_service, rpc_method).
    for (service, method) in [
        ("order.OrderService", "CreateOrder"),
        ("user.UserService", "GetUser"),
    ] {
        for side in ["client", "server"] {
            let series = format!(
                "rpc_{side}_duration_seconds_count{{rpc_service=\"{service}\",rpc_method=\"{method}\",rpc_grpc_status_code=\"0\"}}"
            );
            assert!(text.contains(&series), "{series} in {text}");
        }
    }
}

/// A plain fn given the whole tonic request: `#[traced]` never records it (it carries
/// metadata), whatever the options say.
#[steadfast::traced]
async fn inspect(request: &Request<GetUserRequest>, note: &str) -> usize {
    request.metadata().len() + note.len()
}

/// Headers inside another type are not recorded either.
#[steadfast::traced]
async fn peek(headers: Option<http::HeaderMap>, id: u64) -> u64 {
    headers.map_or(0, |h| h.len() as u64) + id
}

#[tokio::test]
async fn a_bearer_token_reaches_no_log_line_no_span_field_and_no_exported_span() {
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    const SECRET: &str = "sekrit";
    let json = Capture::default();
    let stock = Capture::default();
    let spans = SpanLog::default();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "secrets");
    let (json_w, stock_w) = (json.clone(), stock.clone());
    let subscriber = steadfast::telemetry::subscriber(move || json_w.clone())
        .with(spans.clone())
        .with(
            // A stock fmt layer prints every span field on every line.
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || stock_w.clone()),
        )
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    let _guard = tracing::subscriber::set_default(subscriber);

    // A gRPC handler called with an authorization header, straight from tonic.
    let user_url = serve_grpc(UserServiceServer::new(TracedUsers)).await;
    let mut raw = UserServiceClient::connect(user_url.clone()).await.unwrap();
    let mut request = Request::new(GetUserRequest { id: 5 });
    let bearer = format!("Bearer {SECRET}");
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-api-key", SECRET.parse().unwrap());
    let reply = raw.get_user(request).await.unwrap().into_inner();
    assert_eq!(reply.name, "user-5");

    // An HTTP handler with a HeaderMap argument.
    let users = UsersClient::connect(
        ClientConfig::endpoints([user_url])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let order_url = serve_grpc(OrderServiceServer::new(OrderSvc { users })).await;
    let orders = OrdersClient::connect(
        ClientConfig::endpoints([order_url])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let app = axum::Router::new()
        .route("/orders", post(post_order))
        .with_state(orders)
        .layer(TraceLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (status, _, body) = http(
        addr,
        post_request(
            addr,
            &format!("authorization: {bearer}\r\ncookie: session={SECRET}\r\n"),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A plain fn handed the request itself.
    let mut request = Request::new(GetUserRequest { id: 1 });
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    assert_eq!(inspect(&request, "n").await, 2);
    let mut wrapped = http::HeaderMap::new();
    wrapped.insert("authorization", bearer.parse().unwrap());
    assert_eq!(peek(Some(wrapped), 1).await, 2);
    provider.force_flush().unwrap();

    // The handlers ran and were recorded: the checks below can see a leak.
    let recorded = spans.spans();
    assert!(recorded.iter().any(|s| s.name == "rpc"), "{recorded:?}");
    assert!(recorded.iter().any(|s| s.name == "post_order"));
    let inspected = spans.named("inspect");
    assert_eq!(inspected.len(), 1);
    assert_eq!(
        inspected[0].get("note"),
        Some("\"n\""),
        "other arguments still recorded"
    );
    let peeked = spans.named("peek");
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].get("id"), Some("1"));
    assert!(peeked[0].get("headers").is_none());
    let exported = exporter.get_finished_spans().unwrap();
    assert!(
        exported
            .iter()
            .any(|s| s.name == "user.UserService/GetUser")
    );
    assert!(!stock.lines_text().is_empty() && !json.lines_text().is_empty());

    assert!(!json.lines_text().contains(SECRET), "JSON logs");
    assert!(!stock.lines_text().contains(SECRET), "stock fmt logs");
    for span in &recorded {
        for (field, value) in &span.fields {
            assert!(!value.contains(SECRET), "span {} field {field}", span.name);
        }
    }
    for span in &exported {
        assert!(
            !format!("{span:?}").contains(SECRET),
            "exported {}",
            span.name
        );
    }
}

#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient, timeout = "5s")]
trait UserStreams {
    async fn list_users(
        &self,
        req: steadfast_examples::pb::user::ListUsersRequest,
    ) -> Result<tonic::Streaming<GetUserReply>, Status>;
}

#[tokio::test]
async fn a_traced_streaming_handler_keeps_its_span_until_the_stream_ends() {
    let (logs, spans, _guard) = capture();
    let user_url = serve_grpc(UserServiceServer::new(TracedUsers)).await;
    let users = UserStreamsClient::connect(
        ClientConfig::endpoints([user_url])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let request = |count| steadfast_examples::pb::user::ListUsersRequest {
        from_id: 1,
        count,
        interval_ms: 40,
    };

    // A stream of 3 users, 40 ms apart.
    let mut stream = users.list_users(request(3)).await.unwrap();
    let mut got = Vec::new();
    while let Some(user) = stream.message().await.unwrap() {
        got.push(user.id);
    }
    assert_eq!(got, [1, 2, 3]);
    let listing = logs.with_message("listing users");
    let trace_id = listing[0]["trace_id"].as_str().unwrap().to_owned();
    let produced = logs.with_message("producing user");
    assert_eq!(produced.len(), 3, "{}", logs.lines_text());
    for line in &produced {
        // Each message is produced inside the handler's span and its context.
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
        assert_eq!(line["span_id"], listing[0]["span_id"], "{line}");
        assert_eq!(line["fields"]["context_trace"], trace_id.as_str(), "{line}");
    }
    // The handler's call ends with its stream: after the last message, with its duration.
    let finished = logs.until("list_users finished", 1).await.remove(0);
    assert_eq!(finished["fields"]["code"], "Ok", "{finished}");
    assert!(
        finished["fields"]["latency_ms"].as_f64().unwrap() >= 110.0,
        "the span covers the whole stream: {finished}"
    );
    let text = logs.lines_text();
    assert!(
        text.find("list_users finished").unwrap() > text.rfind("producing user").unwrap(),
        "{text}"
    );
    let handler = spans
        .named("rpc")
        .into_iter()
        .find(|s| s.get("span_id") == listing[0]["span_id"].as_str())
        .expect("the handler's span");
    assert_eq!(
        handler.get("rpc.grpc.status_code"),
        Some("0"),
        "{handler:?}"
    );

    // A stream the caller drops after its first message ends CANCELLED.
    let mut stream = users.list_users(request(50)).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    let cancelled = logs.until("list_users finished", 2).await.remove(1);
    assert_eq!(cancelled["fields"]["code"], "Cancelled", "{cancelled}");
}
