//! Breaker admission plus success recording: ours against failsafe's `StateMachine`, on one
//! thread and on two threads sharing one breaker.
//!
//! Run: `cargo bench -p steadfast --bench breaker`. After criterion's report it prints the
//! ratios measured in the same run (the last lines).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use steadfast::breaker::{BreakerConfig, CircuitBreaker};

type Failsafe = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

/// A runtime for the breaker's window ticker, as in a real service.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn ours() -> Arc<CircuitBreaker> {
    let _guard = runtime().enter();
    Arc::new(CircuitBreaker::new("bench", BreakerConfig::default()))
}

fn theirs() -> Arc<Failsafe> {
    let policy = failsafe::failure_policy::consecutive_failures(
        4,
        failsafe::backoff::constant(Duration::from_secs(30)),
    );
    Arc::new(failsafe::Config::new().failure_policy(policy).build())
}

#[inline]
fn op_ours(b: &CircuitBreaker) {
    if let Ok(permit) = black_box(b).try_acquire() {
        permit.success();
    }
}

#[inline]
fn op_theirs(b: &Failsafe) {
    let b = black_box(b);
    if b.is_call_permitted() {
        b.on_success();
    }
}

/// Runs `op` `iters` times on each of `threads` threads at once; returns the elapsed time.
fn run_threads<T: Send + Sync + 'static>(
    target: &Arc<T>,
    threads: usize,
    iters: u64,
    op: fn(&T),
) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (t, b) = (target.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    op(&t);
                }
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker admission + success");
    let (o, t) = (ours(), theirs());
    g.bench_function("steadfast, 1 thread", |b| b.iter(|| op_ours(&o)));
    g.bench_function("failsafe, 1 thread", |b| b.iter(|| op_theirs(&t)));
    g.bench_function("steadfast, 2 threads (per op per thread)", |b| {
        b.iter_custom(|iters| run_threads(&o, 2, iters, op_ours))
    });
    g.bench_function("failsafe, 2 threads (per op per thread)", |b| {
        b.iter_custom(|iters| run_threads(&t, 2, iters, op_theirs))
    });
    g.finish();
}

criterion_group!(benches, bench);

/// Nanoseconds per op per thread, best of five runs of `iters` ops.
fn ns_per_op<T: Send + Sync + 'static>(target: &Arc<T>, threads: usize, op: fn(&T)) -> f64 {
    let iters = 2_000_000;
    (0..5)
        .map(|_| run_threads(target, threads, iters, op).as_nanos() as f64 / iters as f64)
        .fold(f64::MAX, f64::min)
}

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    let (o, t) = (ours(), theirs());
    let ours1 = ns_per_op(&o, 1, op_ours);
    let theirs1 = ns_per_op(&t, 1, op_theirs);
    let ours2 = ns_per_op(&o, 2, op_ours);
    let theirs2 = ns_per_op(&t, 2, op_theirs);
    println!();
    println!("breaker admission + success, ns per op per thread (best of 5 x 2M ops):");
    println!("  steadfast 1 thread  {ours1:8.1} ns");
    println!("  failsafe  1 thread  {theirs1:8.1} ns");
    println!("  steadfast 2 threads {ours2:8.1} ns");
    println!("  failsafe  2 threads {theirs2:8.1} ns");
    println!(
        "ratio failsafe/steadfast, 1 thread:  {:.2}x",
        theirs1 / ours1
    );
    println!(
        "ratio failsafe/steadfast, 2 threads: {:.2}x",
        theirs2 / ours2
    );
    println!("steadfast 2-thread/1-thread cost:    {:.2}x", ours2 / ours1);
}
