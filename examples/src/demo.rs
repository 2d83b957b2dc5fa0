//! The demo: three user-svc replicas, two order-svc, a gateway, steady HTTP load, and a
//! timeline of faults, with what each phase did to the calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steadfast::client::{ClientConfig, Downstreams};
use steadfast::health::Health;
use steadfast::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pb::order::order_service_server::OrderServiceServer;
use crate::pb::user::user_service_server::UserServiceServer;
use crate::run::{Options, Running, serve, wait_until};
use crate::services::gateway::{self, OrdersClient};
use crate::services::order::{OrderSvc, Store, UsersClient};
use crate::services::user::{Fault, UserSvc};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Each phase lasts this long.
    pub phase: Duration,
    /// Concurrent HTTP clients.
    pub workers: usize,
    /// The registry URL (`memory://` by default).
    pub registry: String,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
}

/// The phases of the timeline.
pub const PHASES: [&str; 5] = [
    "steady",
    "kill one user-svc replica",
    "one user-svc replica slow",
    "user-svc fully down",
    "user-svc restored",
];

/// What one phase did.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    /// The phase's name.
    pub name: &'static str,
    /// HTTP calls finished in the phase.
    pub calls: usize,
    /// Calls answered 201.
    pub ok: usize,
    /// Retries made by order-svc and the gateway.
    pub retries: u64,
    /// user-svc breaker transitions, e.g. `closed->open`.
    pub transitions: Vec<String>,
    /// Calls that reached any user-svc replica.
    pub downstream_calls: u64,
    /// Latency percentiles, in ms.
    pub p50_ms: f64,
    /// Latency percentiles, in ms.
    pub p99_ms: f64,
}

impl PhaseResult {
    /// Successful calls, in percent.
    pub fn success_pct(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            100.0 * self.ok as f64 / self.calls as f64
        }
    }
}

/// The demo's outcome.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per phase.
    pub phases: Vec<PhaseResult>,
    /// The trace id of one request, and the log lines of all services carrying it.
    pub trace: Option<(String, Vec<String>)>,
    /// The user-svc breaker's state at the end.
    pub final_breaker_states: Vec<String>,
}

struct Sample {
    phase: usize,
    ok: bool,
    latency: Duration,
    trace_id: Option<String>,
}

/// A log destination the demo can read back.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn post_order(addr: SocketAddr, user_id: u64) -> (u16, Option<String>) {
    let body = format!(r#"{{"user_id":{user_id},"item":"book","quantity":1}}"#);
    let req = format!(
        "POST /orders HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let trace = text
            .lines()
            .find_map(|l| l.strip_prefix("x-trace-id: ").map(str::to_owned));
        Some((status, trace))
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, None))
}

/// Sums a counter's samples whose line starts with `prefix` in the metrics text.
fn counter(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            l.split(" # ")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs the whole demo and returns what happened. Logs go wherever the global subscriber
/// writes; pass the same buffer as `logs` so the demo can show one trace.
pub async fn run(opts: DemoOptions, logs: LogBuffer) -> Result<Report, BoxError> {
    let registry: Arc<dyn Registry> = steadfast::registry::from_url(&opts.registry).await?;
    let data = std::env::temp_dir().join(format!("steadfast-demo-{}", std::process::id()));
    let opt = |service: &str, id: &str, grpc_service: &'static str| Options {
        service: service.into(),
        id: id.into(),
        grpc_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        drain: Duration::from_millis(200),
        grpc_service,
    };
    let fast_health = || Health::builder().interval(Duration::from_millis(200));

    // Three user-svc replicas.
    let mut users: Vec<(UserSvc, Running)> = Vec::new();
    for id in ["user-1", "user-2", "user-3"] {
        let svc = UserSvc::new(id, Fault::None);
        let running = serve(
            opt("user-svc", id, "user.UserService"),
            registry.clone(),
            fast_health(),
            UserServiceServer::new(svc.clone()),
        )
        .await?;
        users.push((svc, running));
    }
    // Two order-svc replicas: each is its own "process" with its own breaker.
    let mut orders = Vec::new();
    let mut order_clients = Vec::new();
    for (i, id) in ["order-1", "order-2"].into_iter().enumerate() {
        let store = Store::open(&data.join(id))?;
        let users_client = UsersClient::connect(
            ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
        )
        .await?;
        let db = store.clone();
        let health = fast_health().check(
            "sqlite",
            steadfast::health::Check::new(move || {
                let db = db.clone();
                async move { db.ping().await.map_err(|s| s.message().to_owned()) }
            }),
        );
        let running = serve(
            opt("order-svc", id, "order.OrderService"),
            registry.clone(),
            health,
            OrderServiceServer::new(OrderSvc::new(store, users_client.clone())),
        )
        .await?;
        orders.push(running);
        order_clients.push(users_client);
        let _ = i;
    }
    // The gateway.
    let orders_client = OrdersClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = listener.local_addr()?;
    let router = gateway::router(orders_client.clone()).merge(steadfast::metrics::router());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    println!(
        "gateway http://{gateway_addr}  user-svc x3, order-svc x2 on 127.0.0.1, registry {}",
        opts.registry
    );

    // Everyone registered (once healthy) and discovered.
    let ready = wait_until(Duration::from_secs(10), || {
        order_clients
            .iter()
            .all(|c| c.core().channel().discovered_ids().len() == 3)
            && orders_client.core().channel().discovered_ids().len() == 2
    })
    .await;
    if !ready {
        return Err("the services did not all register and get discovered within 10s".into());
    }

    // Steady load.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let phase_now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..opts.workers {
        let (samples, phase_now, stop) = (samples.clone(), phase_now.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = w as u64;
            while !stop.load(Ordering::Relaxed) {
                n += 7;
                let phase = phase_now.load(Ordering::Relaxed);
                let started = Instant::now();
                let (status, trace_id) = post_order(gateway_addr, 1 + n % 1000).await;
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Sample {
                        phase,
                        ok: status == 201,
                        latency: started.elapsed(),
                        trace_id,
                    });
            }
        }));
    }

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new((opts.phase.as_millis() as u64) * PHASES.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let user_calls =
        |users: &[(UserSvc, Running)]| users.iter().map(|(s, _)| s.calls()).sum::<u64>();
    let mut results = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        match i {
            1 => users[1].1.kill(),
            2 => users[0]
                .0
                .set_fault(Fault::Slow(Duration::from_millis(400))),
            3 => users.iter().for_each(|(s, _)| s.set_fault(Fault::Down)),
            4 => users.iter().for_each(|(s, _)| s.set_fault(Fault::None)),
            _ => {}
        }
        bar.set_message(format!("phase {}: {name}", i + 1));
        let before_metrics = steadfast::metrics::render();
        let before_user_calls = user_calls(&users);
        phase_now.store(i, Ordering::Relaxed);
        let started = Instant::now();
        while started.elapsed() < opts.phase {
            tokio::time::sleep(Duration::from_millis(100)).await;
            bar.inc(100);
        }
        let after = steadfast::metrics::render();
        let delta = |prefix: &str| counter(&after, prefix) - counter(&before_metrics, prefix);
        let mut transitions = Vec::new();
        for to in ["open", "half_open", "closed"] {
            let n = delta(&format!(
                "steadfast_breaker_transitions_total{{service=\"user-svc\",to=\"{to}\"}}"
            ));
            if n > 0.0 {
                transitions.push(format!("->{to} x{n}"));
            }
        }
        results.push(PhaseResult {
            name,
            retries: delta("steadfast_client_retries_total") as u64,
            transitions,
            downstream_calls: user_calls(&users) - before_user_calls,
            ..PhaseResult::default()
        });
    }
    bar.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }

    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    for (i, r) in results.iter_mut().enumerate() {
        let mut lat: Vec<Duration> = samples
            .iter()
            .filter(|s| s.phase == i)
            .map(|s| s.latency)
            .collect();
        lat.sort();
        r.calls = lat.len();
        r.ok = samples.iter().filter(|s| s.phase == i && s.ok).count();
        r.p50_ms = percentile(&lat, 0.5);
        r.p99_ms = percentile(&lat, 0.99);
    }

    // One request's log lines across the three services, joined by trace id.
    let trace = samples
        .iter()
        .filter(|s| s.phase == 0 && s.ok)
        .find_map(|s| s.trace_id.clone())
        .map(|id| {
            let text = String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|p| p.into_inner()))
                .into_owned();
            let lines = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["trace_id"] == id.as_str())
                .map(|v| {
                    format!(
                        "{} {:<5} {:<40} span={} {}",
                        v["timestamp"].as_str().unwrap_or(""),
                        v["level"].as_str().unwrap_or(""),
                        v["target"].as_str().unwrap_or(""),
                        v["span_id"].as_str().unwrap_or(""),
                        v["message"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            (id, lines)
        });
    let final_breaker_states = order_clients
        .iter()
        .map(|c| c.core().breaker().state().to_string())
        .collect();

    for o in orders {
        o.shutdown().await;
    }
    for (_, u) in users {
        u.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(Report {
        phases: results,
        trace,
        final_breaker_states,
    })
}

/// Prints the per-phase table and the joined trace.
pub fn print(report: &Report) {
    println!();
    println!(
        "{:<28} {:>6} {:>9} {:>8} {:>8} {:>9} {:>9}  breaker",
        "phase", "calls", "success", "retries", "to user", "p50 ms", "p99 ms"
    );
    for (i, p) in report.phases.iter().enumerate() {
        println!(
            "{:<28} {:>6} {:>8.1}% {:>8} {:>8} {:>9.1} {:>9.1}  {}",
            format!("{}. {}", i + 1, p.name),
            p.calls,
            p.success_pct(),
            p.retries,
            p.downstream_calls,
            p.p50_ms,
            p.p99_ms,
            p.transitions.join(" ")
        );
    }
    println!(
        "user-svc breakers at the end (one per order-svc): {}",
        report.final_breaker_states.join(", ")
    );
    if let Some((id, lines)) = &report.trace {
        println!("\none request across gateway, order-svc and user-svc (trace_id {id}):");
        for l in lines {
            println!("  {l}");
        }
    }
}
