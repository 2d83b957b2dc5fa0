//! The user-svc binary with the command-line contract: `--registry etcd://..`,
//! `--lease-ttl`, `--instance-id`, `--grpc-addr`; it prints its addresses, registers in etcd
//! while healthy, and leaves etcd at once on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[allow(dead_code)]
#[path = "../../tests/tests/common/etcd.rs"]
mod etcd;

#[tokio::test]
async fn user_svc_registers_in_etcd_serves_and_leaves_on_sigterm() {
    let etcd = etcd::Etcd::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_user-svc"))
        .args([
            "--registry",
            &etcd.url(""),
            "--lease-ttl",
            "3s",
            "--instance-id",
            "u7",
        ])
        .args(["--grpc-addr", "127.0.0.1:0", "--drain", "100ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("user-svc u7 grpc=127.0.0.1:"), "{first}");
    assert!(first.contains(" http=127.0.0.1:"), "{first}");
    let grpc = first
        .split("grpc=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();

    // Registered once healthy, with its real address.
    let key = "/steadfast/services/user-svc/u7";
    let mut c = etcd.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let value = loop {
        if let Some(kv) = c.get(key, None).await.unwrap().kvs().first() {
            break String::from_utf8(kv.value().to_vec()).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(value.contains(&format!("http://{grpc}")), "{value}");

    // It serves.
    let mut client = steadfast_examples::pb::user::user_service_client::UserServiceClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .unwrap();
    let reply = client
        .get_user(steadfast_examples::pb::user::GetUserRequest { id: 5 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.served_by, "u7");

    // SIGTERM: the key vanishes at once (lease revoked), and the process exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    assert!(
        c.get(key, None).await.unwrap().kvs().is_empty(),
        "deregistered before exit"
    );
}
