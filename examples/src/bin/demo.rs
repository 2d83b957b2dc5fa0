//! A small end-to-end demo of `#[resilient_client]` on loopback, with no external server.
//!
//! Run it with `cargo run -p steadfast-examples --bin demo` (or `./scripts/demo.sh`).
//! Options: `--fail-first N` (default 2) makes the server fail its first N lookups.
//!
//! It starts a user service on 127.0.0.1 that fails its first N calls with UNAVAILABLE and
//! answers slowly once, then shows what an annotated client does: retries with backoff, a
//! non-idempotent call that is not retried, a slow attempt cut off by the per-attempt timeout,
//! and a deadline that bounds everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use steadfast::client::ClientConfig;
use steadfast::deadline::DeadlineLayer;
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::{UserService, UserServiceServer};
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tonic::{Request, Response, Status};

/// The downstream, described once; `UsersClient` is generated from it.
#[steadfast::resilient_client(
    service = "user-svc",
    client = UserServiceClient,
    timeout = "1s",
    retry(max_attempts = 4, initial_backoff = "50ms", max_backoff = "400ms", multiplier = 2.0,
          per_attempt_timeout = "300ms", on = [Unavailable]),
    throttle(max_tokens = 100, token_ratio = 1.0),
    breaker(min_failures = 8, failure_ratio = 0.5, open_timeout = "5s"),
)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
    #[no_retry] // creating a user twice would be wrong
    async fn create_user(&self, req: CreateUserRequest) -> Result<CreateUserReply, Status>;
}

/// A user service that fails its first `fail_first` lookups, is slow on request, and can
/// be taken down.
struct Flaky {
    fail_first: u32,
    calls: Arc<AtomicU32>,
    slow_next: Arc<AtomicU32>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl UserService for Flaky {
    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("down"));
        }
        let previous = req
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        let budget = steadfast::Context::current()
            .remaining()
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or_else(|| "none".into());
        if n <= self.fail_first {
            println!(
                "    server: call #{n} (previous attempts {previous}, deadline {budget}) -> UNAVAILABLE"
            );
            return Err(Status::unavailable("warming up"));
        }
        if self.slow_next.fetch_sub(1, Ordering::SeqCst) > 0 {
            println!(
                "    server: call #{n} (previous attempts {previous}, deadline {budget}) -> stalls"
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        println!("    server: call #{n} (previous attempts {previous}, deadline {budget}) -> OK");
        let id = req.into_inner().id;
        Ok(Response::new(GetUserReply {
            id,
            name: format!("user-{id}"),
            served_by: "demo".into(),
        }))
    }

    async fn create_user(
        &self,
        _: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        println!("    server: create_user -> UNAVAILABLE");
        Err(Status::unavailable("try later"))
    }
}

fn fail_first_arg() -> Result<u32, String> {
    let mut args = std::env::args().skip(1);
    let mut fail_first = 2;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fail-first" => {
                let v = args.next().ok_or("--fail-first needs a number")?;
                fail_first = v
                    .parse()
                    .map_err(|_| format!("--fail-first: `{v}` is not a number"))?;
            }
            "-h" | "--help" => {
                println!("usage: demo [--fail-first N]");
                std::process::exit(0);
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: demo [--fail-first N]"
                ));
            }
        }
    }
    Ok(fail_first)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fail_first = fail_first_arg()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("user-svc listening on {addr}");
    let slow_next = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = Flaky {
        fail_first,
        calls: calls.clone(),
        slow_next: slow_next.clone(),
        down: down.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(DeadlineLayer::new())
            .add_service(UserServiceServer::new(svc))
            .serve_with_incoming(tokio_stream_listener(listener)),
    );

    let users =
        UsersClient::connect(ClientConfig::endpoints([format!("http://{addr}")])?.eager(true))
            .await?;

    println!(
        "\n1. get_user while the server fails its first {fail_first} calls (retried with backoff):"
    );
    let t = Instant::now();
    let result = users.get_user(GetUserRequest { id: 7 }).await;
    report(result.map(|r| r.name), t);

    println!("\n2. create_user is #[no_retry]: one attempt, the error is returned as is:");
    let t = Instant::now();
    let result = users
        .create_user(CreateUserRequest { name: "ada".into() })
        .await;
    report(result.map(|r| r.id.to_string()), t);

    println!("\n3. a stalled attempt is cut off after 300 ms and retried:");
    slow_next.store(1, Ordering::SeqCst);
    let t = Instant::now();
    let result = users.get_user(GetUserRequest { id: 8 }).await;
    report(result.map(|r| r.name), t);

    println!("\n4. a server that stalls every time: the 1 s deadline bounds all attempts:");
    slow_next.store(100, Ordering::SeqCst);
    let t = Instant::now();
    let result = users.get_user(GetUserRequest { id: 9 }).await;
    report(result.map(|r| r.name), t);

    println!("\n5. the server goes down: the breaker opens and calls fail fast:");
    slow_next.store(0, Ordering::SeqCst);
    down.store(true, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    let t = Instant::now();
    let mut fast = 0;
    for _ in 0..20 {
        if let Err(e) = users.get_user(GetUserRequest { id: 1 }).await
            && steadfast::breaker::is_open_rejection(&e)
        {
            fast += 1;
        }
    }
    println!(
        "  client: 20 calls in {} ms; {} reached the server, {fast} failed fast; breaker is {}",
        t.elapsed().as_millis(),
        calls.load(Ordering::SeqCst) - before,
        users.core().breaker().state()
    );
    Ok(())
}

fn report(result: Result<String, Status>, started: Instant) {
    let ms = started.elapsed().as_millis();
    match result {
        Ok(v) => println!("  client: ok `{v}` after {ms} ms"),
        Err(s) => println!("  client: {:?}: {} after {ms} ms", s.code(), s.message()),
    }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
