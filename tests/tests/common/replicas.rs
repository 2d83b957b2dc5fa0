//! Replicas of a user service that register themselves, a discovering client, and a burst
//! of calls: shared by the discovery tests over the embedded registry and over etcd.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use steadfast::client::{ClientConfig, Downstreams};
use steadfast::registry::{Instance, Registry};
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
pub trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// A replica that answers with its id, or UNAVAILABLE when told to fail.
#[derive(Clone)]
pub struct Replica {
    pub id: String,
    pub calls: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
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

    async fn list_users(
        &self,
        req: tonic::Request<steadfast_examples::pb::user::ListUsersRequest>,
    ) -> Result<tonic::Response<steadfast_examples::services::user::UserStream>, tonic::Status>
    {
        steadfast_examples::services::user::list_users(req, &self.id, None)
    }
}

pub struct Running {
    pub replica: Replica,
    pub instance: Instance,
    pub task: JoinHandle<()>,
    pub stop: Option<oneshot::Sender<()>>,
}

pub async fn start(registry: &Arc<dyn Registry>, id: &str, drain: Duration) -> Running {
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
                    steadfast::registry::drain(&*reg, &inst, drain).await;
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

pub async fn client(registry: &Arc<dyn Registry>) -> UsersClient {
    UsersClient::connect(ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()))
        .await
        .unwrap()
}

/// Sends `total` calls from `concurrency` workers; returns (failures, per-replica counts seen).
pub async fn burst(
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
