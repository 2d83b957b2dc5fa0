//! user-svc: gRPC user lookups, registered in a registry while healthy.
//!
//! Run: `cargo run -p steadfast-examples --bin user-svc -- --registry etcd://127.0.0.1:2379`
//!
//! Flags: `--grpc-addr`, `--http-addr` (`/health`, `/metrics`, and `POST /fault` with a body
//! such as `slow:200ms` to change the fault at run time), `--registry`, `--lease-ttl`,
//! `--instance-id`, `--drain`, and `--fault none|slow:DURATION|fail:RATE|down`. Prints its
//! bound addresses on start and shuts down gracefully on SIGTERM or Ctrl-C.

use clap::Parser;
use steadfast::health::Health;
use steadfast_examples::cli::{BoxError, Common};
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::services::user::{Fault, UserSvc};

#[derive(Parser, Debug)]
#[command(name = "user-svc", about = "gRPC user lookups")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Fault to inject from the start.
    #[arg(long, default_value = "none")]
    fault: Fault,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    steadfast_examples::cli::exit("user-svc", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<(), BoxError> {
    steadfast::telemetry::init()?;
    let registry = args.common.registry().await?;
    let opts = args.common.options("user-svc", "user.UserService");
    let svc = UserSvc::new(&opts.id, args.fault);
    let running = steadfast_examples::run::serve(
        opts.clone(),
        registry,
        Health::builder(),
        UserServiceServer::new(svc.clone()),
    )
    .await?;
    // An admin endpoint to change the fault at run time.
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin.local_addr()?;
    let s = svc.clone();
    let router = axum::Router::new().route(
        "/fault",
        axum::routing::post(move |body: String| {
            let s = s.clone();
            async move {
                match body.trim().parse::<Fault>() {
                    Ok(f) => {
                        s.set_fault(f);
                        (axum::http::StatusCode::OK, format!("fault: {f:?}\n"))
                    }
                    Err(e) => (axum::http::StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
        }),
    );
    tokio::spawn(steadfast_examples::http::serve(
        admin,
        router,
        args.common.http_header_timeout,
        std::future::pending(),
    ));
    println!(
        "user-svc {} grpc={} http={} admin={admin_addr}",
        opts.id, running.grpc_addr, running.http_addr
    );
    steadfast::registry::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    // Sends the spans still buffered when exporting over OTLP.
    steadfast::telemetry::shutdown().await;
    Ok(())
}
