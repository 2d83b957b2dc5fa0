//! The Nacos backend over TLS, against rnacos behind a TLS-terminating proxy on 127.0.0.1.
//!
//! `nacos-sdk` speaks TLS to Nacos only as a build-wide switch (steadfast's feature
//! `nacos-tls`) and reads its CA from the `NACOS_CLIENT_TLS_CA_CERT` variable; its HTTP login
//! trusts the system's store, which `SSL_CERT_FILE` replaces. `scripts/test.sh` builds this
//! file alone with the feature and points both variables at one (empty) file, where the test
//! writes the CA it makes before it connects. The file must exist when the process starts:
//! OpenSSL's probe replaces an `SSL_CERT_FILE` that names no file.
#![cfg(feature = "nacos-tls")]

mod common;

use common::nacos::Nacos;
use common::tls_proxy::TlsProxy;
use steadfast::registry::Instance;

/// The server certificate and key, signed by a CA written where the environment names
/// it; made once for every test of this file (the SDK reads the CA file when it connects).
fn pki() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static PKI: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let ca_path = std::path::PathBuf::from(std::env::var("NACOS_CLIENT_TLS_CA_CERT").expect(
            "NACOS_CLIENT_TLS_CA_CERT names where the test writes its CA: run it through scripts/test.sh",
        ));
        assert_eq!(
            std::env::var_os("SSL_CERT_FILE").as_deref(),
            Some(ca_path.as_os_str()),
            "SSL_CERT_FILE names the same CA, for the HTTP login"
        );
        let dir = ca_path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).unwrap();
        let (ca, cert, key) = common::etcd::pki(dir);
        assert_eq!(ca, ca_path, "the CA is written as ca.pem in that directory");
        (cert, key)
    })
}

/// rnacos behind two TLS proxies (HTTP and gRPC ports), and the `nacos://` URL that reaches
/// it through them.
async fn behind_tls(
    nacos: &Nacos,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (TlsProxy, TlsProxy, String) {
    let http = TlsProxy::start(nacos.http_port, cert, key, &[b"http/1.1"]).await;
    let grpc = TlsProxy::start(nacos.grpc_port, cert, key, &[b"h2"]).await;
    let url = format!(
        "nacos://127.0.0.1:{}?grpc_port={}&tls=1",
        http.port, grpc.port
    );
    (http, grpc, url)
}

#[tokio::test]
async fn registers_and_discovers_over_tls() {
    let (cert, key) = pki();
    let nacos = Nacos::start().await;
    let (_http, grpc, url) = behind_tls(&nacos, cert, key).await;
    let registry = steadfast::registry::from_url(&url).await.unwrap();
    registry
        .register(&Instance::new("user-svc", "t1", "http://127.0.0.1:7901"))
        .await
        .unwrap();
    let set = registry.watch("user-svc").await.unwrap();
    assert_eq!(set.borrow().len(), 1);
    assert!(set.borrow().contains("t1"));
    assert!(grpc.handshakes() >= 1, "naming went over TLS");
    // Nacos itself lists it (asked in plain HTTP, straight at the server).
    let (status, body) = nacos
        .http("GET", "/nacos/v1/ns/instance/list?serviceName=user-svc", "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("7901"), "{body}");
}

#[tokio::test]
async fn logs_in_over_tls_and_registers() {
    let (cert, key) = pki();
    let nacos = Nacos::start_with_auth("ops", "s3cret").await;
    let (http, grpc, url) = behind_tls(&nacos, cert, key).await;
    let registry = steadfast::registry::from_url(&format!("{url}&username=ops&password=s3cret"))
        .await
        .unwrap();
    registry
        .register(&Instance::new("user-svc", "t2", "http://127.0.0.1:7902"))
        .await
        .unwrap();
    let set = registry.watch("user-svc").await.unwrap();
    assert_eq!(set.borrow().len(), 1);
    assert!(http.handshakes() >= 1, "the login went over TLS");
    assert!(grpc.handshakes() >= 1, "naming went over TLS");
}

#[tokio::test]
async fn a_build_with_tls_refuses_a_plain_url_naming_the_feature() {
    let err = steadfast::registry::from_url("nacos://127.0.0.1:8848?tls=0")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("registry.nacos.tls") && err.contains("`nacos-tls`"),
        "{err}"
    );
}
