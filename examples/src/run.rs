//! Running one service of the example system: listeners, health, registration while
//! healthy, trace and deadline layers, and a graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use steadfast::deadline::DeadlineLayer;
use steadfast::health::{Health, HealthBuilder};
use steadfast::registry::{Instance, Registry};
use steadfast::trace::TraceLayer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::{BoxError, flag_error};

/// A service that is running.
#[derive(Debug)]
pub struct Running {
    /// Its registration.
    pub instance: Instance,
    /// The gRPC address.
    pub grpc_addr: SocketAddr,
    /// The HTTP address (`/health`, `/metrics`).
    pub http_addr: SocketAddr,
    /// Its health.
    pub health: Health,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Shuts it down gracefully and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Where and how to run a gRPC service.
#[derive(Clone, Debug)]
pub struct Options {
    /// The service name (`user-svc`).
    pub service: String,
    /// The instance id.
    pub id: String,
    /// Where to listen for gRPC.
    pub grpc_addr: String,
    /// Where to listen for HTTP.
    pub http_addr: String,
    /// How long to drain on shutdown.
    pub drain: Duration,
    /// How long an HTTP client may take to send a request's head.
    pub header_timeout: Duration,
    /// The gRPC service name reported by grpc.health.v1.
    pub grpc_service: &'static str,
}

/// Binds, starts health (the service registers once SERVING), and serves `svc` until
/// stopped; `signal` (if given) also triggers the graceful shutdown.
pub async fn serve<S>(
    opts: Options,
    registry: Arc<dyn Registry>,
    health: HealthBuilder,
    svc: S,
) -> Result<Running, BoxError>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    if let Err(steadfast::Error::Config { field, reason }) =
        Instance::new(&opts.service, &opts.id, "http://127.0.0.1:1").validate()
    {
        return Err(match field {
            "instance.id" => flag_error("--instance-id", &opts.id, reason),
            _ => format!("service name `{}`: {reason}", opts.service).into(),
        });
    }
    let grpc = bind("--grpc-addr", &opts.grpc_addr).await?;
    let http = bind("--http-addr", &opts.http_addr).await?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let instance = Instance::new(&opts.service, &opts.id, format!("http://{grpc_addr}"));
    let health = health
        .grpc_service(opts.grpc_service)
        .registration(registry.clone(), instance.clone())
        .build()?;
    let router = health.router().merge(steadfast::metrics::router());
    tokio::spawn(crate::http::serve(
        http,
        router,
        opts.header_timeout,
        std::future::pending(),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let (h, r, i, drain) = (health.clone(), registry, instance.clone(), opts.drain);
    let health_svc = health.grpc_service();
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .layer(TraceLayer::new())
            .layer(DeadlineLayer::new())
            .add_service(health_svc)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move {
                    let _ = stopped.await;
                    steadfast::server::graceful_shutdown(Some(&h), &*r, &i, drain).await;
                },
            )
            .await;
        if let Err(e) = result {
            tracing::error!("server failed: {e}");
        }
    });
    Ok(Running {
        instance,
        grpc_addr,
        http_addr,
        health,
        stop: Some(stop),
        task,
    })
}

/// Binds `addr`; an error names the flag it came from.
pub async fn bind(flag: &str, addr: &str) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| flag_error(flag, addr, e))
}

/// A service run as if it were its own process: its own tokio runtime (one worker thread),
/// so that [`Process::kill`] ends every task it started at once (server, health checks,
/// registry keepalive) with nothing deregistered, as SIGKILL would.
#[derive(Debug)]
pub struct Process {
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Process {
    /// Starts a runtime named `name` and runs `start` on it; returns what `start` returned
    /// (handles into the process, such as its [`Running`] and its clients).
    pub async fn start<T, F, Fut>(name: &str, start: F) -> Result<(Process, T), BoxError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, BoxError>> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        let out = runtime.spawn(start()).await??;
        Ok((
            Process {
                name: name.to_owned(),
                runtime: Some(runtime),
            },
            out,
        ))
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        self.runtime.is_some()
    }

    /// Freezes it for `d`, like SIGSTOP then SIGCONT: its only worker thread is blocked, so
    /// none of its tasks (server, health, registry keepalive) runs until `d` has passed.
    /// Resolves when it is thawed.
    pub async fn freeze(&self, d: Duration) {
        if let Some(rt) = &self.runtime {
            let _ = rt.spawn(async move { std::thread::sleep(d) }).await;
        }
    }

    /// Crashes it: every task stops where it is, sockets close, nothing is deregistered (its
    /// registry lease expires after the TTL).
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `f` holds, checking every 10 ms, for at most `within`.
pub async fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}
