//! Discovery over the embedded registry with real servers on 127.0.0.1: replicas come and
//! go under load and no call fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use steadfast::client::{ClientConfig, Downstreams};
use steadfast::registry::{Instance, MemoryRegistry, Registry};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::{UserService, UserServiceServer};
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient, timeout = "5s",
    retry(max_attempts = 3, initial_backoff = "5ms", max_backoff = "20ms"))]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// A replica that answers with its id, or UNAVAILABLE when told to fail.
#[derive(Clone)]
struct Replica {
    id: String,
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl UserService for Replica {
    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(Status::unavailable("failing"));
        }
        // A little work, so that calls are in flight when a replica dies.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(Response::new(GetUserReply {
            id: req.into_inner().id,
            name: "u".into(),
            served_by: self.id.clone(),
        }))
    }
    async fn create_user(
        &self,
        _: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        Err(Status::unimplemented(""))
    }
}

struct Running {
    replica: Replica,
    instance: Instance,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

async fn start(registry: &MemoryRegistry, id: &str, drain: Duration) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replica = Replica {
        id: id.into(),
        calls: Arc::default(),
        failing: Arc::default(),
    };
    let instance = Instance::new("user-svc", id, format!("http://{addr}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let (reg, inst) = (registry.clone(), instance.clone());
    let svc = replica.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(svc))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                    // Graceful: leave discovery, let clients notice, then finish in-flight calls.
                    steadfast::registry::drain(&reg, &inst, drain).await;
                },
            )
            .await
            .unwrap();
    });
    // Registered only once listening.
    registry.register(&instance).await.unwrap();
    Running {
        replica,
        instance,
        task,
        stop: Some(stop),
    }
}

async fn client(registry: &MemoryRegistry) -> UsersClient {
    let registry: Arc<dyn Registry> = Arc::new(registry.clone());
    UsersClient::connect(ClientConfig::discover(registry).downstreams(Downstreams::new()))
        .await
        .unwrap()
}

/// Sends `total` calls from `concurrency` workers; returns (failures, per-replica counts seen).
async fn burst(
    users: &UsersClient,
    total: usize,
    concurrency: usize,
    mid: impl FnOnce() + Send + 'static,
) -> usize {
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mid = Arc::new(std::sync::Mutex::new(Some(mid)));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (users, sent, failed, mid) =
                (users.clone(), sent.clone(), failed.clone(), mid.clone());
            tokio::spawn(async move {
                loop {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        return;
                    }
                    if n == total / 3
                        && let Some(f) = mid.lock().unwrap().take()
                    {
                        f();
                    }
                    if let Err(e) = users.get_user(GetUserRequest { id: n as u64 }).await {
                        eprintln!("call {n} failed: {e:?}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    failed.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_replicas_under_a_burst_fails_no_call() {
    let registry = MemoryRegistry::new();
    let replicas = [
        start(&registry, "u1", Duration::ZERO).await,
        start(&registry, "u2", Duration::ZERO).await,
        start(&registry, "u3", Duration::ZERO).await,
    ];
    let users = client(&registry).await;
    let victim = replicas[1].task.abort_handle();
    // Killed abruptly, like SIGKILL: connections reset, nothing deregistered.
    let failed = burst(&users, 1500, 16, move || victim.abort()).await;
    assert_eq!(failed, 0, "no call may fail when one replica dies");
    let counts: Vec<usize> = replicas
        .iter()
        .map(|r| r.replica.calls.load(Ordering::SeqCst))
        .collect();
    assert!(
        counts[0] > 300 && counts[2] > 300,
        "the survivors carried the load: {counts:?}"
    );
    assert!(
        counts[1] < 1500 / 3 + 50,
        "the dead replica stopped receiving calls: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_under_load_fails_no_call() {
    let registry = MemoryRegistry::new();
    let mut replicas = vec![
        start(&registry, "u1", Duration::from_millis(200)).await,
        start(&registry, "u2", Duration::from_millis(200)).await,
    ];
    let users = client(&registry).await;
    let stop = replicas[0].stop.take().unwrap();
    let failed = burst(&users, 1000, 8, move || {
        let _ = stop.send(());
    })
    .await;
    assert_eq!(failed, 0);
    let r = replicas.remove(0);
    r.task.await.unwrap(); // it exited by itself after draining
    assert_eq!(users.core().channel().discovered_ids(), ["u2"]);
    let _ = r.instance;
}

#[tokio::test]
async fn a_retry_goes_to_another_replica_and_a_failing_one_is_ejected() {
    let registry = MemoryRegistry::new();
    let bad = start(&registry, "bad", Duration::ZERO).await;
    let good = start(&registry, "good", Duration::ZERO).await;
    bad.replica.failing.store(true, Ordering::SeqCst);
    let users = client(&registry).await;
    for i in 0..20 {
        let reply = users.get_user(GetUserRequest { id: i }).await.unwrap();
        assert_eq!(reply.served_by, "good");
    }
    // Three UNAVAILABLE in a row ejected it: it saw at most three calls.
    assert!(
        bad.replica.calls.load(Ordering::SeqCst) <= 3,
        "{}",
        bad.replica.calls.load(Ordering::SeqCst)
    );
    assert_eq!(good.replica.calls.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_new_instance_is_used_as_soon_as_it_registers() {
    let registry = MemoryRegistry::new();
    let first = start(&registry, "u1", Duration::ZERO).await;
    let users = client(&registry).await;
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    let second = start(&registry, "u2", Duration::ZERO).await;
    let mut seen_second = false;
    for i in 0..10 {
        // Round-robin: within a couple of calls the new instance serves one.
        if users
            .get_user(GetUserRequest { id: i })
            .await
            .unwrap()
            .served_by
            == "u2"
        {
            seen_second = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(seen_second, "the new instance received calls");
    let _ = (first, second);
}

#[tokio::test]
async fn no_instances_is_a_clear_unavailable() {
    let registry = MemoryRegistry::new();
    let users = client(&registry).await;
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("user-svc"), "{}", err.message());
    let _ = common::Action::Ok;
}
