//! gateway: the HTTP API (axum) in front of order-svc.
//!
//! Run: `cargo run -p steadfast-examples --bin gateway -- --registry etcd://127.0.0.1:2379 --http-addr 127.0.0.1:8080`
//! then `curl -XPOST localhost:8080/orders -d '{"user_id":1,"item":"book","quantity":1}'`.
//!
//! Serves `POST /orders`, `GET /orders/{id}`, `/health` and `/metrics` on `--http-addr`.

use clap::Parser;
use steadfast::client::ClientConfig;
use steadfast::health::Health;
use steadfast_examples::cli::{BoxError, Common};
use steadfast_examples::run::bind;
use steadfast_examples::services::gateway::{self, OrdersClient};

#[derive(Parser, Debug)]
#[command(name = "gateway", about = "HTTP API for orders")]
struct Args {
    #[command(flatten)]
    common: Common,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    steadfast_examples::cli::exit("gateway", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<(), BoxError> {
    steadfast::telemetry::init()?;
    let registry = args.common.registry().await?;
    let orders = OrdersClient::connect(ClientConfig::discover(registry)).await?;
    let health = Health::builder().build()?;
    let router = gateway::router(orders)
        .merge(health.router())
        .merge(steadfast::metrics::router());
    let listener = bind("--http-addr", &args.common.http_addr).await?;
    println!(
        "gateway {} http={}",
        args.common.id("gateway"),
        listener.local_addr()?
    );
    let h = health.clone();
    let drain = args.common.drain;
    steadfast_examples::http::serve(
        listener,
        router,
        args.common.http_header_timeout,
        async move {
            steadfast::registry::shutdown_signal().await;
            h.set_not_serving().await;
            tokio::time::sleep(drain).await;
        },
    )
    .await;
    // Sends the spans still buffered when exporting over OTLP.
    steadfast::telemetry::shutdown().await;
    Ok(())
}
