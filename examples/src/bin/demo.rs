//! The demo system on the embedded registry: three user-svc replicas, two order-svc, a
//! gateway under steady HTTP load, and a timeline of faults.
//!
//! Run: `./scripts/demo.sh` (or `cargo run -p steadfast-examples --bin demo`).
//! Options: `--quick` (short phases), `--registry etcd://127.0.0.1:2379` (the same system on
//! a real etcd) or `--registry nacos://127.0.0.1:8848` (on Nacos).

use std::time::Duration;

use clap::Parser;
use steadfast_examples::demo::{self, DemoOptions, LogBuffer};

#[derive(Parser, Debug)]
#[command(name = "demo", about = "The steadfast demo system")]
struct Args {
    /// Short phases (about 2 s each).
    #[arg(long)]
    quick: bool,
    /// Registry URL.
    #[arg(long, default_value = "memory://")]
    registry: String,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    workers: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    steadfast_examples::cli::exit("demo", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<(), steadfast_examples::cli::BoxError> {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    if std::env::var("RUST_LOG").is_err() {
        // SAFETY-free: set before any thread reads the environment.
        unsafe { std::env::set_var("RUST_LOG", "info,h2=warn,hyper=warn,tower=warn") };
    }
    steadfast::telemetry::init_with_writer(move || writer.clone())?;
    let opts = DemoOptions {
        phase: if args.quick {
            Duration::from_secs(2)
        } else {
            demo::FULL_PHASE
        },
        workers: args.workers,
        registry: args.registry,
        progress: !args.quick,
    };
    let report = demo::run(opts, logs).await?;
    demo::print(&report);
    Ok(())
}
