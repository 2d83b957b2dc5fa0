//! What the resilient client stack costs against the raw tonic client, layer by layer.
//!
//! Run: `cargo run --release -p steadfast-examples --bin overhead -- --quick`
//!
//! The server runs in its own process (this binary with `--serve`), with the layers a
//! steadfast service has (trace, deadline, `#[traced]` handler). The client process measures
//! each variant, the raw tonic client and the full default stack and each layer alone, in
//! rounds: every variant is warmed up, the order rotates from round to round, and each round
//! measures 1 call in flight (p50, p99) and 16 in flight (throughput), with client and server
//! CPU time per call taken from `/proc`. Every ratio compares a variant with the raw client in
//! the same round; the table shows the median and the min-max over the rounds. The last line
//! is one JSON object.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use steadfast::breaker::{BreakerConfig, BreakerLayer, CircuitBreaker};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::deadline::{AttemptTimeoutLayer, CallDeadlineLayer, DeadlineLayer};
use steadfast::metrics::{CallMetricsLayer, Metrics};
use steadfast::retry::{CallPolicy, RetryLayer, RetryPolicy, RetryThrottle};
use steadfast::trace::{PropagateMetadataLayer, TraceLayer};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use steadfast_examples::services::user::{Fault, UserSvc};
use tonic::Status;
use tower::{Layer, ServiceExt};

#[derive(Parser, Debug)]
#[command(
    name = "overhead",
    about = "client stack cost against raw tonic, layer by layer"
)]
struct Args {
    /// 1 s per measurement instead of 3 s.
    #[arg(long)]
    quick: bool,
    /// Rounds (at least 5).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Run the server and print its address (used by the bench itself).
    #[arg(long, hide = true)]
    serve: bool,
    /// Instead of the timed rounds: warm up, then make this many calls one after another
    /// with the variant `--variant` and exit. For counting instructions with
    /// `valgrind --tool=callgrind`, which is exact whatever else the machine does: the
    /// difference between two counts (N and 2N calls) is the cost of N calls.
    #[arg(long)]
    calls: Option<u64>,
    /// The variant for `--calls`, by its number in the table (0 is raw tonic).
    #[arg(long, default_value_t = 0)]
    variant: usize,
    /// With `--calls`: call this server (one started with `--serve`, for example under
    /// callgrind to count the server's instructions) instead of starting one.
    #[arg(long)]
    server: Option<String>,
}

#[steadfast::resilient_client(service = "overhead-user", client = UserServiceClient,
    grpc_service = "user.UserService")]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Call = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// CPU time (user + system) of process `pid` ("self" for this one), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn serve() -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // Ends on Ctrl-C or SIGTERM, so that a profiler running it writes its results.
    let stop = steadfast::registry::shutdown_signal();
    println!("http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        .layer(TraceLayer::new())
        .layer(DeadlineLayer::new())
        .add_service(UserServiceServer::new(UserSvc::new("bench", Fault::None)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await?;
    Ok(())
}

/// The server process; killed on drop.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server() -> Result<(ServerProcess, String), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    Ok((ServerProcess(child), line.trim().to_owned()))
}

/// One call through `svc`, a typed service around the raw tonic client.
fn boxed<S>(svc: S) -> Call
where
    S: tower::Service<
            tonic::Request<GetUserRequest>,
            Response = tonic::Response<GetUserReply>,
            Error = Status,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Arc::new(move |i| {
        let svc = svc.clone();
        Box::pin(async move {
            svc.oneshot(tonic::Request::new(GetUserRequest { id: 1 + i % 1000 }))
                .await
                .is_ok()
        })
    })
}

async fn variants(addr: &str) -> Result<Vec<(&'static str, Call)>, BoxError> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let headers_channel = channel.clone();
    let raw = tower::service_fn(move |req: tonic::Request<GetUserRequest>| {
        let mut client = UserServiceClient::new(channel.clone());
        async move { client.get_user(req).await }
    });
    // Raw tonic sending what the full stack adds on the wire and nothing else: a fresh
    // `traceparent` and `x-trace-id` and a `grpc-timeout`, never indexed, as the stack sends
    // them. The floor of what the trace and deadline headers cost both processes.
    let headers_only = tower::service_fn(move |mut req: tonic::Request<GetUserRequest>| {
        let mut client = UserServiceClient::new(headers_channel.clone());
        insert_headers(req.metadata_mut());
        async move { client.get_user(req).await }
    });
    let policy = |name: &str| {
        Arc::new(
            CallPolicy::new("overhead-layer", name)
                .retry(Some(RetryPolicy::default()))
                .throttle(Some(Arc::new(RetryThrottle::default())))
                .metrics(Some(Arc::new(
                    Metrics::global().client_method("overhead-layer", name),
                ))),
        )
    };
    let breaker = CircuitBreaker::shared("overhead-layer", BreakerConfig::default());
    let stack = UsersClient::connect(
        ClientConfig::endpoints([addr])?
            .eager(true)
            .downstreams(Downstreams::new()),
    )
    .await?;
    let full: Call = Arc::new(move |i| {
        let stack = stack.clone();
        Box::pin(async move {
            stack
                .get_user(GetUserRequest { id: 1 + i % 1000 })
                .await
                .is_ok()
        })
    });
    Ok(vec![
        ("raw tonic", boxed(raw.clone())),
        ("full stack (default)", full),
        (
            "metrics only",
            boxed(CallMetricsLayer::new(policy("metrics").method_metrics()).layer(raw.clone())),
        ),
        (
            "deadline + attempt timer",
            boxed(
                CallDeadlineLayer::new(Some(Duration::from_secs(10)))
                    .layer(AttemptTimeoutLayer::new(None).layer(raw.clone())),
            ),
        ),
        (
            "retry only",
            boxed(RetryLayer::new(policy("retry")).layer(raw.clone())),
        ),
        (
            "breaker only",
            boxed(BreakerLayer::new(breaker).layer(raw.clone())),
        ),
        (
            "trace propagation only",
            boxed(PropagateMetadataLayer::new().layer(raw)),
        ),
        ("headers only (on raw)", boxed(headers_only)),
    ])
}

/// Writes a new `traceparent`, its `x-trace-id` and a `grpc-timeout`, never indexed.
fn insert_headers(metadata: &mut tonic::metadata::MetadataMap) {
    use std::sync::LazyLock;
    use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
    static KEYS: LazyLock<[AsciiMetadataKey; 3]> = LazyLock::new(|| {
        ["traceparent", "x-trace-id", "grpc-timeout"].map(AsciiMetadataKey::from_static)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let seed = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for (i, word) in [mix(seed), mix(seed ^ 1), mix(seed ^ 2)].iter().enumerate() {
        for (j, b) in tp[3 + 16 * i + usize::from(i == 2)..][..16]
            .iter_mut()
            .enumerate()
        {
            *b = b"0123456789abcdef"[(word >> (60 - 4 * j) & 0xf) as usize];
        }
    }
    let value = |bytes: &[u8]| {
        let mut v = AsciiMetadataValue::try_from(bytes).expect("ASCII");
        v.set_sensitive(true);
        v
    };
    metadata.insert(&KEYS[0], value(&tp));
    metadata.insert(&KEYS[1], value(&tp[3..35]));
    metadata.insert(&KEYS[2], value(b"9999m"));
}

/// One measurement: calls, failures, latencies (sorted), client and server CPU seconds.
struct Run {
    calls: u64,
    errors: u64,
    latencies: Vec<Duration>,
    client_cpu: f64,
    server_cpu: f64,
    elapsed: Duration,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        let l = &self.latencies;
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
    }
    fn client_us(&self) -> f64 {
        self.client_cpu * 1e6 / self.calls.max(1) as f64
    }
    fn server_us(&self) -> f64 {
        self.server_cpu * 1e6 / self.calls.max(1) as f64
    }
}

async fn measure(call: &Call, workers: usize, d: Duration, server_pid: &str) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let (c0, s0, t0) = (cpu_seconds("self"), cpu_seconds(server_pid), Instant::now());
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (call, stop, errors) = (call.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(65_536);
                let mut i = w as u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if !call(i).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(started.elapsed());
                    i += workers as u64;
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_default());
    }
    let elapsed = t0.elapsed();
    let (client_cpu, server_cpu) = (cpu_seconds("self") - c0, cpu_seconds(server_pid) - s0);
    latencies.sort();
    Run {
        calls: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        latencies,
        client_cpu,
        server_cpu,
        elapsed,
    }
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() { 0.0 } else { v[v.len() / 2] };
    (
        median,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// Per round and variant: (c1 run, c16 run).
type Rounds = Vec<Vec<(Run, Run)>>;

async fn bench(args: Args) -> Result<serde_json::Value, BoxError> {
    let (server, addr) = spawn_server()?;
    let pid = server.0.id().to_string();
    let variants = variants(&addr).await?;
    let d = if args.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let rounds = args.rounds.max(5);
    let n = variants.len();
    let mut results: Rounds = (0..rounds).map(|_| Vec::new()).collect();
    for (r, round) in results.iter_mut().enumerate() {
        let mut by_variant: Vec<Option<(Run, Run)>> = (0..n).map(|_| None).collect();
        for k in 0..n {
            let v = (r + k) % n;
            let call = &variants[v].1;
            measure(call, 16, d / 4, &pid).await; // warm-up
            let c1 = measure(call, 1, d, &pid).await;
            let c16 = measure(call, 16, d, &pid).await;
            eprintln!(
                "round {} {:<26} c1 p50 {:>6.0} us  c16 {:>7.0}/s  client {:>5.1} us/call  server {:>5.1} us/call",
                r + 1,
                variants[v].0,
                c1.pct(0.5),
                c16.per_sec(),
                c16.client_us(),
                c16.server_us()
            );
            by_variant[v] = Some((c1, c16));
        }
        *round = by_variant.into_iter().flatten().collect();
    }

    println!(
        "\n{:<26} {:>18} {:>18} {:>12} {:>18} {:>18} {:>7}",
        "variant (vs raw, same round)",
        "c16 throughput",
        "c1 p50",
        "c1 p99 us",
        "client CPU +us",
        "server CPU +us",
        "errors"
    );
    let mut json = serde_json::Map::new();
    for (v, (name, _)) in variants.iter().enumerate() {
        let ratio = |f: &dyn Fn(&(Run, Run)) -> f64| {
            median_range(results.iter().map(|r| f(&r[v]) / f(&r[0])).collect())
        };
        let delta = |f: &dyn Fn(&(Run, Run)) -> f64| {
            median_range(results.iter().map(|r| f(&r[v]) - f(&r[0])).collect())
        };
        let tput = ratio(&|x| x.1.per_sec());
        let p50 = ratio(&|x| x.0.pct(0.5));
        let (p99, _, _) = median_range(results.iter().map(|r| r[v].0.pct(0.99)).collect());
        let client = delta(&|x| x.1.client_us());
        let server = delta(&|x| x.1.server_us());
        let errors: u64 = results.iter().map(|r| r[v].0.errors + r[v].1.errors).sum();
        let fmt = |(m, lo, hi): (f64, f64, f64), p: usize| format!("{m:.p$} [{lo:.p$}..{hi:.p$}]");
        if v == 0 {
            let (t, _, _) = median_range(results.iter().map(|r| r[0].1.per_sec()).collect());
            let (p, _, _) = median_range(results.iter().map(|r| r[0].0.pct(0.5)).collect());
            let (c, _, _) = median_range(results.iter().map(|r| r[0].1.client_us()).collect());
            let (s, _, _) = median_range(results.iter().map(|r| r[0].1.server_us()).collect());
            println!(
                "{name:<26} {:>18} {:>18} {p99:>12.0} {:>18} {:>18} {errors:>7}",
                format!("{t:.0}/s"),
                format!("{p:.0} us"),
                format!("{c:.1} us/call"),
                format!("{s:.1} us/call"),
            );
            json.insert("raw_c16_calls_per_sec".into(), t.into());
            json.insert("raw_c1_p50_us".into(), p.into());
            continue;
        }
        println!(
            "{name:<26} {:>18} {:>18} {p99:>12.0} {:>18} {:>18} {errors:>7}",
            fmt(tput, 3),
            fmt(p50, 3),
            fmt(client, 2),
            fmt(server, 2)
        );
        let key = name
            .split(' ')
            .next()
            .unwrap_or(name)
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        json.insert(format!("{key}_throughput_ratio"), tput.0.into());
        json.insert(format!("{key}_p50_ratio"), p50.0.into());
        json.insert(format!("{key}_client_cpu_us"), client.0.into());
        json.insert(format!("{key}_server_cpu_us"), server.0.into());
        json.insert(format!("{key}_errors"), errors.into());
    }
    json.insert("rounds".into(), rounds.into());
    json.insert("seconds_per_run".into(), d.as_secs_f64().into());
    drop(server);
    Ok(serde_json::Value::Object(json))
}

/// `--calls`: one variant, calls one after another (see [`Args::calls`]).
async fn sequential(calls: u64, variant: usize, server: Option<String>) -> Result<(), BoxError> {
    let (server, addr) = match server {
        Some(addr) => (None, addr),
        None => {
            let (process, addr) = spawn_server()?;
            (Some(process), addr)
        }
    };
    let variants = variants(&addr).await?;
    let (name, call) = variants.get(variant).ok_or("no such variant")?;
    for i in 0..200 {
        call(i).await;
    }
    let mut errors = 0;
    for i in 0..calls {
        errors += u64::from(!call(i).await);
    }
    eprintln!("{name}: {calls} calls, {errors} errors");
    drop(server);
    Ok(())
}

fn main() -> std::process::ExitCode {
    steadfast_examples::cli::exit("overhead", run(Args::parse()))
}

fn run(args: Args) -> Result<(), BoxError> {
    if let Some(calls) = args.calls {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(sequential(calls, args.variant, args.server));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.serve {
        return rt.block_on(serve());
    }
    let json = rt.block_on(bench(args))?;
    println!("{json}");
    Ok(())
}
