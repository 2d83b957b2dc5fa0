//! `/metrics` as real scrapers read it: `promtool check metrics` accepts what a plain
//! scrape gets (the classic text format), and a real Prometheus, which asks for OpenMetrics,
//! stores exemplars that carry the caller's trace id, on the client and the server series
//! of one call, which join on (`rpc_service`, `rpc_method`).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::traced::TracedUsers;
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::deadline::DeadlineLayer;
use steadfast::trace::{TraceContext, TraceLayer};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Status;

#[steadfast::resilient_client(service = "prom-user-svc", client = UserServiceClient)]
trait UsersApi {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/1.0 GET (no chunked answers): the status, the headers and the body.
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new(), String::new());
    };
    let accept = accept
        .map(|a| format!("accept: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n{accept}\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new(), String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, String::new(), String::new());
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn promtool_accepts_the_metrics_and_prometheus_stores_the_callers_trace_id() {
    // One user service and a resilient client, three calls in one known trace.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(TraceLayer::new())
            .layer(DeadlineLayer::new())
            .add_service(UserServiceServer::new(TracedUsers))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = UsersApiClient::connect(
        ClientConfig::endpoints([url])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let trace = TraceContext::new_root();
    let trace_id = trace.trace_id().to_string();
    steadfast::Context::new()
        .with_trace(trace)
        .scope(async {
            for id in 1..=3 {
                client.get_user(GetUserRequest { id }).await.unwrap();
            }
        })
        .await;

    // /metrics, remembering what each scraper asked for.
    let accepts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = accepts.clone();
    let app = steadfast::metrics::router().layer(tower::util::MapRequestLayer::new(
        move |req: http::Request<axum::body::Body>| {
            let accept = req
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            seen.lock().unwrap().push(accept);
            req
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // 1. A plain scrape gets the classic format, and promtool accepts it.
    let (status, head, text) = get(metrics_addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for side in ["client", "server"] {
        let series = format!(
            "rpc_{side}_duration_seconds_count{{rpc_service=\"user.UserService\",rpc_method=\"GetUser\",rpc_grpc_status_code=\"0\"}} 3"
        );
        assert!(text.contains(&series), "{series} in {text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. A real Prometheus with exemplar storage scrapes it every second.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: steadfast\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package) is installed"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for side in ["client", "server"] {
        let query = format!(
            "/api/v1/query_exemplars?query=rpc_{side}_duration_seconds_bucket&start={}&end={}",
            now - 600,
            now + 600
        );
        let found = loop {
            let (status, _, body) = get(web, &query, None).await;
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let ids: Vec<String> = v["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|series| series["seriesLabels"]["rpc_service"] == "user.UserService")
                    .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
                    .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
                    .collect();
                if !ids.is_empty() {
                    break ids;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {side} exemplar stored (last answer {status}: {body})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            found.contains(&trace_id),
            "{side}: {found:?} has {trace_id}"
        );
    }
    let asked = accepts.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|a| a.contains("application/openmetrics-text")),
        "Prometheus asked for OpenMetrics: {asked:?}"
    );
}
