//! The example binaries at their edges: a bad flag is one sentence naming the flag and its
//! value, a slow request head is cut off, and every HTTP rejection has a JSON body.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

mod common;

use common::{Proc, field};

/// Runs `bin` to its end; returns whether it succeeded and what it printed on stderr.
fn fails(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{bin} {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// Starts `bin`; returns it with the address after `http=` in its start line.
fn start(bin: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let (proc, line) = common::start(bin, args, &[("RUST_LOG", "warn")]);
    (proc, field(&line, "http").parse().unwrap())
}

/// Sends `head` (and `body`), returns the status, the content type and the body.
async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before it has read a large body.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{text}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[test]
fn a_bad_flag_is_one_sentence_naming_the_flag_and_its_value() {
    let user = env!("CARGO_BIN_EXE_user-svc");
    let cases: [(&str, &[&str], &str); 6] = [
        (
            user,
            &["--registry", "etcd://127.0.0.1:1", "--lease-ttl", "1s"],
            "user-svc: --lease-ttl `1s`: ",
        ),
        (
            user,
            &["--grpc-addr", "999.1.1.1:1"],
            "user-svc: --grpc-addr `999.1.1.1:1`: ",
        ),
        (
            user,
            &["--http-addr", "nowhere"],
            "user-svc: --http-addr `nowhere`: ",
        ),
        (
            user,
            &["--instance-id", "a/b"],
            "user-svc: --instance-id `a/b`: ",
        ),
        (
            user,
            &["--registry", "zk://x:1"],
            "user-svc: --registry `zk://x:1`: ",
        ),
        (
            env!("CARGO_BIN_EXE_order-svc"),
            &["--data-dir", "/proc/x"],
            "order-svc: --data-dir `/proc/x`: ",
        ),
    ];
    for (bin, args, starts) in cases {
        let err = fails(bin, args);
        assert!(err.starts_with(starts), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            !err.contains("Error:") && !err.contains(" { "),
            "no Debug: {err}"
        );
    }
    // A password in the registry URL is not repeated.
    let err = fails(
        user,
        &["--registry", "etcd://127.0.0.1:1?password=s3cret&bogus=1"],
    );
    assert!(err.contains("--registry") && err.contains("bogus"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let (_svc, addr) = start(
        env!("CARGO_BIN_EXE_user-svc"),
        &["--http-header-timeout", "300ms"],
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    // The rest of the head never comes: the server closes the connection.
    let read = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the connection is still open after 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    // A complete request is answered as before.
    let (status, _, _) = request(
        addr,
        "GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_rejection_of_the_gateway_is_json() {
    let (_gw, addr) = start(env!("CARGO_BIN_EXE_gateway"), &[]);
    let big = vec![b'x'; 10 * 1024 * 1024];
    let head = format!(
        "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        big.len()
    );
    let cases = [
        (head, big, 413),
        (
            "GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned(),
            Vec::new(),
            404,
        ),
        (
            "DELETE /orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned(),
            Vec::new(),
            405,
        ),
        (
            "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{bad"
                .to_owned(),
            b"}".to_vec(),
            400,
        ),
    ];
    for (head, body, want) in cases {
        let (status, content_type, body) = request(addr, &head, &body).await;
        assert_eq!(status, want, "{head}: {body}");
        assert_eq!(content_type, "application/json", "{want}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}
