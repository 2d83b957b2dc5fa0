//! Connection set-up: TLS from PEM files on both sides, eager and lazy connect.

mod common;

use common::{Action, Scripted, serve};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::tls::{ClientTls, ServerTls};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tokio::net::TcpListener;
use tonic::Status;

#[steadfast::resilient_client(service = "tls-user-svc", client = UserServiceClient)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

#[steadfast::resilient_client(service = "tls-user-svc-short", client = UserServiceClient)]
trait ShortUsers {
    #[timeout = "500ms"]
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// A peer that accepts connections and never says a word, as a frozen process does (its
/// kernel still completes the TCP handshake); returns its port and how many it accepted.
async fn silent_peer() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(socket);
        }
    });
    (port, accepted)
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and a server certificate for `localhost`, written as PEM files.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test]
async fn tls_from_pem_files_on_both_sides() {
    let pki = Pki::new();
    let tls = ServerTls::from_pem_files(pki.path("server.pem"), pki.path("server.key")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = Scripted::new([Action::Ok]);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls.into_tonic())
            .unwrap()
            .add_service(UserServiceServer::new(svc.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client_tls = ClientTls::from_pem_files(pki.path("ca.pem")).unwrap();
    let config = ClientConfig::endpoints([format!("https://localhost:{port}")])
        .unwrap()
        .tls(client_tls)
        .eager(true)
        .downstreams(Downstreams::new());
    let users = UsersClient::connect(config)
        .await
        .expect("TLS handshake succeeds");
    let reply = users.get_user(GetUserRequest { id: 9 }).await.unwrap();
    assert_eq!(reply.id, 9);
    assert_eq!(svc.calls(), 1);
}

#[tokio::test]
async fn eager_connect_fails_fast_when_tls_is_refused() {
    // A plaintext server: the TLS handshake cannot succeed, and waiting will not fix it.
    let pki = Pki::new();
    let server = serve(Scripted::new([Action::Ok])).await;
    let client_tls = ClientTls::from_pem_files(pki.path("ca.pem")).unwrap();
    let config = ClientConfig::endpoints([format!("https://localhost:{}", server.addr.port())])
        .unwrap()
        .tls(client_tls)
        .eager(true);
    let err = UsersClient::connect(config).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, steadfast::Error::Connect { .. }), "{msg}");
    assert!(
        msg.contains("tls-user-svc") && msg.contains("localhost"),
        "{msg}"
    );
}

/// A client of the silent peer on `port` over TLS, trusting `pki`'s CA, with its own
/// downstreams (the default connect timeout).
fn silent_tls_peer_config(pki: &Pki, port: u16) -> ClientConfig {
    ClientConfig::endpoints([format!("https://localhost:{port}")])
        .unwrap()
        .tls(ClientTls::from_pem_files(pki.path("ca.pem")).unwrap())
        .downstreams(Downstreams::new())
}

#[tokio::test]
async fn a_tls_handshake_that_never_answers_ends_at_the_connect_timeout() {
    // The TLS handshake with a silent peer would wait forever.
    let pki = Pki::new();
    let (port, accepted) = silent_peer().await;
    let config = silent_tls_peer_config(&pki, port)
        .connect_timeout(std::time::Duration::from_millis(200))
        .unwrap();
    let users = UsersClient::connect(config).await.unwrap();
    let started = std::time::Instant::now();
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    // Each connection is given up after 200 ms and the call fails as never sent, well
    // before its 10 s deadline.
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        accepted.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "connected again"
    );
}

#[tokio::test]
async fn a_call_keeps_its_deadline_while_its_connection_is_being_made() {
    // The connect timeout (5 s) is longer than the call's deadline (500 ms): the call
    // must not wait for the connection past its deadline.
    let pki = Pki::new();
    let (port, _) = silent_peer().await;
    let users = ShortUsersClient::connect(silent_tls_peer_config(&pki, port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= std::time::Duration::from_millis(500) && took < std::time::Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn eager_connect_to_a_server_not_yet_up_falls_back_to_lazy() {
    // Reserve a port, then free it: connecting is refused, which is temporary.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = ClientConfig::endpoints([format!("http://127.0.0.1:{port}")])
        .unwrap()
        .eager(true)
        .downstreams(Downstreams::new());
    let users = UsersClient::connect(config)
        .await
        .expect("refused is temporary");
    // Now the server comes up on that port, and the same client reaches it.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let svc = Scripted::new([Action::Ok]);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(svc.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    assert_eq!(svc.calls(), 1);
}

#[test]
fn bad_pem_files_are_named_at_start_up() {
    let pki = Pki::new();
    let err = ClientTls::from_pem_files(pki.path("missing.pem")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // A key where a certificate belongs.
    let err = ClientTls::from_pem_files(pki.path("server.key")).unwrap_err();
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    let err = ServerTls::from_pem_files(pki.path("server.pem"), pki.path("ca.pem")).unwrap_err();
    assert!(err.to_string().contains("private key"), "{err}");
}

#[test]
fn invalid_client_config_names_the_field() {
    let err = ClientConfig::endpoints(["http://127.0.0.1:1", "localhost:50051"]).unwrap_err();
    assert!(err.to_string().contains("endpoints[1]"), "{err}");
    let err = ClientConfig::endpoints(Vec::<String>::new()).unwrap_err();
    assert!(err.to_string().contains("endpoints"), "{err}");
    let err = ClientConfig::endpoints(["http://127.0.0.1:1"])
        .unwrap()
        .connect_timeout(std::time::Duration::ZERO)
        .unwrap_err();
    assert!(err.to_string().contains("connect_timeout"), "{err}");
}
