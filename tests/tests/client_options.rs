//! What a generated client takes from tonic besides the message: an interceptor, compression,
//! message size limits, and any tower service as its transport; against a real tonic server
//! on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Action, Scripted, serve, serve_with};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

#[steadfast::resilient_client(
    service = "user-svc-options",
    client = UserServiceClient,
    timeout = "2s",
    retry(max_attempts = 3, initial_backoff = "10ms", max_backoff = "50ms"),
    breaker(min_failures = 10000),
)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

fn config(url: &str) -> ClientConfig {
    ClientConfig::endpoints([url])
        .unwrap()
        .downstreams(Downstreams::new())
}

#[tokio::test]
async fn the_interceptor_adds_metadata_to_every_attempt_and_can_refuse_a_call() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let users = UsersClient::connect(config(&server.url()).interceptor(|mut req| {
        req.metadata_mut()
            .insert("x-tenant", "acme".parse().unwrap());
        Ok(req)
    }))
    .await
    .unwrap();
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    let seen = svc.seen();
    assert_eq!(seen.len(), 2, "one retry");
    assert!(
        seen.iter().all(|s| s.tenant.as_deref() == Some("acme")),
        "{seen:?}"
    );

    // A refusal ends the call before any attempt.
    let refusing = UsersClient::connect(
        config(&server.url()).interceptor(|_| Err(Status::unauthenticated("no token"))),
    )
    .await
    .unwrap();
    let err = refusing
        .get_user(GetUserRequest { id: 2 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(svc.calls(), 2, "nothing was sent");
    assert_eq!(refusing.core().breaker().counts().requests, 0);
}

#[tokio::test]
async fn requests_are_sent_compressed_and_compressed_replies_accepted() {
    let svc = Scripted::new([Action::Ok]);
    let server = serve_with(
        UserServiceServer::new(svc.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip),
    )
    .await;
    let users = UsersClient::connect(
        config(&server.url())
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip),
    )
    .await
    .unwrap();
    let reply = users.get_user(GetUserRequest { id: 3 }).await.unwrap();
    assert_eq!(reply.name, "user-3");
    assert_eq!(svc.seen()[0].encoding.as_deref(), Some("gzip"));

    // A server that does not accept gzip refuses the compressed request: it really was.
    let plain = Scripted::new([Action::Ok]);
    let plain_server = serve(plain.clone()).await;
    let users = UsersClient::connect(
        config(&plain_server.url()).send_compressed(CompressionEncoding::Gzip),
    )
    .await
    .unwrap();
    let err = users.get_user(GetUserRequest { id: 3 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test]
async fn message_size_limits_apply() {
    let svc = Scripted::new([Action::Ok]);
    let server = serve(svc.clone()).await;
    // The reply ("user-123456789" and the id) is larger than 8 bytes.
    let small = UsersClient::connect(config(&server.url()).max_decoding_message_size(8).unwrap())
        .await
        .unwrap();
    let err = small
        .get_user(GetUserRequest { id: 123456789 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("message length too large"),
        "{err:?}"
    );

    let roomy = UsersClient::connect(
        config(&server.url())
            .max_decoding_message_size(1024)
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        roomy
            .get_user(GetUserRequest { id: 123456789 })
            .await
            .unwrap()
            .name,
        "user-123456789"
    );

    let err = ClientConfig::endpoints([server.url()])
        .unwrap()
        .max_encoding_message_size(0)
        .unwrap_err();
    assert!(
        err.to_string().contains("max_encoding_message_size"),
        "{err}"
    );
}

#[tokio::test]
async fn any_tower_service_can_be_the_transport() {
    let svc = Scripted::new([Action::Fail(Code::Unavailable), Action::Ok]);
    let server = serve(svc.clone()).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect_lazy();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    // A transport of the user's own: here it counts requests and hands them to a tonic channel.
    let transport = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        tower::ServiceExt::oneshot(channel.clone(), req)
    });
    let users =
        UsersClient::connect(ClientConfig::transport(transport).downstreams(Downstreams::new()))
            .await
            .unwrap();
    let reply = users.get_user(GetUserRequest { id: 4 }).await.unwrap();
    assert_eq!(reply.name, "user-4");
    assert_eq!(
        sent.load(Ordering::SeqCst),
        2,
        "both attempts went through it"
    );
    assert_eq!(svc.calls(), 2);
}

#[steadfast::resilient_client(service = "orders-options", client = UserServiceClient, timeout = "2s")]
trait Orders {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// Serves the scripted user service, counting the TCP connections it accepts.
async fn serve_counting() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let incoming = async_stream_incoming(listener, count);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(Scripted::new([Action::Ok])))
            .serve_with_incoming(incoming),
    );
    (addr, accepted)
}

fn async_stream_incoming(
    listener: tokio::net::TcpListener,
    count: Arc<AtomicUsize>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |conn| {
        count.fetch_add(1, Ordering::SeqCst);
        conn
    })
}

#[tokio::test]
async fn clients_of_different_services_share_one_connection_when_asked() {
    use steadfast::registry::{Instance, MemoryRegistry, Registry};
    let (addr, accepted) = serve_counting().await;
    let url = format!("http://{addr}");
    let downstreams = Downstreams::new();
    let shared = |c: ClientConfig| c.downstreams(downstreams.clone()).share_connections(true);
    let users = UsersClient::connect(shared(ClientConfig::endpoints([&url]).unwrap()))
        .await
        .unwrap();
    let orders = OrdersClient::connect(shared(ClientConfig::endpoints([&url]).unwrap()))
        .await
        .unwrap();
    // Two discovered services whose instances live at the same address, too.
    let registry = Arc::new(MemoryRegistry::new());
    for service in ["user-svc-options", "orders-options"] {
        registry
            .register(&Instance::new(service, "i1", url.as_str()))
            .await
            .unwrap();
    }
    let users_found = UsersClient::connect(shared(ClientConfig::discover(registry.clone())))
        .await
        .unwrap();
    let orders_found = OrdersClient::connect(shared(ClientConfig::discover(registry.clone())))
        .await
        .unwrap();
    for id in 1..=3 {
        users.get_user(GetUserRequest { id }).await.unwrap();
        orders.get_user(GetUserRequest { id }).await.unwrap();
        users_found.get_user(GetUserRequest { id }).await.unwrap();
        orders_found.get_user(GetUserRequest { id }).await.unwrap();
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "four clients, one connection"
    );

    // Without sharing, each client has its own.
    let (addr, accepted) = serve_counting().await;
    let url = format!("http://{addr}");
    let own = |c: ClientConfig| c.downstreams(downstreams.clone());
    let users = UsersClient::connect(own(ClientConfig::endpoints([&url]).unwrap()))
        .await
        .unwrap();
    let orders = OrdersClient::connect(own(ClientConfig::endpoints([&url]).unwrap()))
        .await
        .unwrap();
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    orders.get_user(GetUserRequest { id: 1 }).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
