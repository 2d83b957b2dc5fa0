//! user-svc: user lookups, with injectable faults for demos and tests.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};

use crate::pb::user::user_service_server::UserService;
use crate::pb::user::{
    CountUsersReply, CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
    ListUsersRequest,
};

/// The stream `ListUsers` answers with.
pub type UserStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<GetUserReply, Status>> + Send>>;

/// Answers `ListUsers`: users from `from_id` on, one every `interval_ms`, `count` of them (0:
/// until the caller goes away), each `served_by` this replica. When the caller goes away
/// (the stream is dropped: cancelled, or cut by its deadline), the producer stops and adds
/// one to `cancelled`, if given (a watch, so that a test can await it).
pub fn list_users(
    request: Request<ListUsersRequest>,
    served_by: &str,
    cancelled: Option<Arc<tokio::sync::watch::Sender<u64>>>,
) -> Result<Response<UserStream>, Status> {
    let ListUsersRequest {
        from_id,
        count,
        interval_ms,
    } = request.into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let served_by = served_by.to_owned();
    // In the handler's trace: the producer's log lines and calls belong to it.
    steadfast::spawn(async move {
        let interval = Duration::from_millis(u64::from(interval_ms));
        let mut id = from_id.max(1);
        let mut sent = 0u32;
        while count == 0 || sent < count {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tx.closed() => break,
            }
            let reply = GetUserReply {
                id,
                name: format!("user-{id}"),
                served_by: served_by.clone(),
            };
            if tx.send(Ok(reply)).await.is_err() {
                break;
            }
            id += 1;
            sent += 1;
        }
        if tx.is_closed()
            && let Some(c) = cancelled
        {
            c.send_modify(|n| *n += 1);
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// A fault injected into user-svc: `none`, `slow:DURATION`, `fail:RATE` (0..=1) or `down`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Healthy.
    None,
    /// Every call takes this long.
    Slow(Duration),
    /// This fraction of calls fail with UNAVAILABLE.
    Fail(f64),
    /// Every call fails with UNAVAILABLE.
    Down,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Fault::None),
            None if s == "down" => Ok(Fault::Down),
            Some(("slow", d)) => steadfast::duration::parse(d).map(Fault::Slow),
            Some(("fail", r)) => match r.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(Fault::Fail(r)),
                _ => Err(format!("fail:RATE needs a rate in 0..=1, got `{r}`")),
            },
            _ => Err(format!(
                "unknown fault `{s}`; use none, slow:DURATION, fail:RATE or down"
            )),
        }
    }
}

/// The user service. Users 1..=1_000_000 exist; user N is named `user-N`.
#[derive(Clone, Debug)]
pub struct UserSvc {
    instance: String,
    fault: Arc<RwLock<Fault>>,
    calls: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
}

impl UserSvc {
    /// A replica named `instance` with `fault`.
    pub fn new(instance: impl Into<String>, fault: Fault) -> Self {
        UserSvc {
            instance: instance.into(),
            fault: Arc::new(RwLock::new(fault)),
            calls: Arc::default(),
            ok: Arc::default(),
        }
    }
    /// Changes the fault at run time.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.write().unwrap_or_else(|p| p.into_inner()) = fault;
    }
    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.fault.read().unwrap_or_else(|p| p.into_inner())
    }
    /// Calls received.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    /// Calls answered OK.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn apply_fault(&self) -> Result<(), Status> {
        match self.fault() {
            Fault::None => Ok(()),
            Fault::Down => Err(Status::unavailable("user-svc is down (injected fault)")),
            Fault::Fail(rate) if fastrand::f64() < rate => {
                Err(Status::unavailable("user-svc failed (injected fault)"))
            }
            Fault::Fail(_) => Ok(()),
            Fault::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

#[tonic::async_trait]
impl UserService for UserSvc {
    #[steadfast::traced]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.apply_fault().await?;
        let id = request.into_inner().id;
        if !exists(id) {
            return Err(Status::not_found(format!("no user {id}")));
        }
        tracing::info!(id, "user found");
        self.ok.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(GetUserReply {
            id,
            name: format!("user-{id}"),
            served_by: self.instance.clone(),
        }))
    }

    #[steadfast::traced]
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.apply_fault().await?;
        let name = request.into_inner().name;
        if name.trim().is_empty() {
            return Err(Status::invalid_argument("name is empty"));
        }
        Ok(Response::new(CreateUserReply {
            id: 1_000_000 + name.len() as u64,
        }))
    }

    #[steadfast::traced]
    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<UserStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.apply_fault().await?;
        list_users(request, &self.instance, None)
    }

    #[steadfast::traced]
    async fn count_users(
        &self,
        request: Request<Streaming<GetUserRequest>>,
    ) -> Result<Response<CountUsersReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.apply_fault().await?;
        let mut ids = request.into_inner();
        let mut reply = CountUsersReply::default();
        while let Some(req) = ids.message().await? {
            if exists(req.id) {
                reply.found += 1;
            } else {
                reply.missing += 1;
            }
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(reply))
    }

    #[steadfast::traced]
    async fn lookup_users(
        &self,
        request: Request<Streaming<GetUserRequest>>,
    ) -> Result<Response<UserStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.apply_fault().await?;
        Ok(Response::new(lookup_users(
            request.into_inner(),
            self.instance.clone(),
        )))
    }
}

/// Whether user `id` exists.
fn exists(id: u64) -> bool {
    (1..=1_000_000).contains(&id)
}

/// Answers `LookupUsers`: each id the caller streams, as it comes, with its user `served_by`
/// this replica; an id with no user ends the stream with NOT_FOUND.
pub fn lookup_users(mut ids: Streaming<GetUserRequest>, served_by: String) -> UserStream {
    Box::pin(async_stream_of(move |tx| async move {
        loop {
            let item = match ids.message().await {
                Ok(Some(req)) if exists(req.id) => Ok(GetUserReply {
                    id: req.id,
                    name: format!("user-{}", req.id),
                    served_by: served_by.clone(),
                }),
                Ok(Some(req)) => Err(Status::not_found(format!("no user {}", req.id))),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    }))
}

/// A stream fed by `produce` through a small channel; `produce` stops when the stream is
/// dropped (its sends fail).
fn async_stream_of<F, Fut>(
    produce: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<GetUserReply, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<GetUserReply, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // In the handler's trace: the producer's log lines and calls belong to it.
    steadfast::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
