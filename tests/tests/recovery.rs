//! Recovery across hops, against real servers on 127.0.0.1: gateway -> order-svc x2 ->
//! user-svc x3, every service a process of its own (own runtime, own registry lease).
//!
//! - user-svc fully down for longer than every breaker's open period, then restored, ten
//!   times over: no order-svc replica is ejected and the gateway's order-svc breaker never
//!   opens while user-svc is down (order-svc only relays user-svc's failure); after each
//!   restoration calls succeed again within the largest open period + 1 s.
//! - one user-svc replica crashes (still registered until its lease expires): calls keep
//!   succeeding, and the dead replica gets at most its share of attempts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steadfast::breaker::BreakerState;
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::health::Health;
use steadfast::registry::{MemoryRegistry, Registry};
use steadfast_examples::pb::order::order_service_client::OrderServiceClient;
use steadfast_examples::pb::order::order_service_server::OrderServiceServer;
use steadfast_examples::pb::order::{CreateOrderRequest, Order};
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::run::{Options, Process, Running, serve, wait_until};
use steadfast_examples::services::order::{OrderSvc, Store, UsersClient};
use steadfast_examples::services::user::{Fault, UserSvc};
use tonic::Status;

/// The gateway's view of order-svc, with a 1 s open period so that "down for longer than
/// every open period" fits in a short test. (order-svc's user-svc breaker opens for 1 s.)
#[steadfast::resilient_client(
    service = "order-svc",
    client = OrderServiceClient,
    grpc_service = "order.OrderService",
    timeout = "3s",
    retry(max_attempts = 3, initial_backoff = "20ms", max_backoff = "200ms", on = [Unavailable]),
    breaker(open_timeout = "1s"),
)]
trait Orders {
    #[no_retry]
    async fn create_order(&self, req: CreateOrderRequest) -> Result<Order, Status>;
}

/// The largest open period involved (both breakers open for 1 s), plus one second.
const RECOVERY_BOUND: Duration = Duration::from_secs(2);

struct User {
    svc: UserSvc,
    _running: Running,
    process: Process,
}

struct OrderReplica {
    users: UsersClient,
    _running: Running,
    _process: Process,
}

struct System {
    table: MemoryRegistry,
    users: Vec<User>,
    orders: Vec<OrderReplica>,
    gateway: OrdersClient,
    _data: tempfile::TempDir,
}

fn options(service: &str, id: &str, grpc_service: &'static str) -> Options {
    Options {
        service: service.into(),
        id: id.into(),
        grpc_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        drain: Duration::from_millis(100),
        header_timeout: steadfast_examples::http::HEADER_READ_TIMEOUT,
        grpc_service,
    }
}

fn health() -> steadfast::health::HealthBuilder {
    Health::builder().interval(Duration::from_millis(100))
}

async fn system(ttl: Duration) -> System {
    let table = MemoryRegistry::new();
    let data = tempfile::tempdir().unwrap();
    let mut users = Vec::new();
    for id in ["user-1", "user-2", "user-3"] {
        let svc = UserSvc::new(id, Fault::None);
        let registry: Arc<dyn Registry> = Arc::new(table.session().with_ttl(ttl).unwrap());
        let (opts, server) = (
            options("user-svc", id, "user.UserService"),
            UserServiceServer::new(svc.clone()),
        );
        let (process, running) = Process::start(id, move || async move {
            serve(opts, registry, health(), server).await
        })
        .await
        .unwrap();
        users.push(User {
            svc,
            _running: running,
            process,
        });
    }
    let mut orders = Vec::new();
    for id in ["order-1", "order-2"] {
        let registry: Arc<dyn Registry> = Arc::new(table.session().with_ttl(ttl).unwrap());
        let store = Store::open(&data.path().join(id)).unwrap();
        let opts = options("order-svc", id, "order.OrderService");
        let (process, (running, users)) = Process::start(id, move || async move {
            let users = UsersClient::connect(
                ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
            )
            .await?;
            let server = OrderServiceServer::new(OrderSvc::new(store, users.clone()));
            let running = serve(opts, registry, health(), server).await?;
            Ok((running, users))
        })
        .await
        .unwrap();
        orders.push(OrderReplica {
            users,
            _running: running,
            _process: process,
        });
    }
    let gateway = OrdersClient::connect(
        ClientConfig::discover(Arc::new(table.session())).downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let discovered = wait_until(Duration::from_secs(10), || {
        orders
            .iter()
            .all(|o| o.users.core().channel().discovered_ids().len() == 3)
            && gateway.core().channel().discovered_ids().len() == 2
    })
    .await;
    assert!(discovered, "every service registered and was discovered");
    System {
        table,
        users,
        orders,
        gateway,
        _data: data,
    }
}

/// One finished call: when it started, and whether it succeeded.
type Samples = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Closed-loop load from `workers` callers until the returned flag is set.
fn load(gateway: &OrdersClient, workers: usize) -> (Samples, Arc<AtomicBool>) {
    let samples: Samples = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    for w in 0..workers as u64 {
        let (gateway, samples, stop) = (gateway.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                n += 7;
                let started = Instant::now();
                let req = CreateOrderRequest {
                    user_id: 1 + n % 1000,
                    item: "book".into(),
                    quantity: 1,
                };
                let ok = gateway.create_order(req).await.is_ok();
                samples.lock().unwrap().push((started, ok));
            }
        });
    }
    (samples, stop)
}

/// Success of the calls started in `[from, to)`: (calls, ok).
fn between(samples: &Samples, from: Instant, to: Instant) -> (usize, usize) {
    let s = samples.lock().unwrap();
    let calls: Vec<bool> = s
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, ok)| *ok)
        .collect();
    (calls.len(), calls.iter().filter(|ok| **ok).count())
}

/// When calls started after `from` succeed >= 95 % in every 100 ms slice up to `to`: the
/// start of the first such slice, measured from `from`.
fn recovered_after(samples: &Samples, from: Instant, to: Instant) -> Option<Duration> {
    const SLICE: Duration = Duration::from_millis(100);
    let n = ((to - from).as_millis() / SLICE.as_millis()) as usize;
    let slices: Vec<(usize, usize)> = (0..n)
        .map(|k| {
            between(
                samples,
                from + SLICE * k as u32,
                from + SLICE * (k as u32 + 1),
            )
        })
        .collect();
    let mut first = None;
    for (k, &(calls, ok)) in slices.iter().enumerate().rev() {
        if calls == 0 {
            continue;
        }
        if ok * 100 >= calls * 95 {
            first = Some(k);
        } else {
            break;
        }
    }
    first.map(|k| SLICE * k as u32)
}

async fn watch_while(d: Duration, mut check: impl FnMut()) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_outages_of_user_svc_recover_every_time_and_blame_no_order_replica() {
    let sys = system(Duration::from_secs(10)).await;
    let (samples, stop) = load(&sys.gateway, 8);
    let mut recoveries = Vec::new();
    for cycle in 0..10 {
        sys.users.iter().for_each(|u| u.svc.set_fault(Fault::Down));
        // Down for longer than every open period (1 s).
        watch_while(Duration::from_millis(1500), || {
            assert_eq!(
                sys.gateway.core().breaker().state(),
                BreakerState::Closed,
                "cycle {cycle}: the gateway blamed order-svc for user-svc's outage"
            );
            assert!(
                sys.gateway.core().channel().ejected_ids().is_empty(),
                "cycle {cycle}: a healthy order-svc replica was ejected: {:?}",
                sys.gateway.core().channel().ejected_ids()
            );
            for o in &sys.orders {
                assert!(
                    o.users.core().channel().ejected_ids().is_empty(),
                    "cycle {cycle}: a user-svc replica was ejected for an outage all share: {:?}",
                    o.users.core().channel().ejected_ids()
                );
            }
        })
        .await;
        let restored = Instant::now();
        sys.users.iter().for_each(|u| u.svc.set_fault(Fault::None));
        tokio::time::sleep(RECOVERY_BOUND + Duration::from_secs(1)).await;
        let end = Instant::now();
        let after = recovered_after(&samples, restored, end);
        let (calls, ok) = between(&samples, restored + RECOVERY_BOUND, end);
        eprintln!("cycle {cycle}: recovered after {after:?}; {ok}/{calls} after the bound");
        assert!(
            calls > 20 && ok * 100 >= calls * 95,
            "cycle {cycle}: {ok}/{calls} calls succeeded after {RECOVERY_BOUND:?}"
        );
        let after = after.expect("recovered");
        assert!(
            after <= RECOVERY_BOUND,
            "cycle {cycle}: recovered after {after:?}"
        );
        recoveries.push(after);
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!("recovery times: {recoveries:?}");
    for o in &sys.orders {
        assert_eq!(o.users.core().breaker().state(), BreakerState::Closed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_user_replica_costs_no_calls_and_at_most_its_share_of_attempts() {
    let mut sys = system(Duration::from_secs(2)).await;
    let (samples, stop) = load(&sys.gateway, 8);
    let mut rx = sys.table.watch("user-svc").await.unwrap();
    let picks = |sys: &System, id: &str| -> u64 {
        sys.orders
            .iter()
            .map(|o| o.users.core().channel().attempts_to(id).unwrap_or(0))
            .sum()
    };
    let all = |sys: &System| -> u64 {
        ["user-1", "user-2", "user-3"]
            .iter()
            .map(|id| picks(sys, id))
            .sum()
    };
    // Warm: every order replica has sent calls to every user replica.
    let warm = wait_until(Duration::from_secs(5), || {
        sys.orders.iter().all(|o| {
            ["user-1", "user-2", "user-3"]
                .iter()
                .all(|id| o.users.core().channel().attempts_to(id).unwrap_or(0) > 0)
        })
    })
    .await;
    assert!(warm, "every order replica reached every user replica");
    let (dead_before, all_before) = (picks(&sys, "user-2"), all(&sys));
    let killed = Instant::now();
    sys.users[1].process.kill(); // crash: nothing deregistered
    // Still registered until its lease expires (2 s): count attempts until then, sampling
    // the counters (a pool forgets an endpoint's count when the endpoint leaves it).
    let mut seen = (dead_before, all_before);
    let mut sample = tokio::time::interval(Duration::from_millis(10));
    tokio::time::timeout(Duration::from_secs(5), async {
        while rx.borrow_and_update().iter().any(|i| i.id == "user-2") {
            tokio::select! {
                changed = rx.changed() => changed.unwrap(),
                _ = sample.tick() => {
                    if sys.orders.iter().all(|o| o.users.core().channel().attempts_to("user-2").is_some()) {
                        seen = (picks(&sys, "user-2"), all(&sys));
                    }
                }
            }
        }
    })
    .await
    .expect("the crashed replica's lease expired");
    let registered_for = killed.elapsed();
    let (dead, total) = (seen.0 - dead_before, seen.1 - all_before);
    // Keep the load on until well past the recovery bound, so that the calls after it are
    // many, whenever the lease expired.
    let until = (Instant::now() + Duration::from_millis(300))
        .max(killed + RECOVERY_BOUND + Duration::from_secs(1));
    tokio::time::sleep_until(until.into()).await;
    stop.store(true, Ordering::Relaxed);
    let end = Instant::now();
    let (calls, ok) = between(&samples, killed, end);
    eprintln!(
        "registered {registered_for:?} after the crash; {dead} of {total} attempts to it; {ok}/{calls} ok"
    );
    assert!(
        registered_for >= Duration::from_millis(1000),
        "it stayed registered"
    );
    assert!(
        dead * 3 <= total,
        "the dead replica got {dead} of {total} attempts"
    );
    assert!(
        calls > 100 && ok * 100 >= calls * 95,
        "{ok}/{calls} succeeded"
    );
    let (calls, ok) = between(&samples, killed + RECOVERY_BOUND, end);
    assert!(
        calls > 20 && ok * 100 >= calls * 95,
        "after the bound: {ok}/{calls}"
    );
}
