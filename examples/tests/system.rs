//! The three example binaries as separate processes over a real etcd, and over a real
//! Nacos-protocol server: gateway -> order-svc -> user-svc, each started with the
//! command-line contract.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{Proc, field};

#[allow(dead_code)]
#[path = "../../tests/tests/common/etcd.rs"]
mod etcd;

#[allow(dead_code)]
#[path = "../../tests/tests/common/nacos.rs"]
mod nacos;

/// Starts `bin` with quiet logs.
fn start(bin: &str, args: &[&str]) -> (Proc, String) {
    common::start(bin, args, &[("RUST_LOG", "warn")])
}

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn gateway_order_and_user_binaries_work_together_over_etcd() {
    let etcd = etcd::Etcd::start().await;
    chain(&etcd.url("")).await;
}

#[tokio::test]
async fn gateway_order_and_user_binaries_work_together_over_nacos() {
    let nacos = nacos::Nacos::start().await;
    chain(&nacos.url("")).await;
}

async fn chain(registry: &str) {
    let data = tempfile::tempdir().unwrap();
    let common = [
        "--registry",
        registry,
        "--lease-ttl",
        "3s",
        "--drain",
        "100ms",
    ];

    let (_user, line) = start(
        env!("CARGO_BIN_EXE_user-svc"),
        &[&common[..], &["--instance-id", "u1"]].concat(),
    );
    assert!(line.starts_with("user-svc u1 grpc=127.0.0.1:"), "{line}");
    let data_dir = data.path().to_str().unwrap();
    let (_order, line) = start(
        env!("CARGO_BIN_EXE_order-svc"),
        &[
            &common[..],
            &["--instance-id", "o1", "--data-dir", data_dir],
        ]
        .concat(),
    );
    assert!(line.starts_with("order-svc o1 grpc=127.0.0.1:"), "{line}");
    let (_gateway, line) = start(env!("CARGO_BIN_EXE_gateway"), &common);
    let gateway: SocketAddr = field(&line, "http").parse().unwrap();

    // Wait until the chain is discovered end to end (registration happens once healthy).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let created = loop {
        let (code, body) = http(
            gateway,
            "POST",
            "/orders",
            r#"{"user_id": 1, "item": "book", "quantity": 2}"#,
        )
        .await;
        if code == 201 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached 201: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let order: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(order["user_name"], "user-1");
    assert_eq!(order["quantity"], 2);
    let id = order["id"].as_u64().unwrap();

    // Read it back from SQLite through the chain.
    let (code, body) = http(gateway, "GET", &format!("/orders/{id}"), "").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"item\":\"book\""), "{body}");

    // The caller's mistakes are 4xx with a JSON error, never a 500.
    for (method, path, body, want) in [
        ("POST", "/orders", "{not json", 400),
        (
            "POST",
            "/orders",
            r#"{"user_id": 1, "item": "", "quantity": 1}"#,
            400,
        ),
        (
            "POST",
            "/orders",
            r#"{"user_id": 0, "item": "book", "quantity": 1}"#,
            422,
        ),
        ("GET", "/orders/999999", "", 404),
        ("GET", "/orders/abc", "", 400),
    ] {
        let (code, body) = http(gateway, method, path, body).await;
        assert_eq!(code, want, "{method} {path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON error body: {body}"));
        assert!(v["error"].is_string(), "{body}");
    }
}
