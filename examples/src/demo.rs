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
use crate::pb::user::user_service_client::UserServiceClient;
use crate::pb::user::user_service_server::UserServiceServer;
use crate::pb::user::{GetUserReply, GetUserRequest, ListUsersRequest};
use crate::run::{Options, Process, Running, serve, wait_until};
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

/// The length of each phase in the full demo (`--quick` uses 2 s).
pub const FULL_PHASE: Duration = Duration::from_secs(6);

/// The phases of the timeline.
pub const PHASES: [&str; 5] = [
    "steady",
    "kill one user-svc replica",
    "one user-svc replica slow",
    "user-svc fully down",
    "user-svc restored",
];

/// user-svc as a reader that is not hedged sees it (the read probe of the slow phase).
#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient,
    grpc_service = "user.UserService", timeout = "2s")]
trait PlainReads {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, tonic::Status>;
}

/// The same reader with hedging: a second copy after 20 ms, to another replica.
#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient,
    grpc_service = "user.UserService", timeout = "2s",
    hedge(max_attempts = 3, delay = "20ms", non_fatal = [Unavailable]))]
trait HedgedReads {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, tonic::Status>;
}

/// user-svc's user stream as a watcher reads it: long-lived, resumed after a break.
#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient,
    grpc_service = "user.UserService", timeout = "120s")]
trait UserStreams {
    async fn list_users(
        &self,
        req: ListUsersRequest,
    ) -> Result<tonic::Streaming<GetUserReply>, tonic::Status>;
}

/// The same stream under a 1 s deadline.
#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient,
    grpc_service = "user.UserService", timeout = "1s")]
trait ShortStreams {
    async fn list_users(
        &self,
        req: ListUsersRequest,
    ) -> Result<tonic::Streaming<GetUserReply>, tonic::Status>;
}

/// A `ListUsers` stream read across the replica kill (opened on the replica that is
/// killed, resumed through discovery by the method's resume rule: from one past the last id
/// received), and one cut by its deadline.
#[derive(Clone, Debug, Default)]
pub struct StreamProbe {
    /// Messages received across the kill.
    pub received: u64,
    /// Times the stream broke and was resumed.
    pub resumed: u32,
    /// Ids out of sequence (missing or repeated); 0 when the resumed stream is seamless.
    pub gaps: u64,
    /// Resumptions that failed (each is tried again).
    pub errors: u32,
    /// The stream under a 1 s deadline: when it ended, and how.
    pub cut: Option<(Duration, tonic::Code)>,
}

/// Reads `ListUsers` from `first` (a client of one replica) until `stop`; after a break,
/// resumes through `resume` from one past the last id received.
async fn watch_users(
    first: UserStreamsClient,
    resume: UserStreamsClient,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> StreamProbe {
    let mut probe = StreamProbe::default();
    let mut next = 1u64;
    let mut client = first;
    while !*stop.borrow() {
        let req = ListUsersRequest {
            from_id: next,
            count: 0,
            interval_ms: 20,
        };
        let mut stream = match client.list_users(req).await {
            Ok(s) => s,
            Err(_) => {
                probe.errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stop.wait_for(|stopped| *stopped) => return probe,
            };
            match message {
                Ok(Some(reply)) => {
                    if reply.id != next {
                        probe.gaps += 1;
                    }
                    next = reply.id + 1;
                    probe.received += 1;
                }
                // Broken (the replica died) or ended: resume elsewhere.
                Ok(None) | Err(_) => break,
            }
        }
        if !*stop.borrow() {
            probe.resumed += 1;
            client = resume.clone();
        }
    }
    probe
}

/// Direct `GetUser` reads during the slow-replica phase, without and with hedging.
#[derive(Clone, Debug, Default)]
pub struct ReadProbe {
    /// Reads without hedging: (calls, p50 ms, p99 ms).
    pub plain: (usize, f64, f64),
    /// Reads with hedging: (calls, p50 ms, p99 ms).
    pub hedged: (usize, f64, f64),
    /// Failed reads, both kinds.
    pub errors: usize,
}

/// What one phase did.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    /// The phase's name.
    pub name: &'static str,
    /// HTTP calls finished in the phase.
    pub calls: usize,
    /// Calls answered 201.
    pub ok: usize,
    /// Calls finished in the second half of the phase.
    pub second_half_calls: usize,
    /// Of those, calls answered 201.
    pub second_half_ok: usize,
    /// Retries made by order-svc and the gateway.
    pub retries: u64,
    /// Breaker transitions, e.g. `user-svc->open x2` (user-svc breakers in order-svc,
    /// the order-svc breaker in the gateway).
    pub transitions: Vec<String>,
    /// Calls that reached any user-svc replica.
    pub downstream_calls: u64,
    /// Of those, the ones in the second half of the phase.
    pub second_half_downstream_calls: u64,
    /// Latency percentiles, in ms.
    pub p50_ms: f64,
    /// Latency percentiles, in ms.
    pub p99_ms: f64,
}

impl PhaseResult {
    /// Successful calls, in percent.
    pub fn success_pct(&self) -> f64 {
        pct(self.ok, self.calls)
    }
    /// Successful calls in the second half of the phase, in percent.
    pub fn second_half_pct(&self) -> f64 {
        pct(self.second_half_ok, self.second_half_calls)
    }
}

fn pct(ok: usize, calls: usize) -> f64 {
    if calls == 0 {
        0.0
    } else {
        100.0 * ok as f64 / calls as f64
    }
}

/// How long one hop took to recover after user-svc was restored.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The hop, `caller -> callee`.
    pub hop: &'static str,
    /// From the restoration to the start of the first 250 ms slice from which every slice
    /// of the phase had >= 95 % success at this hop; `None` if that never happened.
    pub after: Option<Duration>,
}

/// The demo's outcome.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per phase.
    pub phases: Vec<PhaseResult>,
    /// The trace id of one request, and the log lines of all services carrying it.
    pub trace: Option<(String, Vec<String>)>,
    /// Every breaker's state at the end: `(who, state)`.
    pub final_breaker_states: Vec<(String, String)>,
    /// Time to recovery per hop in the last phase.
    pub recovery: Vec<Recovery>,
    /// order-svc replicas the gateway ejected at any time.
    pub order_ejections: Vec<String>,
    /// Direct reads during the slow-replica phase, without and with hedging.
    pub reads: ReadProbe,
    /// A stream across the replica kill, and one cut by its deadline.
    pub stream: StreamProbe,
}

struct Sample {
    phase: usize,
    ok: bool,
    latency: Duration,
    done: Instant,
    trace_id: Option<String>,
}

/// The length of one slice in the recovery measure.
const SLICE: Duration = Duration::from_millis(250);

/// The start of the earliest slice from which every slice with calls has >= 95 % success,
/// given `(calls, ok)` per slice.
fn recovered_after(slices: &[(u64, u64)]) -> Option<Duration> {
    let mut from = None;
    for (i, &(calls, ok)) in slices.iter().enumerate().rev() {
        if calls == 0 {
            continue;
        }
        if ok * 100 >= 95 * calls {
            from = Some(i);
        } else {
            break;
        }
    }
    from.map(|i| SLICE * i as u32)
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

/// Calls that order-svc's user-svc clients finished, and how many of them succeeded, as the
/// clients' own metrics count them (every replica of order-svc runs in this process).
fn user_client_calls(text: &str) -> (u64, u64) {
    const PREFIX: &str = "rpc_client_duration_seconds_count{rpc_service=\"user.UserService\",";
    let total = counter(text, PREFIX) as u64;
    let ok = text
        .lines()
        .filter(|l| l.starts_with(PREFIX) && l.contains("rpc_grpc_status_code=\"0\""))
        .map(|l| counter(l, PREFIX))
        .sum::<f64>() as u64;
    (total, ok)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct UserProcess {
    svc: UserSvc,
    running: Running,
    process: Process,
}

struct OrderProcess {
    running: Running,
    users: UsersClient,
    _process: Process,
}

/// Runs the whole demo and returns what happened. Logs go wherever the global subscriber
/// writes; pass the same buffer as `logs` so the demo can show one trace.
///
/// Every service runs as its own process (its own runtime and registry lease, see
/// [`Process`]): the "kill" of phase 2 is a crash, and the killed replica stays registered
/// until its lease expires.
pub async fn run(opts: DemoOptions, logs: LogBuffer) -> Result<Report, BoxError> {
    let data = std::env::temp_dir().join(format!("steadfast-demo-{}", std::process::id()));
    let opt = |service: &str, id: &str, grpc_service: &'static str| Options {
        service: service.into(),
        id: id.into(),
        grpc_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        drain: Duration::from_millis(200),
        header_timeout: crate::http::HEADER_READ_TIMEOUT,
        grpc_service,
    };
    let fast_health = || Health::builder().interval(Duration::from_millis(200));

    // Three user-svc replicas.
    let mut users: Vec<UserProcess> = Vec::new();
    for id in ["user-1", "user-2", "user-3"] {
        let svc = UserSvc::new(id, Fault::None);
        let (url, options, server) = (
            opts.registry.clone(),
            opt("user-svc", id, "user.UserService"),
            UserServiceServer::new(svc.clone()),
        );
        let (process, running) = Process::start(id, move || async move {
            let registry = steadfast::registry::from_url(&url).await?;
            serve(options, registry, fast_health(), server).await
        })
        .await?;
        users.push(UserProcess {
            svc,
            running,
            process,
        });
    }
    // Two order-svc replicas, each with its own user-svc client and breaker.
    let mut orders: Vec<OrderProcess> = Vec::new();
    for id in ["order-1", "order-2"] {
        let store = Store::open(&data.join(id))?;
        let (url, options) = (
            opts.registry.clone(),
            opt("order-svc", id, "order.OrderService"),
        );
        let (process, (running, users)) = Process::start(id, move || async move {
            let registry = steadfast::registry::from_url(&url).await?;
            let users = UsersClient::connect(
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
            let server = OrderServiceServer::new(OrderSvc::new(store, users.clone()));
            let running = serve(options, registry, health, server).await?;
            Ok((running, users))
        })
        .await?;
        orders.push(OrderProcess {
            running,
            users,
            _process: process,
        });
    }
    // The gateway (in this process).
    let registry: Arc<dyn Registry> = steadfast::registry::from_url(&opts.registry).await?;
    let orders_client = OrdersClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = listener.local_addr()?;
    let router = gateway::router(orders_client.clone()).merge(steadfast::metrics::router());
    tokio::spawn(crate::http::serve(
        listener,
        router,
        crate::http::HEADER_READ_TIMEOUT,
        std::future::pending(),
    ));
    println!(
        "gateway http://{gateway_addr}  user-svc x3, order-svc x2 on 127.0.0.1, registry {}",
        opts.registry
    );

    // Everyone registered (once healthy) and discovered.
    let ready = wait_until(Duration::from_secs(10), || {
        orders
            .iter()
            .all(|o| o.users.core().channel().discovered_ids().len() == 3)
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
                        done: Instant::now(),
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
    let user_counts = |users: &[UserProcess]| {
        users.iter().fold((0u64, 0u64), |(c, o), u| {
            (c + u.svc.calls(), o + u.svc.ok())
        })
    };
    let user_client = || user_client_calls(&steadfast::metrics::render());
    let mut results = Vec::new();
    let mut phase_starts = Vec::new();
    let mut ejected_seen = std::collections::BTreeSet::new();
    // (calls, ok) of order-svc's calls to user-svc per slice of the last phase, as the
    // callers saw them (a fail-fast rejection by an open breaker counts as a failure).
    let mut user_slices: Vec<(u64, u64)> = Vec::new();
    // The read probe: one reader without hedging and one with, side by side, while a
    // replica is slow (phase 3).
    let plain_reads = PlainReadsClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let hedged_reads = HedgedReadsClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let mut probe_tasks = Vec::new();
    let mut probe_results: Vec<(Vec<Duration>, usize)> = Vec::new();
    let probe_on = Arc::new(AtomicBool::new(false));
    // A watcher on the replica about to be killed, resuming through discovery.
    let (stream_stop, stream_stopped) = tokio::sync::watch::channel(false);
    let on_victim = UserStreamsClient::connect(
        ClientConfig::endpoints([format!("http://{}", users[1].running.grpc_addr)])?
            .downstreams(Downstreams::new()),
    )
    .await?;
    let discovered = UserStreamsClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let watcher = tokio::spawn(watch_users(on_victim, discovered, stream_stopped));
    // A stream longer than its deadline.
    let short = ShortStreamsClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await?;
    let cut = tokio::spawn(async move {
        let started = Instant::now();
        let req = ListUsersRequest {
            from_id: 1,
            count: 0,
            interval_ms: 50,
        };
        let mut stream = match short.list_users(req).await {
            Ok(s) => s,
            Err(status) => return (started.elapsed(), status.code()),
        };
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return (started.elapsed(), tonic::Code::Ok),
                Err(status) => return (started.elapsed(), status.code()),
            }
        }
    });
    for (i, name) in PHASES.iter().enumerate() {
        match i {
            1 => users[1].process.kill(),
            2 => users[0]
                .svc
                .set_fault(Fault::Slow(Duration::from_millis(400))),
            3 => users.iter().for_each(|u| u.svc.set_fault(Fault::Down)),
            4 => users.iter().for_each(|u| u.svc.set_fault(Fault::None)),
            _ => {}
        }
        if i == 2 {
            probe_on.store(true, Ordering::Relaxed);
            let reader = |hedged: bool| {
                let (plain, hedged_client, on) =
                    (plain_reads.clone(), hedged_reads.clone(), probe_on.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    let mut id = 1;
                    while on.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let req = GetUserRequest { id };
                        let ok = if hedged {
                            hedged_client.get_user(req).await.is_ok()
                        } else {
                            plain.get_user(req).await.is_ok()
                        };
                        lat.push(started.elapsed());
                        errors += usize::from(!ok);
                        id += 1;
                    }
                    (lat, errors)
                })
            };
            probe_tasks = vec![reader(false), reader(true)];
        }
        bar.set_message(format!("phase {}: {name}", i + 1));
        let before_metrics = steadfast::metrics::render();
        let before_user_calls = user_counts(&users).0;
        phase_now.store(i, Ordering::Relaxed);
        let started = Instant::now();
        phase_starts.push(started);
        let mut slice_start = user_client();
        let mut next_slice = started + SLICE;
        let mut mid_user_calls = None;
        while started.elapsed() < opts.phase {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if mid_user_calls.is_none() && started.elapsed() >= opts.phase / 2 {
                mid_user_calls = Some(user_counts(&users).0);
            }
            ejected_seen.extend(orders_client.core().channel().ejected_ids());
            if Instant::now() >= next_slice {
                next_slice += SLICE;
                let now = user_client();
                if i == PHASES.len() - 1 {
                    user_slices.push((now.0 - slice_start.0, now.1 - slice_start.1));
                }
                slice_start = now;
                bar.inc(SLICE.as_millis() as u64);
            }
        }
        probe_on.store(false, Ordering::Relaxed);
        // Wait for the read probe's last reads before the next phase's faults apply: a read
        // still in flight would otherwise meet them and count as a failure of this phase.
        for task in probe_tasks.drain(..) {
            probe_results.push(task.await.unwrap_or_default());
        }
        if i == 1 {
            // The stream has lived through the kill: stop watching.
            stream_stop.send_replace(true);
        }
        let after = steadfast::metrics::render();
        let delta = |prefix: &str| counter(&after, prefix) - counter(&before_metrics, prefix);
        let mut transitions = Vec::new();
        for service in ["user-svc", "order-svc"] {
            for to in ["open", "half_open", "closed"] {
                let n = delta(&format!(
                    "steadfast_breaker_transitions_total{{service=\"{service}\",to=\"{to}\"}}"
                ));
                if n > 0.0 {
                    transitions.push(format!("{service}->{to} x{n}"));
                }
            }
        }
        results.push(PhaseResult {
            name,
            retries: delta("steadfast_client_retries_total") as u64,
            transitions,
            downstream_calls: user_counts(&users).0 - before_user_calls,
            second_half_downstream_calls: user_counts(&users).0
                - mid_user_calls.unwrap_or(before_user_calls),
            ..PhaseResult::default()
        });
    }
    bar.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }

    let mut stream = watcher.await.unwrap_or_default();
    stream.cut = cut.await.ok();

    let mut reads = ReadProbe::default();
    for (k, (mut lat, errors)) in probe_results.into_iter().enumerate() {
        lat.sort();
        let summary = (lat.len(), percentile(&lat, 0.5), percentile(&lat, 0.99));
        if k == 0 {
            reads.plain = summary;
        } else {
            reads.hedged = summary;
        }
        reads.errors += errors;
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
        let half = phase_starts[i] + opts.phase / 2;
        let second: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.phase == i && s.done >= half)
            .collect();
        r.second_half_calls = second.len();
        r.second_half_ok = second.iter().filter(|s| s.ok).count();
        r.p50_ms = percentile(&lat, 0.5);
        r.p99_ms = percentile(&lat, 0.99);
    }

    // Time to recovery per hop, after user-svc was restored.
    let last = PHASES.len() - 1;
    let mut e2e = vec![(0u64, 0u64); user_slices.len().max(1)];
    for s in samples.iter().filter(|s| s.phase == last) {
        let k = (s
            .done
            .saturating_duration_since(phase_starts[last])
            .as_millis()
            / SLICE.as_millis()) as usize;
        if let Some(slot) = e2e.get_mut(k) {
            slot.0 += 1;
            slot.1 += u64::from(s.ok);
        }
    }
    let recovery = vec![
        Recovery {
            hop: "order-svc -> user-svc",
            after: recovered_after(&user_slices),
        },
        Recovery {
            hop: "gateway -> order-svc (end to end)",
            after: recovered_after(&e2e),
        },
    ];

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
    let mut final_breaker_states: Vec<(String, String)> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| {
            (
                format!("order-{} -> user-svc", i + 1),
                o.users.core().breaker().state().to_string(),
            )
        })
        .collect();
    final_breaker_states.push((
        "gateway -> order-svc".into(),
        orders_client.core().breaker().state().to_string(),
    ));

    for o in orders {
        o.running.shutdown().await;
    }
    for u in users {
        if u.process.is_alive() {
            u.running.shutdown().await;
        }
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(Report {
        phases: results,
        trace,
        final_breaker_states,
        recovery,
        order_ejections: ejected_seen.into_iter().collect(),
        reads,
        stream,
    })
}

/// Prints the per-phase table and the joined trace.
pub fn print(report: &Report) {
    println!();
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9}  breakers",
        "phase", "calls", "success", "2nd half", "retries", "to user", "p50 ms", "p99 ms"
    );
    for (i, p) in report.phases.iter().enumerate() {
        println!(
            "{:<28} {:>6} {:>8.1}% {:>8.1}% {:>8} {:>8} {:>9.1} {:>9.1}  {}",
            format!("{}. {}", i + 1, p.name),
            p.calls,
            p.success_pct(),
            p.second_half_pct(),
            p.retries,
            p.downstream_calls,
            p.p50_ms,
            p.p99_ms,
            p.transitions.join(" ")
        );
    }
    let r = &report.reads;
    println!(
        "phase 3, direct GetUser reads while one replica is slow: without hedging p50 {:.1} ms, p99 {:.1} ms ({} reads); \
         with hedging (3 copies, 20 ms apart) p50 {:.1} ms, p99 {:.1} ms ({} reads); {} failed",
        r.plain.1, r.plain.2, r.plain.0, r.hedged.1, r.hedged.2, r.hedged.0, r.errors
    );
    let st = &report.stream;
    println!(
        "ListUsers stream opened on the replica killed in phase 2: {} messages, resumed {} time(s) \
         through discovery from the last id + 1, {} id(s) out of sequence",
        st.received, st.resumed, st.gaps
    );
    if let Some((after, code)) = st.cut {
        println!(
            "ListUsers stream under a 1 s deadline: ended after {} ms with {code:?}",
            after.as_millis()
        );
    }
    println!("time to recovery after user-svc was restored (>= 95 % success from then on):");
    for r in &report.recovery {
        match r.after {
            Some(d) => println!("  {:<36} {:>6} ms", r.hop, d.as_millis()),
            None => println!("  {:<36} not recovered", r.hop),
        }
    }
    let states: Vec<String> = report
        .final_breaker_states
        .iter()
        .map(|(who, state)| format!("{who}: {state}"))
        .collect();
    println!("breakers at the end: {}", states.join(", "));
    println!(
        "order-svc replicas ejected by the gateway: {}",
        if report.order_ejections.is_empty() {
            "none".to_owned()
        } else {
            report.order_ejections.join(", ")
        }
    );
    if let Some((id, lines)) = &report.trace {
        println!("\none request across gateway, order-svc and user-svc (trace_id {id}):");
        for l in lines {
            println!("  {l}");
        }
    }
}
