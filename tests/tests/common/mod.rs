//! Shared fixtures: a scripted user service on 127.0.0.1 and a server handle that shuts
//! down on drop.

#![allow(dead_code)]

pub mod etcd;
pub mod http;
pub mod nacos;
pub mod replicas;
pub mod spans;
#[cfg(feature = "nacos-tls")]
pub mod tls_proxy;
pub mod traced;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::deadline::DeadlineLayer;
use steadfast_examples::pb::user::user_service_server::{UserService, UserServiceServer};
use steadfast_examples::pb::user::{
    CountUsersReply, CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

/// One scripted behaviour of the server for one call.
#[derive(Clone, Debug)]
pub enum Action {
    Ok,
    /// Fails the call before any message (for a stream: trailers-only).
    Fail(Code),
    /// A stream: one message, then this failure.
    FailStream(Code),
    Pushback(Code, &'static str),
    Sleep(Duration),
}

/// What the server saw of one call.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub previous_attempts: Option<String>,
    pub grpc_timeout: Option<Duration>,
    pub traceparent: Option<String>,
    /// The `x-tenant` metadata the caller set.
    pub tenant: Option<String>,
    /// The `grpc-encoding` the request was compressed with.
    pub encoding: Option<String>,
    /// The ids of a request stream (`CountUsers`), in the order they arrived.
    pub ids: Vec<u64>,
}

/// A user service whose answers follow a script; when the script runs out it repeats the
/// last action.
#[derive(Clone, Default)]
pub struct Scripted {
    script: Arc<Mutex<VecDeque<Action>>>,
    last: Arc<Mutex<Option<Action>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// `ListUsers` streams the caller went away from before their end.
    pub cancelled: Cancelled,
}

/// How many streams were cancelled, as a watch that tests await.
#[derive(Clone)]
pub struct Cancelled(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Cancelled {
    fn default() -> Self {
        Cancelled(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl Scripted {
    /// Waits (up to 2 s) until the producer of a `ListUsers` stream has seen its caller go.
    pub async fn until_cancelled(&self, what: &str) {
        let mut cancelled = self.cancelled.0.subscribe();
        tokio::time::timeout(Duration::from_secs(2), cancelled.wait_for(|n| *n > 0))
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap();
    }

    pub fn new(actions: impl IntoIterator<Item = Action>) -> Self {
        let s = Scripted::default();
        s.script.lock().unwrap().extend(actions);
        s
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Replaces what is left of the script (the last action repeats when it runs out).
    pub fn script(&self, actions: impl IntoIterator<Item = Action>) {
        let mut script = self.script.lock().unwrap();
        script.clear();
        script.extend(actions);
        *self.last.lock().unwrap() = None;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn next(&self) -> Action {
        let mut script = self.script.lock().unwrap();
        let mut last = self.last.lock().unwrap();
        if let Some(a) = script.pop_front() {
            *last = Some(a);
        }
        last.clone().unwrap_or(Action::Ok)
    }
}

/// A failure with the server pushback `value` (`grpc-retry-pushback-ms`).
pub fn pushback(code: Code, value: &str) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("grpc-retry-pushback-ms", value.parse().unwrap());
    Status::with_metadata(code, "scripted pushback", md)
}

pub fn record<T>(req: &Request<T>) -> Seen {
    let md = req.metadata();
    Seen {
        at: Instant::now(),
        previous_attempts: md
            .get("grpc-previous-rpc-attempts")
            .map(|v| v.to_str().unwrap().to_owned()),
        grpc_timeout: md
            .get("grpc-timeout")
            .and_then(|v| steadfast::deadline::parse_grpc_timeout(v.as_bytes()).ok()),
        traceparent: md
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned()),
        tenant: md.get("x-tenant").map(|v| v.to_str().unwrap().to_owned()),
        encoding: md
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_owned()),
        ids: Vec::new(),
    }
}

#[tonic::async_trait]
impl UserService for Scripted {
    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        self.seen.lock().unwrap().push(record(&req));
        let id = req.into_inner().id;
        let reply = GetUserReply {
            id,
            name: format!("user-{id}"),
            served_by: "scripted".into(),
        };
        match self.next() {
            Action::Ok => Ok(Response::new(reply)),
            // A unary call has no stream to fail in: it fails.
            Action::Fail(code) | Action::FailStream(code) => {
                Err(Status::new(code, "scripted failure"))
            }
            Action::Pushback(code, value) => Err(pushback(code, value)),
            Action::Sleep(d) => {
                tokio::time::sleep(d).await;
                Ok(Response::new(reply))
            }
        }
    }

    async fn create_user(
        &self,
        req: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        self.seen.lock().unwrap().push(record(&req));
        match self.next() {
            Action::Fail(code) => Err(Status::new(code, "scripted failure")),
            _ => Ok(Response::new(CreateUserReply { id: 1 })),
        }
    }

    async fn list_users(
        &self,
        req: tonic::Request<steadfast_examples::pb::user::ListUsersRequest>,
    ) -> Result<tonic::Response<steadfast_examples::services::user::UserStream>, tonic::Status>
    {
        self.seen.lock().unwrap().push(record(&req));
        match self.next() {
            Action::Fail(code) => Err(Status::new(code, "scripted failure")),
            Action::FailStream(code) => {
                let first = GetUserReply {
                    id: 1,
                    name: "user-1".into(),
                    served_by: "scripted".into(),
                };
                let items = vec![
                    Ok(first),
                    Err(Status::new(code, "scripted failure mid-stream")),
                ];
                Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
            }
            _ => steadfast_examples::services::user::list_users(
                req,
                "scripted",
                Some(self.cancelled.0.clone()),
            ),
        }
    }

    async fn count_users(
        &self,
        req: Request<tonic::Streaming<GetUserRequest>>,
    ) -> Result<Response<CountUsersReply>, Status> {
        self.count_users_scripted(req).await
    }

    async fn lookup_users(
        &self,
        req: Request<tonic::Streaming<GetUserRequest>>,
    ) -> Result<Response<steadfast_examples::services::user::UserStream>, Status> {
        self.seen.lock().unwrap().push(record(&req));
        let mut ids = req.into_inner();
        match self.next() {
            // Before any response: trailers-only.
            Action::Fail(code) => Err(Status::new(code, "scripted failure")),
            // One answer, then the failure.
            Action::FailStream(code) => {
                let first = ids.message().await?.map(|m| m.id).unwrap_or_default();
                let items = vec![
                    Ok(GetUserReply {
                        id: first,
                        name: format!("user-{first}"),
                        served_by: "scripted".into(),
                    }),
                    Err(Status::new(code, "scripted failure mid-stream")),
                ];
                Ok(Response::new(Box::pin(tokio_stream::iter(items))))
            }
            _ => Ok(Response::new(
                steadfast_examples::services::user::lookup_users(ids, "scripted".into()),
            )),
        }
    }
}

impl Scripted {
    /// Records the call, reads its whole request stream into the record, then answers
    /// with the next action (for a failure: trailers-only, after the stream; `FailStream`
    /// fails after the first message, while the caller is still sending).
    pub async fn count_users_scripted(
        &self,
        req: Request<tonic::Streaming<GetUserRequest>>,
    ) -> Result<Response<CountUsersReply>, Status> {
        let seen = record(&req);
        let index = {
            let mut all = self.seen.lock().unwrap();
            all.push(seen);
            all.len() - 1
        };
        let action = self.next();
        let mut stream = req.into_inner();
        let mut found = 0;
        while let Some(m) = stream.message().await? {
            self.seen.lock().unwrap()[index].ids.push(m.id);
            found += 1;
            // One message, then the failure, while the caller is still sending.
            if let Action::FailStream(code) = action {
                return Err(Status::new(code, "scripted failure mid-stream"));
            }
        }
        match action {
            Action::Fail(code) | Action::FailStream(code) => {
                Err(Status::new(code, "scripted failure"))
            }
            Action::Pushback(code, value) => Err(pushback(code, value)),
            _ => Ok(Response::new(CountUsersReply { found, missing: 0 })),
        }
    }
}

/// A running server; dropping it shuts the server down.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `svc` on a free port of 127.0.0.1 behind the deadline layer.
pub async fn serve<S: UserService>(svc: S) -> Server {
    serve_with(UserServiceServer::new(svc)).await
}

/// Serves `server` (for example with compression set) on a free port of 127.0.0.1 behind
/// the deadline layer.
pub async fn serve_with<S: UserService>(server: UserServiceServer<S>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(DeadlineLayer::new())
            .add_service(server)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    Server {
        addr,
        stop: Some(stop),
    }
}

/// Reads a `ListUsers` stream to its end: the ids received, and the final status if it
/// failed.
pub async fn drain(mut stream: tonic::Streaming<GetUserReply>) -> (Vec<u64>, Option<Status>) {
    let mut ids = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => ids.push(reply.id),
            Ok(None) => return (ids, None),
            Err(status) => return (ids, Some(status)),
        }
    }
}
