//! gRFC A6 hedging against real servers on 127.0.0.1, configured through service config:
//! a slow replica no longer sets the latency, copies are sent as A6 says, and the copies
//! that lose are cancelled on the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use steadfast::client::{ClientConfig, Downstreams};
use steadfast::registry::{Instance, MemoryRegistry, Registry};
use steadfast::retry::ServiceConfig;
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::{UserService, UserServiceServer};
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

#[steadfast::resilient_client(service = "hedged-user-svc", client = UserServiceClient,
    grpc_service = "user.UserService", timeout = "5s",
    // Copies are counted here, not the breaker: it must not trip on the scripted failures.
    breaker(min_failures = 1000))]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// The same hedging, written in the attribute instead of service config.
#[steadfast::resilient_client(service = "hedged-user-svc", client = UserServiceClient,
    grpc_service = "user.UserService", timeout = "5s")]
trait HedgedUsers {
    #[steadfast::hedge(max_attempts = 3, delay = "20ms", non_fatal = [Unavailable])]
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// A replica: answers after `delay`, or fails with `fail` (and `pushback`); counts the
/// calls it got and the ones its caller cancelled before it answered.
#[derive(Clone, Default)]
struct Replica {
    delay: Duration,
    fail: Option<Code>,
    pushback: Option<&'static str>,
    calls: Arc<AtomicUsize>,
    /// Calls that carried `grpc-previous-rpc-attempts`: hedged copies.
    hedged: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

/// Counts a handler dropped before it finished: the caller cancelled the call.
struct Cancelled(Option<Arc<AtomicUsize>>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tonic::async_trait]
impl UserService for Replica {
    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if req.metadata().contains_key("grpc-previous-rpc-attempts") {
            self.hedged.fetch_add(1, Ordering::SeqCst);
        }
        let mut guard = Cancelled(Some(self.cancelled.clone()));
        tokio::time::sleep(self.delay).await;
        guard.0 = None;
        if let Some(code) = self.fail {
            let mut md = tonic::metadata::MetadataMap::new();
            if let Some(p) = self.pushback {
                md.insert("grpc-retry-pushback-ms", p.parse().unwrap());
            }
            return Err(Status::with_metadata(code, "scripted failure", md));
        }
        Ok(Response::new(GetUserReply {
            id: req.into_inner().id,
            name: "u".into(),
            served_by: String::new(),
        }))
    }

    async fn create_user(
        &self,
        _: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn list_users(
        &self,
        req: tonic::Request<steadfast_examples::pb::user::ListUsersRequest>,
    ) -> Result<tonic::Response<steadfast_examples::services::user::UserStream>, tonic::Status>
    {
        steadfast_examples::services::user::list_users(req, "hedging", None)
    }
}

async fn serve(replica: Replica) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(replica))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

fn config(hedging: &str, throttling: &str) -> ServiceConfig {
    ServiceConfig::from_json(&format!(
        r#"{{"methodConfig": [{{"name": [{{"service": "user.UserService"}}],
            "hedgingPolicy": {hedging}}}]{throttling}}}"#
    ))
    .unwrap()
}

/// A client that discovers `replicas` through the embedded registry.
async fn client(replicas: &[Replica], sc: ServiceConfig) -> UsersClient {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    for (i, r) in replicas.iter().enumerate() {
        let url = serve(r.clone()).await;
        registry
            .register(&Instance::new("hedged-user-svc", format!("r{i}"), url))
            .await
            .unwrap();
    }
    UsersClient::connect(
        ClientConfig::discover(registry)
            .service_config(sc)
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_of_three_no_longer_sets_the_latency() {
    let slow = Replica {
        delay: Duration::from_millis(500),
        ..Replica::default()
    };
    let fast = || Replica {
        delay: Duration::from_millis(1),
        ..Replica::default()
    };
    let replicas = [slow.clone(), fast(), fast()];
    let users = client(
        &replicas,
        config(
            r#"{"maxAttempts": 3, "hedgingDelay": "0.020s", "nonFatalStatusCodes": ["UNAVAILABLE"]}"#,
            "",
        ),
    )
    .await;
    let mut latencies = Vec::new();
    for id in 0..150 {
        let started = Instant::now();
        users.get_user(GetUserRequest { id }).await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    // The slow replica got its share of first copies, and every one of them lost: the
    // server saw each cancelled.
    let sent_to_slow = slow.calls.load(Ordering::SeqCst);
    assert!(
        sent_to_slow >= 20,
        "{sent_to_slow} copies reached the slow replica"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while slow.cancelled.load(Ordering::SeqCst) < sent_to_slow && Instant::now() < deadline {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(slow.cancelled.load(Ordering::SeqCst), sent_to_slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hedge_attribute_hedges_as_service_config_does() {
    let slow = Replica {
        delay: Duration::from_millis(500),
        ..Replica::default()
    };
    let fast = Replica {
        delay: Duration::from_millis(1),
        ..Replica::default()
    };
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    for (i, r) in [slow.clone(), fast.clone()].into_iter().enumerate() {
        let url = serve(r).await;
        registry
            .register(&Instance::new("hedged-user-svc", format!("r{i}"), url))
            .await
            .unwrap();
    }
    let users = HedgedUsersClient::connect(
        ClientConfig::discover(registry).downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let mut slowest = Duration::ZERO;
    for id in 0..40 {
        let started = Instant::now();
        users.get_user(GetUserRequest { id }).await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(200),
        "slowest call {slowest:?}"
    );
    // Every first copy that went to the slow replica was followed by a hedged copy, marked
    // with grpc-previous-rpc-attempts, to the other endpoint.
    let (slow_first, slow_hedged) = (
        slow.calls.load(Ordering::SeqCst) - slow.hedged.load(Ordering::SeqCst),
        slow.hedged.load(Ordering::SeqCst),
    );
    let (fast_first, fast_hedged) = (
        fast.calls.load(Ordering::SeqCst) - fast.hedged.load(Ordering::SeqCst),
        fast.hedged.load(Ordering::SeqCst),
    );
    assert!(slow_first >= 10, "{slow_first}");
    assert!(
        fast_hedged >= slow_first,
        "{fast_hedged} hedges for {slow_first}"
    );
    // A copy avoids the endpoint of the copy before it: a hedge reaches the slow replica
    // only after a copy went to the fast one (when that one was late too).
    assert!(slow_hedged <= fast_first, "{slow_hedged} > {fast_first}");
}

/// Copies that reached one replica (hedging over a single endpoint) for one call.
async fn copies(replica: Replica, hedging: &str, throttling: &str) -> (usize, Result<(), Code>) {
    let users = client(std::slice::from_ref(&replica), config(hedging, throttling)).await;
    let result = users
        .get_user(GetUserRequest { id: 1 })
        .await
        .map(drop)
        .map_err(|s| s.code());
    (replica.calls.load(Ordering::SeqCst), result)
}

#[tokio::test]
async fn copies_sent_are_as_a6_says() {
    const POLICY: &str =
        r#"{"maxAttempts": 3, "hedgingDelay": "1s", "nonFatalStatusCodes": ["UNAVAILABLE"]}"#;
    let replica = |fail: Option<Code>, pushback: Option<&'static str>| Replica {
        delay: Duration::from_millis(1),
        fail,
        pushback,
        ..Replica::default()
    };
    // A fast success: one copy (the next would wait a second).
    assert_eq!(copies(replica(None, None), POLICY, "").await, (1, Ok(())));
    // A non-fatal failure sends the next copy at once, up to maxAttempts.
    assert_eq!(
        copies(replica(Some(Code::Unavailable), None), POLICY, "").await,
        (3, Err(Code::Unavailable))
    );
    // A fatal failure ends the call: no further copies.
    assert_eq!(
        copies(replica(Some(Code::Internal), None), POLICY, "").await,
        (1, Err(Code::Internal))
    );
    // "Do not retry" pushback: no further copies.
    assert_eq!(
        copies(replica(Some(Code::Unavailable), Some("-1")), POLICY, "").await,
        (1, Err(Code::Unavailable))
    );
    // Pushback of 200 ms: the next copy waits for it instead of going at once.
    let started = Instant::now();
    let (n, _) = copies(replica(Some(Code::Unavailable), Some("200")), POLICY, "").await;
    assert_eq!(n, 3);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_copy_that_never_reached_a_server_is_sent_again_at_once_uncounted() {
    let live = Replica {
        delay: Duration::from_millis(1),
        ..Replica::default()
    };
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    // A replica that crashed without deregistering: its port refuses connections.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    registry
        .register(&Instance::new("hedged-user-svc", "dead", dead))
        .await
        .unwrap();
    let url = serve(live.clone()).await;
    registry
        .register(&Instance::new("hedged-user-svc", "live", url))
        .await
        .unwrap();
    let users = UsersClient::connect(
        ClientConfig::discover(registry)
            .service_config(config(
                r#"{"maxAttempts": 2, "hedgingDelay": "1s", "nonFatalStatusCodes": ["UNAVAILABLE"]}"#,
                r#", "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}"#,
            ))
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    for id in 0..10 {
        let started = Instant::now();
        users.get_user(GetUserRequest { id }).await.unwrap();
        // Not the hedging delay: the refused copy was replaced at once.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    // No copy was counted as a hedge: none carried grpc-previous-rpc-attempts.
    assert_eq!(live.calls.load(Ordering::SeqCst), 10);
    assert_eq!(live.hedged.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_retry_throttle_stops_hedged_copies() {
    let failing = Replica {
        delay: Duration::from_millis(1),
        fail: Some(Code::Unavailable),
        ..Replica::default()
    };
    let users = client(
        std::slice::from_ref(&failing),
        config(
            r#"{"maxAttempts": 3, "hedgingDelay": "1s", "nonFatalStatusCodes": ["UNAVAILABLE"]}"#,
            r#", "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}"#,
        ),
    )
    .await;
    let mut per_call = Vec::new();
    for _ in 0..3 {
        let before = failing.calls.load(Ordering::SeqCst);
        users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
        per_call.push(failing.calls.load(Ordering::SeqCst) - before);
    }
    // Tokens 10 -> 7 (three failed copies); 7 -> 5, and at 5 (half) no more hedging; then
    // each call is sent once.
    assert_eq!(per_call, [3, 2, 1]);
}
