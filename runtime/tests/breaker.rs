//! Circuit breaker behaviour under paused tokio time, with a scripted in-process downstream
//! that counts the calls reaching it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use steadfast::breaker::{
    BreakerConfig, BreakerLayer, BreakerRegistry, BreakerState, CircuitBreaker, is_open_rejection,
};
use steadfast::retry::{CallPolicy, RetryLayer, RetryPolicy};
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

fn breaker(config: BreakerConfig) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new("svc", config))
}

/// Records `outcomes` in order: `true` is a failure.
fn feed(b: &CircuitBreaker, outcomes: &[bool]) {
    for failed in outcomes {
        let permit = b.try_acquire().expect("admitted");
        if *failed {
            permit.failure()
        } else {
            permit.success()
        }
    }
}

#[tokio::test(start_paused = true)]
async fn trips_exactly_at_the_rules_edge() {
    // 4 failures out of 5: failures >= 4 and 0.8 > 0.6: open.
    let b = breaker(BreakerConfig::default());
    feed(&b, &[false, true, true, true]);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "3 failures are below min_failures"
    );
    feed(&b, &[true]);
    assert_eq!(b.state(), BreakerState::Open);

    // 3 failures out of 10: closed.
    let b = breaker(BreakerConfig::default());
    feed(
        &b,
        &[
            false, false, false, false, false, false, false, true, true, true,
        ],
    );
    assert_eq!(b.state(), BreakerState::Closed);

    // 6 out of 10 is a ratio of exactly 0.6, which does not exceed it; the 7th failure does.
    let b = breaker(BreakerConfig::default());
    feed(
        &b,
        &[
            false, false, false, false, true, true, true, true, true, true,
        ],
    );
    assert_eq!(b.state(), BreakerState::Closed);
    feed(&b, &[true]);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_outside_the_window_are_forgotten() {
    let b = breaker(BreakerConfig::default());
    feed(&b, &[true, true, true]);
    tokio::time::advance(Duration::from_secs(11)).await;
    feed(&b, &[true]);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "the first three failures left the 10 s window"
    );
    assert_eq!(b.counts().failures, 1);
}

/// A downstream that fails (or succeeds) as told and counts the calls that reach it.
#[derive(Clone)]
struct Downstream {
    calls: Arc<AtomicUsize>,
    code: Arc<std::sync::Mutex<Option<Code>>>,
    gate: Option<Arc<Semaphore>>,
}

impl Downstream {
    fn failing(code: Code) -> Self {
        Downstream {
            calls: Arc::default(),
            code: Arc::new(std::sync::Mutex::new(Some(code))),
            gate: None,
        }
    }
    fn set(&self, code: Option<Code>) {
        *self.code.lock().unwrap() = code;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    async fn call(self, req: tonic::Request<u32>) -> Result<tonic::Response<u32>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _ = gate.acquire().await.unwrap();
        }
        let code = *self.code.lock().unwrap();
        match code {
            Some(code) => Err(Status::new(code, "scripted")),
            None => Ok(tonic::Response::new(req.into_inner())),
        }
    }
}

fn policy(b: &Arc<CircuitBreaker>, retry: Option<RetryPolicy>) -> CallPolicy {
    CallPolicy::new("svc", "M")
        .retry(retry)
        .breaker(Some(b.clone()))
        .jitter(|| 0.5)
}

async fn call(p: &CallPolicy, d: &Downstream) -> Result<u32, Status> {
    let d = d.clone();
    p.call(tonic::Request::new(1), move |req| d.clone().call(req))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(start_paused = true)]
async fn while_open_no_call_reaches_the_downstream_and_nothing_is_retried() {
    let b = breaker(BreakerConfig::default());
    let down = Downstream::failing(Code::Unavailable);
    let p = policy(
        &b,
        Some(RetryPolicy::builder().max_attempts(5).build().unwrap()),
    );
    let _ = call(&p, &down).await; // 4 retried attempts of one call trip it mid-call
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(down.calls(), 4, "the 5th attempt was rejected, not sent");
    for _ in 0..100 {
        let err = call(&p, &down).await.unwrap_err();
        assert!(is_open_rejection(&err), "{err:?}");
        assert!(err.message().contains("svc"));
    }
    assert_eq!(down.calls(), 4, "zero calls while open");
}

#[tokio::test(start_paused = true)]
async fn after_the_timeout_at_most_the_probe_limit_reaches_the_downstream() {
    let b = breaker(BreakerConfig::default());
    feed(&b, &[true; 4]);
    tokio::time::advance(Duration::from_secs(30)).await;

    let gate = Arc::new(Semaphore::new(0));
    let down = Downstream {
        gate: Some(gate.clone()),
        ..Downstream::failing(Code::Unavailable)
    };
    down.set(None); // the downstream has recovered
    let p = Arc::new(policy(&b, None));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (p, d) = (p.clone(), down.clone());
            tokio::spawn(async move { call(&p, &d).await })
        })
        .collect();
    // Let every caller reach admission; the probes wait at the gate.
    tokio::task::yield_now().await;
    while down.calls() < 10 && tasks.iter().any(|t| !t.is_finished()) {
        tokio::task::yield_now().await;
    }
    gate.add_permits(50);
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if is_open_rejection(&e) => rejected += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(down.calls(), 10, "half_open_max_calls probes, no more");
    assert_eq!((ok, rejected), (10, 40));
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "successful probes close it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_with_a_fresh_timeout() {
    let b = breaker(BreakerConfig::default());
    let down = Downstream::failing(Code::Unavailable);
    let p = policy(&b, None);
    feed(&b, &[true; 4]);
    tokio::time::advance(Duration::from_secs(30)).await;
    call(&p, &down).await.unwrap_err(); // the probe fails
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(is_open_rejection(&call(&p, &down).await.unwrap_err()));
    tokio::time::advance(Duration::from_secs(1)).await;
    down.set(None);
    for _ in 0..3 {
        call(&p, &down).await.unwrap();
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "three successful probes close it"
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_trips_grow_the_open_period_with_failsafe_backoff() {
    let config = BreakerConfig::builder()
        .open_timeout(Duration::from_secs(1))
        .max_open_timeout(Some(Duration::from_secs(4)))
        .build()
        .unwrap();
    let b = breaker(config);
    let down = Downstream::failing(Code::Unavailable);
    let p = policy(&b, None);
    feed(&b, &[true; 4]);
    let mut periods = Vec::new();
    for _ in 0..4 {
        // Find how long it stays open, in 250 ms steps, then fail the probe.
        let mut open_for = Duration::ZERO;
        loop {
            match call(&p, &down).await {
                Err(e) if is_open_rejection(&e) => {
                    tokio::time::advance(Duration::from_millis(250)).await;
                    open_for += Duration::from_millis(250);
                }
                _ => break, // a probe went through and failed: open again
            }
        }
        periods.push(open_for.as_secs_f64());
    }
    assert_eq!(periods, [1.0, 2.0, 4.0, 4.0]);
}

#[tokio::test(start_paused = true)]
async fn codes_that_mean_the_downstream_answered_never_trip_it() {
    let b = breaker(BreakerConfig::default());
    let p = policy(&b, None);
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
        Code::Aborted,
    ] {
        let down = Downstream::failing(code);
        for _ in 0..50 {
            assert_eq!(call(&p, &down).await.unwrap_err().code(), code);
        }
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.counts().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_probes_free_their_slots() {
    let b = breaker(BreakerConfig::default());
    feed(&b, &[true; 4]);
    tokio::time::advance(Duration::from_secs(30)).await;
    let hang = Downstream {
        gate: Some(Arc::new(Semaphore::new(0))),
        ..Downstream::failing(Code::Unavailable)
    };
    let p = Arc::new(policy(&b, None));
    // Ten probes take every slot, then their callers give up.
    let probes: Vec<_> = (0..10)
        .map(|_| {
            let (p, d) = (p.clone(), hang.clone());
            tokio::spawn(async move { call(&p, &d).await })
        })
        .collect();
    while hang.calls() < 10 {
        tokio::task::yield_now().await;
    }
    assert!(
        is_open_rejection(&call(&p, &hang).await.unwrap_err()),
        "slots are full"
    );
    for probe in &probes {
        probe.abort();
    }
    for probe in probes {
        assert!(probe.await.unwrap_err().is_cancelled());
    }
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "cancellation records no outcome"
    );
    // The breaker is not wedged: new probes get through and close it.
    let healthy = Downstream::failing(Code::Unavailable);
    healthy.set(None);
    for _ in 0..3 {
        call(&p, &healthy).await.unwrap();
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn our_own_attempt_timeouts_count_as_failures() {
    let b = breaker(BreakerConfig::default());
    let hang = Downstream {
        gate: Some(Arc::new(Semaphore::new(0))),
        ..Downstream::failing(Code::Unavailable)
    };
    let p = policy(&b, None).timeout(Some(Duration::from_millis(100)));
    for _ in 0..4 {
        assert_eq!(
            call(&p, &hang).await.unwrap_err().code(),
            Code::DeadlineExceeded
        );
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_does_not_retry_an_open_breaker() {
    let registry = BreakerRegistry::new();
    let b = registry.get_or_insert("layered", BreakerConfig::default());
    let down = Downstream::failing(Code::Unavailable);
    let d = down.clone();
    let retry = CallPolicy::new("layered", "M").retry(Some(
        RetryPolicy::builder().max_attempts(5).build().unwrap(),
    ));
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(BreakerLayer::new(b.clone()))
        .service_fn(move |req| d.clone().call(req));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(tonic::Request::new(1))
        .await
        .unwrap_err();
    assert!(
        is_open_rejection(&err),
        "the 5th attempt met the open breaker: {err:?}"
    );
    assert_eq!(down.calls(), 4);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(tonic::Request::new(1))
        .await
        .unwrap_err();
    assert!(is_open_rejection(&err));
    assert_eq!(
        down.calls(),
        4,
        "fail fast: one rejected attempt, no retries"
    );
    assert_eq!(
        registry.states(),
        [("layered".to_owned(), BreakerState::Open)]
    );
}

#[tokio::test(start_paused = true)]
async fn transitions_update_the_state_gauge() {
    // Metrics watch breakers through the observer hook, as `Downstreams` wires it.
    let registry = BreakerRegistry::with_observer(steadfast::metrics::breaker_observer());
    let b = registry.get_or_insert("gauge-svc", BreakerConfig::default());
    let gauge = |v: i64| format!("steadfast_breaker_state{{service=\"gauge-svc\"}} {v}");
    assert!(steadfast::metrics::render().contains(&gauge(0)));
    feed(&b, &[true; 4]);
    let text = steadfast::metrics::render();
    assert!(text.contains(&gauge(1)), "{text}");
    assert!(
        text.contains("steadfast_breaker_transitions_total{service=\"gauge-svc\",to=\"open\"} 1")
    );
}

#[test]
fn invalid_config_names_the_field() {
    let field = |r: Result<BreakerConfig, steadfast::Error>| match r.unwrap_err() {
        steadfast::Error::Config { field, .. } => field,
        e => panic!("{e}"),
    };
    let b = BreakerConfig::builder;
    assert_eq!(
        field(b().open_timeout(Duration::from_secs(601)).build()),
        "breaker.open_timeout"
    );
    assert_eq!(
        field(b().open_timeout(Duration::from_millis(999)).build()),
        "breaker.open_timeout"
    );
    assert_eq!(
        field(b().failure_ratio(1.0).build()),
        "breaker.failure_ratio"
    );
    assert_eq!(field(b().min_failures(0).build()), "breaker.min_failures");
    assert_eq!(
        field(b().half_open_max_calls(2).half_open_successes(3).build()),
        "breaker.half_open_successes"
    );
    assert_eq!(
        field(b().failure_codes([]).build()),
        "breaker.failure_codes"
    );
    assert!(b().open_timeout(Duration::from_secs(1)).build().is_ok());
    assert!(b().open_timeout(Duration::from_secs(600)).build().is_ok());
}

#[test]
fn a_breaker_outlives_the_runtime_it_was_made_in() {
    // Made in one runtime (whose window ticker dies with it), used in another: counting
    // still works, and a fresh ticker starts on the new runtime.
    let b = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async { breaker(BreakerConfig::default()) });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // Far past the slice the dead ticker last saw.
        tokio::time::advance(Duration::from_secs(20)).await;
        feed(&b, &[false; 20]);
        feed(&b, &[true; 4]);
        assert_eq!(
            b.counts(),
            steadfast::breaker::WindowCounts {
                requests: 24,
                failures: 4
            }
        );
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "4 of 24 is below the ratio"
        );
    });
}

/// Closes `b` again after a trip: waits out the open period and feeds successful probes.
async fn reclose(b: &CircuitBreaker) {
    tokio::time::advance(b.config().open_timeout()).await;
    feed(b, &[false; 3]);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_stale_result_from_an_earlier_closed_period_changes_nothing() {
    let b = breaker(BreakerConfig::default());
    // Admitted while closed, still running while the breaker trips, reopens and recloses.
    let slow_success = b.try_acquire().unwrap();
    let slow_failures: Vec<_> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    feed(&b, &[true; 4]);
    assert_eq!(b.state(), BreakerState::Open);
    reclose(&b).await;
    let before = b.counts();
    // Four late failures would trip a fresh window (4 >= min_failures, ratio 1.0).
    for p in slow_failures {
        p.failure();
    }
    slow_success.success();
    assert_eq!(
        b.counts(),
        before,
        "results of an older generation are dropped"
    );
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_stale_result_does_not_decide_a_half_open_probe_period() {
    let b = breaker(BreakerConfig::default());
    let late = b.try_acquire().unwrap();
    feed(&b, &[true; 4]);
    tokio::time::advance(b.config().open_timeout()).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // A call admitted before the trip fails now: it is not a probe of this period.
    late.failure();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    feed(&b, &[false; 3]);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_open_period_ends_by_time_without_any_call() {
    let registry = BreakerRegistry::with_observer(steadfast::metrics::breaker_observer());
    let b = registry.get_or_insert("idle-svc", BreakerConfig::default());
    let gauge = |v: i64| format!("steadfast_breaker_state{{service=\"idle-svc\"}} {v}");
    feed(&b, &[true; 4]);
    assert!(steadfast::metrics::render().contains(&gauge(1)));
    tokio::time::sleep(b.config().open_timeout() - Duration::from_millis(1)).await;
    assert!(
        steadfast::metrics::render().contains(&gauge(1)),
        "still open"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    // No call, no state() read: the timer moved it, and the gauge shows it.
    let text = steadfast::metrics::render();
    assert!(text.contains(&gauge(2)), "{text}");
    assert_eq!(
        registry.states(),
        [("idle-svc".to_owned(), BreakerState::HalfOpen)]
    );

    // A breaker not made by a registry has no timer, but its state still reads the truth.
    let plain = breaker(BreakerConfig::default());
    feed(&plain, &[true; 4]);
    tokio::time::advance(plain.config().open_timeout()).await;
    assert_eq!(plain.state(), BreakerState::HalfOpen);
}
