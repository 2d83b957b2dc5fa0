//! Deadlines across hops: a deadline shrinks at each hop and is never reset, and servers
//! enforce the deadline they were given.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{record, serve};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserService;
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tonic::{Request, Response, Status};

#[steadfast::resilient_client(service = "next-hop", client = UserServiceClient, timeout = "30s")]
trait NextHop {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// The budget a hop saw: from the `grpc-timeout` header, and from `Context::current()`.
type Budgets = (Option<Duration>, Option<Duration>);

/// Records the incoming `grpc-timeout` and the handler's `Context`, then calls the next hop
/// (if any) after spending `work` of the budget.
#[derive(Clone)]
struct Relay {
    next: Option<NextHopClient>,
    work: Duration,
    seen: Arc<Mutex<Vec<Budgets>>>,
}

#[tonic::async_trait]
impl UserService for Relay {
    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        let header = record(&req).grpc_timeout;
        let ctx = req.extensions().get::<steadfast::Context>();
        assert!(
            ctx.is_some(),
            "the deadline layer puts the Context in the request"
        );
        let from_context = steadfast::Context::current().remaining();
        self.seen.lock().unwrap().push((header, from_context));
        tokio::time::sleep(self.work).await;
        match &self.next {
            Some(next) => next.get_user(req.into_inner()).await.map(Response::new),
            None => Ok(Response::new(GetUserReply::default())),
        }
    }

    async fn create_user(
        &self,
        _: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn list_users(
        &self,
        req: tonic::Request<steadfast_examples::pb::user::ListUsersRequest>,
    ) -> Result<tonic::Response<steadfast_examples::services::user::UserStream>, tonic::Status>
    {
        steadfast_examples::services::user::list_users(req, "relay", None)
    }
}

fn relay(next: Option<NextHopClient>, work: Duration) -> Relay {
    Relay {
        next,
        work,
        seen: Arc::default(),
    }
}

async fn client(url: String) -> NextHopClient {
    NextHopClient::connect(
        ClientConfig::endpoints([url])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_deadline_shrinks_at_each_of_three_hops() {
    let work = Duration::from_millis(50);
    let leaf = relay(None, Duration::ZERO);
    let leaf_server = serve(leaf.clone()).await;
    let middle = relay(Some(client(leaf_server.url()).await), work);
    let middle_server = serve(middle.clone()).await;
    let first = relay(Some(client(middle_server.url()).await), work);
    let first_server = serve(first.clone()).await;

    #[steadfast::resilient_client(service = "edge", client = UserServiceClient, timeout = "2s")]
    trait Edge {
        async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
    }
    let edge = EdgeClient::connect(ClientConfig::endpoints([first_server.url()]).unwrap())
        .await
        .unwrap();
    edge.get_user(GetUserRequest { id: 1 }).await.unwrap();

    let one = |r: &Relay| r.seen.lock().unwrap()[0];
    let (h1, c1) = one(&first);
    let (h2, c2) = one(&middle);
    let (h3, c3) = one(&leaf);
    let (h1, h2, h3) = (h1.unwrap(), h2.unwrap(), h3.unwrap());
    // Each hop's own timeout is 30 s, yet what arrives only ever shrinks.
    assert!(h1 <= Duration::from_secs(2), "{h1:?}");
    assert!(
        h2 <= h1 - work,
        "hop 2 got {h2:?} after hop 1 got {h1:?} and spent {work:?}"
    );
    assert!(
        h3 <= h2 - work,
        "hop 3 got {h3:?} after hop 2 got {h2:?} and spent {work:?}"
    );
    // The handler's Context agrees with the header it came from.
    for (h, c) in [(h1, c1), (h2, c2), (h3, c3)] {
        let c = c.expect("Context::current() has the deadline inside the handler");
        assert!(c <= h, "context {c:?} vs header {h:?}");
    }
}

#[tokio::test]
async fn malformed_grpc_timeout_is_ignored() {
    let leaf = relay(None, Duration::ZERO);
    let server = serve(leaf.clone()).await;
    let mut raw = UserServiceClient::connect(server.url()).await.unwrap();
    let mut req = Request::new(GetUserRequest { id: 1 });
    req.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    raw.get_user(req)
        .await
        .expect("a malformed header does not fail the call");
    let (_, ctx) = leaf.seen.lock().unwrap()[0];
    assert_eq!(ctx, None, "no deadline is derived from a malformed header");
}

#[tokio::test]
async fn a_spawned_call_keeps_the_callers_deadline() {
    let leaf = relay(None, Duration::ZERO);
    let server = serve(leaf.clone()).await;
    let next = client(server.url()).await;
    let ctx = steadfast::Context::new().with_timeout(Duration::from_millis(400));
    // The call is created inside the request's scope but runs on another task.
    let joined = ctx
        .scope(async { tokio::spawn(next.get_user(GetUserRequest { id: 1 })).await })
        .await;
    joined.unwrap().unwrap();
    let (header, _) = leaf.seen.lock().unwrap()[0];
    let header = header.expect("grpc-timeout sent");
    assert!(
        header <= Duration::from_millis(400),
        "the 30 s own timeout did not win: {header:?}"
    );
}

#[tokio::test]
async fn a_server_stream_longer_than_its_deadline_is_cut_at_the_deadline() {
    use steadfast_examples::pb::user::ListUsersRequest;
    let scripted = common::Scripted::default();
    let server = serve(scripted.clone()).await;
    let mut client = UserServiceClient::connect(server.url()).await.unwrap();
    // 25 messages 100 ms apart: 2.5 s, under a 1 s deadline.
    let mut request = Request::new(ListUsersRequest {
        from_id: 1,
        count: 25,
        interval_ms: 100,
    });
    request.set_timeout(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let stream = client.list_users(request).await.unwrap().into_inner();
    let (ids, status) = common::drain(stream).await;
    let received = ids.len();
    let status = status.unwrap_or_else(|| panic!("the stream ran to its end: {received} messages"));
    let took = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .metadata()
            .get(steadfast::deadline::DEADLINE_EXPIRED_KEY)
            .is_some(),
        "the server cut it: {status:?}"
    );
    assert!(
        took >= Duration::from_millis(950) && took <= Duration::from_millis(1050),
        "cut at {took:?}"
    );
    assert!(
        (8..=10).contains(&received),
        "{received} messages before the cut"
    );
    // The handler's producer saw the caller gone.
    scripted.until_cancelled("the producer never stopped").await;

    // Within its deadline, a stream runs to its end.
    let mut request = Request::new(ListUsersRequest {
        from_id: 1,
        count: 5,
        interval_ms: 10,
    });
    request.set_timeout(Duration::from_secs(5));
    let mut stream = client.list_users(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        ids.push(reply.id);
    }
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

#[steadfast::resilient_client(service = "lister", client = UserServiceClient, timeout = "1s")]
trait Lister {
    async fn list_users(
        &self,
        req: steadfast_examples::pb::user::ListUsersRequest,
    ) -> Result<tonic::Streaming<GetUserReply>, Status>;
}

#[tokio::test]
async fn a_resilient_client_bounds_a_whole_response_stream_by_its_deadline() {
    use steadfast_examples::pb::user::ListUsersRequest;
    use steadfast_examples::pb::user::user_service_server::UserServiceServer;
    // A server without the deadline layer: only the client can cut the stream.
    let scripted = common::Scripted::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(scripted.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let lister = ListerClient::connect(
        ClientConfig::endpoints([format!("http://{addr}")])
            .unwrap()
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let stream = lister
        .list_users(ListUsersRequest {
            from_id: 1,
            count: 25,
            interval_ms: 100,
        })
        .await
        .unwrap();
    let (ids, status) = common::drain(stream).await;
    let received = ids.len();
    let status = status.unwrap_or_else(|| panic!("the stream ran to its end: {received} messages"));
    let took = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        took >= Duration::from_millis(950) && took <= Duration::from_millis(1050),
        "cut at {took:?}"
    );
    assert!(
        (8..=10).contains(&received),
        "{received} messages before the cut"
    );
    // The server's producer saw the call cancelled.
    scripted
        .until_cancelled("the server never saw the cancellation")
        .await;
}
