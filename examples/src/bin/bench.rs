//! Benchmarks of the client stack against the raw baseline, measured in one run.
//!
//! Run: `cargo run --release -p steadfast-examples --bin bench -- --quick`
//!
//! Prints a table, then as its last line one JSON object: `overhead_throughput_ratio`,
//! `overhead_us_per_call`, `breaker_admission_ns`, `failsafe_admission_ns`,
//! `failover_errors`, `failover_calls`, `eject_ms`, `amplification_budget`,
//! `amplification_naive`, `discovery_add_ms` (and `discovery_add_ms_etcd` when an `etcd`
//! binary is on PATH).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use steadfast::breaker::{BreakerConfig, CircuitBreaker};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::registry::{Instance, MemoryRegistry, Registry};
use steadfast::retry::{CallPolicy, RetryPolicy, RetryThrottle};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use steadfast_examples::services::user::{Fault, UserSvc};
use tonic::Status;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "steadfast benchmarks against the raw baseline"
)]
struct Args {
    /// Shorter runs (the whole bench in well under 3 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Only the sizes section (pool and registry updates, picks at 100 to 10,000 endpoints).
    #[arg(long)]
    sizes: bool,
}

// 16 workers keep up to 16 calls in flight: a bucket of 10 tokens would run dry on the
// burst of failures one dying replica causes, so the retry budget is sized to the concurrency.
#[steadfast::resilient_client(service = "bench-user", client = UserServiceClient, timeout = "5s",
    retry(max_attempts = 3, initial_backoff = "5ms", max_backoff = "20ms"),
    throttle(max_tokens = 100, token_ratio = 0.1))]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Server {
    svc: UserSvc,
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

async fn server(id: &str) -> Result<Server, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let svc = UserSvc::new(id, Fault::None);
    let s = svc.clone();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(s))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Ok(Server { svc, addr, task })
}

/// Process CPU time (user + system) from /proc, in seconds; 0 where unavailable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `workers` closed loops of `call` for `d`; returns (calls, errors, cpu seconds).
async fn closed_loop<F, Fut>(workers: usize, d: Duration, call: F) -> (u64, u64, f64)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (stop, calls, errors, call) =
                (stop.clone(), calls.clone(), errors.clone(), call.clone());
            tokio::spawn(async move {
                let mut n = w as u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if !call(n).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (
        calls.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        cpu_seconds() - cpu0,
    )
}

fn admission_ns() -> (f64, f64) {
    let n = 5_000_000u64;
    let ours = CircuitBreaker::new("bench", BreakerConfig::default());
    let t = Instant::now();
    for _ in 0..n {
        if let Ok(p) = black_box(&ours).try_acquire() {
            p.success();
        }
    }
    let ours_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let theirs = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            4,
            failsafe::backoff::constant(Duration::from_secs(30)),
        ))
        .build();
    let t = Instant::now();
    for _ in 0..n {
        let b = black_box(&theirs);
        if b.is_call_permitted() {
            b.on_success();
        }
    }
    (ours_ns, t.elapsed().as_nanos() as f64 / n as f64)
}

/// A replica on its own runtime and thread, so that killing it drops every connection at
/// once, as SIGKILL would (aborting a server task leaves its connection tasks serving).
struct Isolated {
    addr: String,
    kill: Option<std::sync::mpsc::Sender<()>>,
}

impl Isolated {
    fn start(id: &str) -> Result<Isolated, BoxError> {
        let s = UserSvc::new(id, Fault::None);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            addr_tx
                .send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            rt.spawn(
                tonic::transport::Server::builder()
                    .add_service(UserServiceServer::new(s))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            // Serve until killed: the runtime drives its tasks while this thread waits.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let _ = killed.recv();
                let _ = tx.send(());
            });
            let _ = rt.block_on(rx);
            rt.shutdown_background(); // every task, every connection, gone at once
        });
        Ok(Isolated {
            addr: addr_rx.recv()?,
            kill: Some(kill),
        })
    }

    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}

async fn discovery_add_ms(registry: Arc<dyn Registry>) -> Result<f64, BoxError> {
    let first = server("d1").await?;
    registry
        .register(&Instance::new("bench-user", "d1", &first.addr))
        .await?;
    let users = UsersClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (u, s) = (users.clone(), stop.clone());
    let load = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let _ = u.get_user(GetUserRequest { id: 1 }).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = server("d2").await?;
    let started = Instant::now();
    registry
        .register(&Instance::new("bench-user", "d2", &second.addr))
        .await?;
    while second.svc.calls() == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    let _ = registry.shutdown().await;
    first.task.abort();
    second.task.abort();
    Ok(ms)
}

/// A throwaway single-member etcd, when the binary is installed.
struct Etcd(std::process::Child, std::path::PathBuf);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

async fn start_etcd() -> Option<(Etcd, String)> {
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()
            .map(|a| a.port())
    };
    let (c, p) = (port(())?, port(())?);
    let dir = std::env::temp_dir().join(format!("steadfast-bench-etcd-{}", std::process::id()));
    let child = std::process::Command::new("etcd")
        .args(["--data-dir", dir.to_str()?])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{p}"),
        ])
        .args(["--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let etcd = Etcd(child, dir);
    let url = format!("etcd://127.0.0.1:{c}");
    for _ in 0..100 {
        if steadfast::registry::from_url(&url).await.is_ok() {
            return Some((etcd, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Prints one row of the results table.
fn row(name: &str, v: String, target: &str) {
    println!("{name:<44} {v:>14} {target:>10}");
}

/// Section 6, sizes: a pool update and a pick at 100, 1000 and 10,000 endpoints (0 % and
/// 90 % ejected), and registering into the memory registry at those sizes, with a watcher.
async fn sizes() -> Result<serde_json::Map<String, serde_json::Value>, BoxError> {
    let mut sizes = Vec::new();
    for n in [100, 1_000, 10_000] {
        let (update, _) = steadfast::discovery::measure_pool(n, 0, 1).await;
        let (_, pick) = steadfast::discovery::measure_pool(n, 0, 200_000).await;
        let (_, pick_ejected) = steadfast::discovery::measure_pool(n, 90, 200_000).await;
        let (all, one) = memory_register(n).await?;
        sizes.push((n, update, pick, pick_ejected, all, one));
    }
    for (n, update, pick, pick_ejected, all, one) in &sizes {
        row(
            &format!("pool of {n}: one update (ms)"),
            format!("{:.4}", update.as_secs_f64() * 1e3),
            "< 1",
        );
        row(
            &format!("pool of {n}: pick, 0 % / 90 % ejected (ns)"),
            format!("{}/{}", pick.as_nanos(), pick_ejected.as_nanos()),
            "flat",
        );
        row(
            &format!("memory registry: {n} registrations (ms)"),
            format!("{:.1}", all.as_secs_f64() * 1e3),
            "O(N)",
        );
        row(
            &format!("memory registry: one more at {n} (us)"),
            format!("{:.1}", one.as_secs_f64() * 1e6),
            "flat",
        );
    }
    let small = sizes[0].2.as_nanos().max(1) as f64;
    let flatness = sizes
        .iter()
        .map(|s| s.3.as_nanos().max(s.2.as_nanos()) as f64 / small)
        .fold(0.0, f64::max);
    row(
        "pick cost, worst size / 100 endpoints",
        format!("{flatness:.2}"),
        "<= 2",
    );
    let mut json = serde_json::Map::new();
    json.insert(
        "pool_update_ms_10000".into(),
        (sizes[2].1.as_secs_f64() * 1e3).into(),
    );
    json.insert(
        "pool_update_ms_100".into(),
        (sizes[0].1.as_secs_f64() * 1e3).into(),
    );
    json.insert(
        "pick_ns_10000_90pct_ejected".into(),
        (sizes[2].3.as_nanos() as f64).into(),
    );
    json.insert("pick_flatness".into(), flatness.into());
    json.insert(
        "memory_register_all_ms_10000".into(),
        (sizes[2].4.as_secs_f64() * 1e3).into(),
    );
    json.insert(
        "memory_register_one_us_10000".into(),
        (sizes[2].5.as_secs_f64() * 1e6).into(),
    );
    json.insert(
        "memory_register_one_us_100".into(),
        (sizes[0].5.as_secs_f64() * 1e6).into(),
    );
    Ok(json)
}

/// Registers `n` instances of one service into a fresh memory registry that a client
/// watches: the time for all of them, and the median time of 21 more, one at a time.
async fn memory_register(n: usize) -> Result<(Duration, Duration), BoxError> {
    let reg = MemoryRegistry::new();
    let watcher = reg.watch("sized").await?;
    let instance = |i: usize| {
        Instance::new(
            "sized",
            format!("i{i}"),
            format!("http://127.0.0.1:{}", 1 + i % 60_000),
        )
    };
    let started = Instant::now();
    for i in 0..n {
        reg.register(&instance(i)).await?;
    }
    let all = started.elapsed();
    let mut one = Vec::new();
    for k in 0..21 {
        let started = Instant::now();
        reg.register(&instance(n + k)).await?;
        one.push(started.elapsed());
    }
    one.sort_unstable();
    assert_eq!(watcher.borrow().len(), n + 21);
    reg.shutdown().await?;
    Ok((all, one[one.len() / 2]))
}

async fn bench(args: Args) -> Result<serde_json::Value, BoxError> {
    if args.sizes {
        return Ok(serde_json::Value::Object(sizes().await?));
    }
    let d = if args.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(8)
    };
    let workers = 16;

    // 1. Throughput and CPU: raw tonic client against the resilient client, same server.
    let s = server("tput").await?;
    let raw = UserServiceClient::connect(s.addr.clone()).await?;
    let ours = UsersClient::connect(
        ClientConfig::endpoints([s.addr.clone()])?.downstreams(Downstreams::new()),
    )
    .await?;
    let raw_call = move |n: u64| {
        let mut c = raw.clone();
        async move {
            c.get_user(GetUserRequest { id: 1 + n % 1000 })
                .await
                .is_ok()
        }
    };
    let ours_call = move |n: u64| {
        let c = ours.clone();
        async move {
            c.get_user(GetUserRequest { id: 1 + n % 1000 })
                .await
                .is_ok()
        }
    };
    let _ = closed_loop(workers, Duration::from_millis(500), raw_call.clone()).await; // warm-up
    let (r1, _, rc1) = closed_loop(workers, d, raw_call.clone()).await;
    let (o1, _, oc1) = closed_loop(workers, d, ours_call.clone()).await;
    let (r2, _, rc2) = closed_loop(workers, d, raw_call).await;
    let (o2, _, oc2) = closed_loop(workers, d, ours_call).await;
    let (raw_calls, ours_calls) = ((r1 + r2) as f64, (o1 + o2) as f64);
    let ratio = ours_calls / raw_calls;
    let overhead_us = ((oc1 + oc2) / ours_calls - (rc1 + rc2) / raw_calls) * 1e6;
    s.task.abort();

    // 2. Breaker admission.
    let (breaker_ns, failsafe_ns) = admission_ns();

    // 3. Failover: one of three replicas killed mid-run.
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let mut replicas = Vec::new();
    for id in ["f1", "f2", "f3"] {
        let r = Isolated::start(id)?;
        registry
            .register(&Instance::new("bench-user", id, &r.addr))
            .await?;
        replicas.push(r);
    }
    let users = UsersClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let mut victim = replicas.remove(1);
    let channel = users.core().channel();
    // Kill at d/3, then watch the attempts the client routes to the dead replica: the last
    // time that count moved is when the client stopped sending to it (ejection).
    let watcher = tokio::spawn(async move {
        tokio::time::sleep(d / 3).await;
        let killed = Instant::now();
        victim.kill();
        let attempts = || channel.attempts_to("f2").unwrap_or(0);
        let mut last_seen = attempts();
        let mut last_change = killed;
        while killed.elapsed() < d / 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = attempts();
            if now != last_seen {
                last_seen = now;
                last_change = Instant::now();
            }
        }
        (last_change - killed).as_secs_f64() * 1000.0
    });
    let u = users.clone();
    let (failover_calls, failover_errors, _) = closed_loop(workers, d, move |n| {
        let u = u.clone();
        async move {
            u.get_user(GetUserRequest { id: 1 + n % 1000 })
                .await
                .is_ok()
        }
    })
    .await;
    let eject_ms = watcher.await.unwrap_or(f64::NAN);
    for mut r in replicas {
        r.kill();
    }

    // 4. Amplification in a full outage: attempts per call, with and without the budget.
    let down = server("down").await?;
    down.svc.set_fault(Fault::Down);
    let client = UserServiceClient::connect(down.addr.clone()).await?;
    let retry = RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(2))
        .build()?;
    let mut amplification = Vec::new();
    for throttle in [Some(Arc::new(RetryThrottle::default())), None] {
        let policy = CallPolicy::new("bench-down", "GetUser")
            .retry(Some(retry))
            .throttle(throttle);
        let before = down.svc.calls();
        let n = 300;
        for i in 0..n {
            let c = client.clone();
            let _ = policy
                .call(tonic::Request::new(GetUserRequest { id: i }), move |req| {
                    let mut c = c.clone();
                    async move { c.get_user(req).await }
                })
                .await;
        }
        amplification.push((down.svc.calls() - before) as f64 / n as f64);
    }
    down.task.abort();

    // 5. Discovery: a new instance's registration to its first call.
    let discovery_memory = discovery_add_ms(Arc::new(MemoryRegistry::new())).await?;
    let discovery_etcd = match start_etcd().await {
        Some((_etcd, url)) => {
            Some(discovery_add_ms(steadfast::registry::from_url(&url).await?).await?)
        }
        None => None,
    };

    println!("{:<44} {:>14} {:>10}", "measure", "value", "target");
    row(
        "throughput ours/raw (closed loop, 16 workers)",
        format!("{ratio:.3}"),
        ">= 0.97",
    );
    row(
        "  raw calls/s, ours calls/s",
        format!(
            "{:.0}/{:.0}",
            raw_calls / (2.0 * d.as_secs_f64()),
            ours_calls / (2.0 * d.as_secs_f64())
        ),
        "",
    );
    row(
        "added client CPU per call (us)",
        format!("{overhead_us:.2}"),
        "<= 2",
    );
    row(
        "breaker admission + record (ns)",
        format!("{breaker_ns:.1}"),
        "<= 25",
    );
    row(
        "failsafe StateMachine, same (ns)",
        format!("{failsafe_ns:.1}"),
        "",
    );
    row(
        "failover: errors / calls",
        format!("{failover_errors}/{failover_calls}"),
        "0",
    );
    row(
        "eject: kill to last attempt on it (ms)",
        format!("{eject_ms:.0}"),
        "< 1000",
    );
    row(
        "amplification with budget (attempts/call)",
        format!("{:.3}", amplification[0]),
        "<= 1.1",
    );
    row(
        "amplification without budget",
        format!("{:.3}", amplification[1]),
        "",
    );
    row(
        "discovery, memory: register to first call (ms)",
        format!("{discovery_memory:.1}"),
        "<= 200",
    );
    if let Some(ms) = discovery_etcd {
        row(
            "discovery, etcd: register to first call (ms)",
            format!("{ms:.1}"),
            "<= 200",
        );
    }
    let mut json = serde_json::json!({
        "overhead_throughput_ratio": ratio,
        "overhead_us_per_call": overhead_us,
        "breaker_admission_ns": breaker_ns,
        "failsafe_admission_ns": failsafe_ns,
        "failover_errors": failover_errors,
        "failover_calls": failover_calls,
        "eject_ms": eject_ms,
        "amplification_budget": amplification[0],
        "amplification_naive": amplification[1],
        "discovery_add_ms": discovery_memory,
    });
    for (k, v) in sizes().await? {
        json[k] = v;
    }
    if let Some(ms) = discovery_etcd {
        json["discovery_add_ms_etcd"] = ms.into();
    }
    Ok(json)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let run = async {
        let json = bench(Args::parse()).await?;
        println!("{json}");
        Ok(())
    };
    steadfast_examples::cli::exit("bench", run.await)
}
