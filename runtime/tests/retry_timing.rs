//! Retry timing under paused tokio time: backoff, pushback, per-attempt and overall deadlines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::retry::{CallPolicy, RetryPolicy, RetryThrottle};
use tokio::time::Instant;
use tonic::{Code, Status};

/// What the fake downstream does on each attempt, in order; the last entry repeats.
#[derive(Clone, Debug)]
enum Step {
    Ok,
    Fail(Code),
    Pushback(Code, &'static str),
    Hang,
    /// What a steadfast server's deadline layer answers when our `grpc-timeout` expires.
    ServerDeadline,
    /// A retryable code the downstream relayed from a deeper hop (`user-svc`).
    Relayed(Code),
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Attempt>>>);

/// When an attempt arrived, with its `grpc-previous-rpc-attempts` and `grpc-timeout`.
type Attempt = (Instant, Option<String>, Option<String>);

impl Log {
    fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().iter().map(|e| e.0).collect()
    }
    fn previous_attempts(&self) -> Vec<Option<String>> {
        self.0.lock().unwrap().iter().map(|e| e.1.clone()).collect()
    }
    fn timeouts(&self) -> Vec<Option<String>> {
        self.0.lock().unwrap().iter().map(|e| e.2.clone()).collect()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn run(policy: CallPolicy, steps: Vec<Step>) -> (Result<u32, Status>, Log) {
    let log = Log::default();
    let l = log.clone();
    let result = policy
        .call(
            tonic::Request::new(7u32),
            move |req: tonic::Request<u32>| {
                let get = |k| {
                    req.metadata()
                        .get(k)
                        .map(|v| v.to_str().unwrap().to_owned())
                };
                let entry = (
                    Instant::now(),
                    get("grpc-previous-rpc-attempts"),
                    get("grpc-timeout"),
                );
                let n = {
                    let mut log = l.0.lock().unwrap();
                    log.push(entry);
                    log.len() - 1
                };
                let step = steps[n.min(steps.len() - 1)].clone();
                async move {
                    match step {
                        Step::Ok => Ok(tonic::Response::new(req.into_inner())),
                        Step::Fail(code) => Err(Status::new(code, "scripted")),
                        Step::Pushback(code, value) => {
                            let mut md = tonic::metadata::MetadataMap::new();
                            md.insert("grpc-retry-pushback-ms", value.parse().unwrap());
                            Err(Status::with_metadata(code, "pushback", md))
                        }
                        Step::Hang => std::future::pending().await,
                        Step::Relayed(code) => Err(steadfast::outcome::mark_passed_through(
                            Status::new(code, "relayed"),
                            "user-svc",
                        )),
                        Step::ServerDeadline => {
                            let mut md = tonic::metadata::MetadataMap::new();
                            md.insert(
                                steadfast::deadline::DEADLINE_EXPIRED_KEY,
                                "1".parse().unwrap(),
                            );
                            Err(Status::with_metadata(Code::DeadlineExceeded, "expired", md))
                        }
                    }
                }
            },
        )
        .await
        .map(tonic::Response::into_inner);
    (result, log)
}

fn policy(retry: RetryPolicy) -> CallPolicy {
    CallPolicy::new("svc", "M")
        .retry(Some(retry))
        .throttle(Some(Arc::new(RetryThrottle::default())))
        .jitter(|| 0.5) // U(0.8, 1.2) at its midpoint: exactly the base backoff
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_is_exponential_and_capped() {
    let retry = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(300))
        .multiplier(2.0)
        .build()
        .unwrap();
    let (result, log) = run(policy(retry), vec![Step::Fail(Code::Unavailable)]).await;
    assert_eq!(result.unwrap_err().code(), Code::Unavailable);
    assert_eq!(log.len(), 5);
    let ms: Vec<u128> = gaps(&log.times()).iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, [100, 200, 300, 300]);
    assert_eq!(
        log.previous_attempts(),
        [
            None,
            Some("1".into()),
            Some("2".into()),
            Some("3".into()),
            Some("4".into())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_in_band() {
    let retry = RetryPolicy::builder().max_attempts(5).build().unwrap();
    let p = CallPolicy::new("svc", "M").retry(Some(retry)); // real jitter
    for _ in 0..20 {
        let (_, log) = run(p.clone(), vec![Step::Fail(Code::Unavailable)]).await;
        for (i, gap) in gaps(&log.times()).into_iter().enumerate() {
            let base = retry.base_backoff(i as u32 + 1).as_secs_f64();
            let ratio = gap.as_secs_f64() / base;
            assert!(
                (0.799..=1.201).contains(&ratio),
                "retry {} ratio {ratio}",
                i + 1
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn non_retryable_codes_make_one_attempt() {
    for code in [Code::InvalidArgument, Code::NotFound, Code::Internal] {
        let (result, log) = run(policy(RetryPolicy::default()), vec![Step::Fail(code)]).await;
        assert_eq!(result.unwrap_err().code(), code);
        assert_eq!(log.len(), 1, "{code:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn passed_through_failures_are_never_retried_even_with_a_retryable_code() {
    let retry = RetryPolicy::builder()
        .retry_on([Code::Unavailable, Code::ResourceExhausted])
        .build()
        .unwrap();
    for code in [Code::Unavailable, Code::ResourceExhausted] {
        let (result, log) = run(policy(retry), vec![Step::Relayed(code), Step::Ok]).await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(
            log.len(),
            1,
            "{code:?} relayed from a deeper hop was retried"
        );
        assert_eq!(
            err.metadata()
                .get(steadfast::outcome::PASSED_THROUGH_KEY)
                .unwrap(),
            "user-svc",
            "the marker still names the first failing service"
        );
    }
    // The same code produced by the downstream itself is retried.
    let (result, log) = run(policy(retry), vec![Step::Fail(Code::Unavailable), Step::Ok]).await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(log.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn pushback_sets_the_delay_and_restarts_backoff() {
    let retry = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(10))
        .build()
        .unwrap();
    let steps = vec![
        Step::Fail(Code::Unavailable),
        Step::Fail(Code::Unavailable),
        Step::Pushback(Code::Unavailable, "700"),
        Step::Fail(Code::Unavailable),
        Step::Ok,
    ];
    let (result, log) = run(policy(retry), steps).await;
    assert_eq!(result.unwrap(), 7);
    let ms: Vec<u128> = gaps(&log.times()).iter().map(|d| d.as_millis()).collect();
    // 100, 200, then exactly the pushback, then the backoff starts over at 100.
    assert_eq!(ms, [100, 200, 700, 100]);
}

#[tokio::test(start_paused = true)]
async fn negative_or_malformed_pushback_stops_retries() {
    for value in ["-1", "soon"] {
        let (result, log) = run(
            policy(RetryPolicy::default()),
            vec![Step::Pushback(Code::Unavailable, value)],
        )
        .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        assert_eq!(log.len(), 1, "pushback {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeouts_are_retried_within_the_overall_deadline() {
    let retry = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(10))
        .per_attempt_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let p = policy(retry).timeout(Some(Duration::from_secs(1)));
    let started = Instant::now();
    let (result, log) = run(p, vec![Step::Hang]).await;
    let elapsed = started.elapsed();
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        err.message().contains("deadline exhausted"),
        "{}",
        err.message()
    );
    // 300 + 10 + 300 + 20 + 300 = 930 ms; the fourth attempt gets only the 70 ms left.
    assert_eq!(log.len(), 4);
    assert!(elapsed <= Duration::from_secs(1), "took {elapsed:?}");
    let timeouts = log.timeouts();
    assert_eq!(timeouts[0].as_deref(), Some("300000u"));
    let last = timeouts[3].as_deref().unwrap();
    let last = steadfast::deadline::parse_grpc_timeout(last.as_bytes()).unwrap();
    assert!(
        last <= Duration::from_millis(70),
        "last attempt got {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn hung_attempt_then_success() {
    let retry = RetryPolicy::builder()
        .per_attempt_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let (result, log) = run(policy(retry), vec![Step::Hang, Step::Ok]).await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(log.len(), 2);
    assert_eq!(gaps(&log.times()), [Duration::from_millis(300)]); // 200 timeout + 100 backoff
}

#[tokio::test(start_paused = true)]
async fn backoff_past_the_deadline_ends_the_call_early() {
    let retry = RetryPolicy::builder()
        .initial_backoff(Duration::from_secs(5))
        .max_backoff(Duration::from_secs(5))
        .build()
        .unwrap();
    let p = policy(retry).timeout(Some(Duration::from_secs(1)));
    let started = Instant::now();
    let (result, log) = run(p, vec![Step::Fail(Code::Unavailable)]).await;
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    assert_eq!(log.len(), 1);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "does not sleep into a deadline it cannot meet"
    );
}

#[tokio::test(start_paused = true)]
async fn inherited_deadline_bounds_the_call() {
    let p = policy(RetryPolicy::default()).timeout(Some(Duration::from_secs(30)));
    let ctx = steadfast::Context::new().with_timeout(Duration::from_millis(250));
    let started = Instant::now();
    let (result, log) = ctx.scope(run(p, vec![Step::Hang])).await;
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    assert_eq!(log.len(), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(log.timeouts()[0].as_deref(), Some("250000u"));
}

#[tokio::test(start_paused = true)]
async fn throttle_stops_retries_in_a_sustained_outage() {
    let throttle = Arc::new(RetryThrottle::default());
    let p = CallPolicy::new("svc", "M")
        .retry(Some(RetryPolicy::default()))
        .throttle(Some(throttle.clone()));
    let mut attempts = 0;
    for _ in 0..100 {
        let (_, log) = run(p.clone(), vec![Step::Fail(Code::Unavailable)]).await;
        attempts += log.len();
    }
    // 3 + 2 attempts while the bucket drains from 10 to 5, then one attempt per call.
    assert_eq!(attempts, 3 + 2 + 98);
    let unthrottled = CallPolicy::new("svc", "M").retry(Some(RetryPolicy::default()));
    let (_, log) = run(unthrottled, vec![Step::Fail(Code::Unavailable)]).await;
    assert_eq!(
        log.len(),
        3,
        "without a throttle every call makes all its attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_from_the_server_is_not_a_local_timeout() {
    // The server's own DEADLINE_EXCEEDED (say, its downstream timed out) is an ordinary
    // status: not retryable unless listed, even though each attempt has a timeout.
    let retry = RetryPolicy::builder()
        .per_attempt_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let (result, log) = run(policy(retry), vec![Step::Fail(Code::DeadlineExceeded)]).await;
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    assert_eq!(log.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_nan_jitter_source_does_not_panic() {
    let retry = RetryPolicy::builder().build().unwrap();
    let p = CallPolicy::new("svc", "M")
        .retry(Some(retry))
        .jitter(|| f64::NAN);
    let (_, log) = run(p, vec![Step::Fail(Code::Unavailable)]).await;
    assert_eq!(
        gaps(&log.times()),
        [Duration::from_millis(100), Duration::from_millis(200)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_servers_report_that_our_attempt_timeout_expired_is_retried() {
    let retry = RetryPolicy::builder()
        .per_attempt_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let (result, log) = run(policy(retry), vec![Step::ServerDeadline, Step::Ok]).await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(log.len(), 2);
}

/// When a request came, and its `grpc-timeout`.
type Arrival = Arc<Mutex<Option<(Instant, Option<tonic::metadata::AsciiMetadataValue>)>>>;

/// A downstream that never answers, and notes when the request came and its `grpc-timeout`.
fn never_answers(
    seen: Arrival,
) -> impl tower::Service<
    tonic::Request<u32>,
    Response = tonic::Response<u32>,
    Error = Status,
    Future = impl std::future::Future<Output = Result<tonic::Response<u32>, Status>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |req: tonic::Request<u32>| {
        let timeout = req.metadata().get("grpc-timeout").cloned();
        *seen.lock().unwrap() = Some((Instant::now(), timeout));
        async move {
            std::future::pending::<()>().await;
            Ok::<_, Status>(tonic::Response::new(0u32))
        }
    })
}

/// A layer that keeps its service unready for a while on first use, as a rate limit or a
/// concurrency limit between the retry layer and the attempt timeout would.
#[derive(Clone)]
struct SlowReady<S> {
    inner: S,
    wait: Arc<Mutex<Option<std::pin::Pin<Box<tokio::time::Sleep>>>>>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for SlowReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        let mut wait = self.wait.lock().unwrap();
        if let Some(sleep) = wait.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
            *wait = None;
        }
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn time_waiting_for_a_layer_below_the_retry_is_not_given_to_the_attempt() {
    use tower::ServiceBuilder;
    let policy = Arc::new(policy(RetryPolicy::default()));
    let sent = Arc::new(Mutex::new(None));
    let seen = sent.clone();
    let started = Instant::now();
    let svc = ServiceBuilder::new()
        .layer(steadfast::deadline::CallDeadlineLayer::new(Some(
            Duration::from_secs(1),
        )))
        .layer(steadfast::retry::RetryLayer::new(policy))
        .layer_fn(|inner| SlowReady {
            inner,
            wait: Arc::new(Mutex::new(Some(Box::pin(tokio::time::sleep(
                Duration::from_millis(300),
            ))))),
        })
        .layer(steadfast::deadline::AttemptTimeoutLayer::new(None))
        .service(never_answers(seen));
    // 700 ms were left when the attempt went out once the layer was ready; not the second
    // the call began with.
    sent_300_ms_in_with_700_ms_left(svc, &sent, started).await;
}

/// Calls `svc`, a stack with a one-second deadline over [`never_answers`] recording into
/// `sent`, and checks that its attempt went out 300 ms after `started` with the 700 ms left
/// in its `grpc-timeout`, and that the call ended with DEADLINE_EXCEEDED at its deadline.
async fn sent_300_ms_in_with_700_ms_left<S>(svc: S, sent: &Arrival, started: Instant)
where
    S: tower::Service<tonic::Request<u32>, Error = Status>,
    S::Response: std::fmt::Debug,
{
    use tower::ServiceExt;
    let err = svc.oneshot(tonic::Request::new(7)).await.unwrap_err();
    let (at, timeout) = sent.lock().unwrap().clone().unwrap();
    assert_eq!(
        at - started,
        Duration::from_millis(300),
        "when the attempt went out"
    );
    assert_eq!(timeout.unwrap(), "700000u");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "the call kept its deadline"
    );
}

/// A layer whose future waits before it calls its service, as an auth layer fetching a
/// token would.
#[derive(Clone)]
struct DelayCall<S> {
    inner: S,
    delay: Duration,
}

impl<S, R> tower::Service<R> for DelayCall<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: R) -> Self::Future {
        use tower::ServiceExt;
        let (inner, delay) = (self.inner.clone(), self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.oneshot(req).await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_call_deadline_counts_from_the_start_of_the_call() {
    use tower::ServiceBuilder;
    let policy = Arc::new(policy(RetryPolicy::default()));
    let sent = Arc::new(Mutex::new(None));
    let seen = sent.clone();
    let started = Instant::now();
    // The call starts in the metrics layer; a layer between it and the deadline layer
    // takes 300 ms of the call's second before the deadline layer runs.
    let svc = ServiceBuilder::new()
        .layer(steadfast::metrics::CallMetricsLayer::new(
            policy.method_metrics(),
        ))
        .layer_fn(|inner| DelayCall {
            inner,
            delay: Duration::from_millis(300),
        })
        .layer(steadfast::deadline::CallDeadlineLayer::new(Some(
            Duration::from_secs(1),
        )))
        .layer(steadfast::retry::RetryLayer::new(policy))
        .layer(steadfast::deadline::AttemptTimeoutLayer::new(None))
        .service(never_answers(seen));
    // The deadline is one second from when the call began, not from when the deadline
    // layer ran: 700 ms were left for the attempt.
    sent_300_ms_in_with_700_ms_left(svc, &sent, started).await;
}
