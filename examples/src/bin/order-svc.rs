//! order-svc: orders in SQLite, users checked against user-svc through a resilient client.
//!
//! Run: `cargo run -p steadfast-examples --bin order-svc -- --registry etcd://127.0.0.1:2379 --data-dir /tmp/orders`
//!
//! Flags: the common ones (`--grpc-addr`, `--http-addr`, `--registry`, `--lease-ttl`,
//! `--instance-id`, `--drain`) and `--data-dir`. Its health check queries the database.

use std::path::PathBuf;

use clap::Parser;
use steadfast::client::ClientConfig;
use steadfast::health::{Check, Health};
use steadfast_examples::cli::{BoxError, Common, flag_error};
use steadfast_examples::pb::order::order_service_server::OrderServiceServer;
use steadfast_examples::services::order::{OrderSvc, Store, UsersClient};

#[derive(Parser, Debug)]
#[command(name = "order-svc", about = "gRPC orders")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Where the SQLite database lives.
    #[arg(long, default_value = "./data/order-svc")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    steadfast_examples::cli::exit("order-svc", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<(), BoxError> {
    steadfast::telemetry::init()?;
    let registry = args.common.registry().await?;
    let store = Store::open(&args.data_dir)
        .map_err(|e| flag_error("--data-dir", args.data_dir.display(), e))?;
    let users = UsersClient::connect(ClientConfig::discover(registry.clone())).await?;
    let db = store.clone();
    let health = Health::builder().check(
        "sqlite",
        Check::new(move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|s| s.message().to_owned()) }
        }),
    );
    let opts = args.common.options("order-svc", "order.OrderService");
    let running = steadfast_examples::run::serve(
        opts.clone(),
        registry,
        health,
        OrderServiceServer::new(OrderSvc::new(store, users)),
    )
    .await?;
    println!(
        "order-svc {} grpc={} http={}",
        opts.id, running.grpc_addr, running.http_addr
    );
    steadfast::registry::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    // Sends the spans still buffered when exporting over OTLP.
    steadfast::telemetry::shutdown().await;
    Ok(())
}
