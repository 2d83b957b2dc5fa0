//! user-svc: gRPC user lookups, registered in a registry while healthy.
//!
//! Run: `cargo run -p steadfast-examples --bin user-svc -- --registry etcd://127.0.0.1:2379`
//!
//! Flags: `--grpc-addr HOST:PORT` (default 127.0.0.1:0), `--http-addr HOST:PORT` (`/health`,
//! `/metrics`), `--registry memory|static://..|etcd://..`, `--lease-ttl 3s`,
//! `--instance-id ID`, `--drain 500ms`. Prints its bound addresses on start, and shuts down
//! gracefully on SIGTERM or Ctrl-C: NOT_SERVING, lease revoked, drain, in-flight calls
//! finished, exit.

use std::time::Duration;

use clap::Parser;
use steadfast::deadline::DeadlineLayer;
use steadfast::health::Health;
use steadfast::registry::Instance;
use steadfast::trace::TraceLayer;
use steadfast_examples::pb::user::user_service_server::{UserService, UserServiceServer};
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tonic::{Request, Response, Status};

/// Command-line flags shared by the example services.
#[derive(Parser, Debug)]
#[command(name = "user-svc", about = "gRPC user lookups")]
struct Args {
    /// Address for gRPC.
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_addr: String,
    /// Address for /health and /metrics.
    #[arg(long, default_value = "127.0.0.1:0")]
    http_addr: String,
    /// Registry URL: memory://, static://host:port,.. or etcd://host:port,..
    #[arg(long, default_value = "memory://")]
    registry: String,
    /// etcd lease TTL.
    #[arg(long, default_value = "10s", value_parser = duration)]
    lease_ttl: Duration,
    /// Instance id, unique within the service.
    #[arg(long)]
    instance_id: Option<String>,
    /// How long to stay up after leaving discovery, so clients notice.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    drain: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    steadfast::duration::parse(s)
}

struct Users {
    instance: String,
}

#[tonic::async_trait]
impl UserService for Users {
    #[steadfast::traced]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        let id = request.into_inner().id;
        if id == 0 || id > 1_000_000 {
            return Err(Status::not_found(format!("no user {id}")));
        }
        tracing::info!(id, "user found");
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
        let name = request.into_inner().name;
        if name.trim().is_empty() {
            return Err(Status::invalid_argument("name is empty"));
        }
        Ok(Response::new(CreateUserReply {
            id: 1_000 + name.len() as u64,
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    steadfast::telemetry::init()?;
    let registry_url = if args.registry.starts_with("etcd://") && !args.registry.contains("ttl=") {
        let sep = if args.registry.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}ttl={}s",
            args.registry,
            args.lease_ttl.as_secs().max(1)
        )
    } else if args.registry == "memory" {
        "memory://".to_owned()
    } else {
        args.registry.clone()
    };
    let registry = steadfast::registry::from_url(&registry_url).await?;

    let grpc = tokio::net::TcpListener::bind(&args.grpc_addr).await?;
    let http = tokio::net::TcpListener::bind(&args.http_addr).await?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let id = args
        .instance_id
        .unwrap_or_else(|| format!("user-{}", std::process::id()));
    let instance = Instance::new("user-svc", &id, format!("http://{grpc_addr}"));

    // Registered only while SERVING, which needs the first check run, after listening.
    let health = Health::builder()
        .check("self", steadfast::health::tcp(grpc_addr.to_string()))
        .grpc_service("user.UserService")
        .interval(Duration::from_secs(2))
        .registration(registry.clone(), instance.clone())
        .build()?;
    let router = health.router().merge(steadfast::metrics::router());
    tokio::spawn(async move { axum::serve(http, router).await });
    println!("user-svc {id} grpc={grpc_addr} http={http_addr}");

    let (h, r, i, drain) = (
        health.clone(),
        registry.clone(),
        instance.clone(),
        args.drain,
    );
    tonic::transport::Server::builder()
        .layer(TraceLayer::new())
        .layer(DeadlineLayer::new())
        .add_service(health.grpc_service())
        .add_service(UserServiceServer::new(Users { instance: id }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            async move {
                steadfast::registry::shutdown_signal().await;
                tracing::info!("shutting down");
                steadfast::registry::graceful_shutdown(Some(&h), &*r, &i, drain).await;
            },
        )
        .await?;
    tracing::info!("stopped");
    Ok(())
}
