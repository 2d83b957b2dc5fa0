//! Health that tells the truth: named dependency checks run in the background, watchdogs for
//! stuck tasks, served as grpc.health.v1 (through `tonic-health`) and HTTP `/health`, and fed
//! to discovery.
//!
//! - Each check has a timeout (default 1 s) and a `critical` flag. Checks run on an interval
//!   (default 5 s), never on the request path; endpoints answer at once with the last results
//!   and their age. A check that hangs past its timeout is reported failed with the error
//!   `"timeout"` and blocks nothing.
//! - Hysteresis: `fail_after` consecutive failures (default 3) mark a check unhealthy and
//!   `recover_after` consecutive successes (default 2) mark it healthy again.
//! - The service is SERVING when every critical check is healthy; a failing non-critical
//!   check is reported but changes nothing.
//! - [`Health::watchdog`] returns a handle a task pets; no pet within `max_silence` fails the
//!   check named after the task.
//! - With a registry ([`HealthBuilder::registration`]), failing checks remove the instance's
//!   key from discovery (the lease stays) and passing checks put it back, retried with backoff
//!   until the registry agrees. While the instance should be registered but is not (etcd not
//!   reachable yet, the lease lost), the critical check `registration` fails with the reason,
//!   so readiness and grpc.health.v1 say NOT_SERVING, and the metric
//!   `steadfast_health_check_up{check="registration"}` is 0. An invalid instance (an id with
//!   `/`) is an error of [`HealthBuilder::build`].
//! - Error strings never carry credentials: URLs in them lose their `user:password@`.
//!
//! ```
//! use std::time::Duration;
//! use steadfast::health::{Check, Health};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
//! let health = Health::builder()
//!     .check("db", Check::new(|| async { Ok::<_, std::io::Error>(()) }))
//!     .check("cache", Check::new(|| async { Err::<(), _>("down") }).critical(false))
//!     .interval(Duration::from_millis(100))
//!     .build()?;
//! let router = health.router(); // /health, /health/ready, /health/live
//! let grpc = health.grpc_service(); // grpc.health.v1
//! # let _ = (router, grpc);
//! # Ok(()) }
//! ```

mod checks;
mod http;
mod registration;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tonic_health::ServingStatus;

pub use self::checks::{etcd, grpc, tcp};

use crate::Error;
use crate::registry::{Instance, Registry};

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// One dependency check: an async closure returning `Result<(), E>`.
#[derive(Clone)]
pub struct Check {
    run: CheckFn,
    timeout: Duration,
    critical: bool,
    interval: Option<Duration>,
    fail_after: Option<u32>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("timeout", &self.timeout)
            .field("critical", &self.critical)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A critical check with a 1 s timeout.
    pub fn new<F, Fut, E>(f: F) -> Check
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        Check {
            run: Arc::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| redact(&e.to_string())) })
            }),
            timeout: Duration::from_secs(1),
            critical: true,
            interval: None,
            fail_after: None,
        }
    }
    /// How long one run may take before it counts as failed with `"timeout"`.
    pub fn timeout(mut self, timeout: Duration) -> Check {
        self.timeout = timeout;
        self
    }
    /// Whether a failure makes the service NOT_SERVING (default `true`).
    pub fn critical(mut self, critical: bool) -> Check {
        self.critical = critical;
        self
    }
}

/// Removes `user:password@` from every URL in `text`.
///
/// ```
/// assert_eq!(
///     steadfast::health::redact("connect to postgres://app:s3cret@db:5432/x failed"),
///     "connect to postgres://db:5432/x failed"
/// );
/// ```
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The state of one check, as last evaluated.
#[derive(Clone, Debug, Default)]
pub(crate) struct CheckState {
    pub(crate) healthy: bool,
    pub(crate) critical: bool,
    pub(crate) latency: Option<Duration>,
    pub(crate) checked_at: Option<(SystemTime, Instant)>,
    pub(crate) error: Option<String>,
    failures: u32,
    successes: u32,
    ever_healthy: bool,
}

struct Inner {
    states: Mutex<BTreeMap<String, CheckState>>,
    serving: watch::Sender<bool>,
    /// SERVING but for the registration: whether the instance should be registered.
    ready: watch::Sender<bool>,
    shutting_down: AtomicBool,
    services: Vec<String>,
    fail_after: u32,
    recover_after: u32,
    interval: Duration,
}

/// The name of the check that reports whether the instance is registered.
pub const REGISTRATION_CHECK: &str = "registration";

/// The health of this process. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("serving", &self.is_serving())
            .field(
                "checks",
                &self
                    .inner
                    .states
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Builder for [`Health`].
#[derive(Debug)]
pub struct HealthBuilder {
    checks: Vec<(String, Check)>,
    interval: Duration,
    fail_after: u32,
    recover_after: u32,
    services: Vec<String>,
    registration: Option<(Arc<dyn Registry>, Instance)>,
}

impl Health {
    /// Starts a builder: interval 5 s, unhealthy after 3 failures, healthy after 2 successes.
    pub fn builder() -> HealthBuilder {
        HealthBuilder {
            checks: Vec::new(),
            interval: Duration::from_secs(5),
            fail_after: 3,
            recover_after: 2,
            services: Vec::new(),
            registration: None,
        }
    }
}

impl HealthBuilder {
    /// Adds a named check.
    pub fn check(mut self, name: impl Into<String>, check: Check) -> Self {
        self.checks.push((name.into(), check));
        self
    }
    /// How often checks run (default 5 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
    /// Consecutive failures that mark a check unhealthy, and successes that mark it
    /// healthy again (defaults 3 and 2).
    pub fn hysteresis(mut self, fail_after: u32, recover_after: u32) -> Self {
        self.fail_after = fail_after;
        self.recover_after = recover_after;
        self
    }
    /// A gRPC service name to report besides the whole server (`""`), e.g.
    /// `user.UserService`.
    pub fn grpc_service(mut self, name: impl Into<String>) -> Self {
        self.services.push(name.into());
        self
    }
    /// Keeps `instance` in `registry` only while SERVING.
    pub fn registration(mut self, registry: Arc<dyn Registry>, instance: Instance) -> Self {
        self.registration = Some((registry, instance));
        self
    }

    /// Validates and starts the background checks (on the current tokio runtime).
    pub fn build(self) -> Result<Health, Error> {
        if self.interval.is_zero() {
            return Err(Error::config(
                "health.interval",
                "must be greater than zero",
            ));
        }
        if self.fail_after == 0 || self.recover_after == 0 {
            return Err(Error::config(
                "health.hysteresis",
                "both thresholds must be at least 1",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (name, check) in &self.checks {
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(Error::config(
                    "health.check",
                    format!("`{name}` is empty or given twice"),
                ));
            }
            if check.timeout.is_zero() {
                return Err(Error::config(
                    "health.check.timeout",
                    format!("`{name}`: must be greater than zero"),
                ));
            }
        }
        let states = self
            .checks
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    CheckState {
                        // Until a check has run, it does not hold the service up: a fresh
                        // process is not known to be healthy.
                        healthy: false,
                        critical: c.critical,
                        ..CheckState::default()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let mut states = states;
        let ready = !states.values().any(|s| s.critical);
        if let Some((_, instance)) = &self.registration {
            instance.validate()?;
            if states.contains_key(REGISTRATION_CHECK) {
                return Err(Error::config(
                    "health.check",
                    format!("`{REGISTRATION_CHECK}` is reserved for the registration"),
                ));
            }
            // Pending until the instance is registered: not SERVING before.
            states.insert(
                REGISTRATION_CHECK.to_owned(),
                CheckState {
                    critical: true,
                    ..CheckState::default()
                },
            );
        }
        let initially = !states.values().any(|s| s.critical);
        let health = Health {
            inner: Arc::new(Inner {
                states: Mutex::new(states),
                serving: watch::channel(initially).0,
                ready: watch::channel(ready).0,
                shutting_down: AtomicBool::new(false),
                services: self.services,
                fail_after: self.fail_after,
                recover_after: self.recover_after,
                interval: self.interval,
            }),
        };
        for (name, check) in self.checks {
            tokio::spawn(run_check(Arc::downgrade(&health.inner), name, check));
        }
        if let Some((registry, instance)) = self.registration {
            tokio::spawn(registration::follow(
                Arc::downgrade(&health.inner),
                health.inner.ready.subscribe(),
                registry,
                instance,
            ));
        }
        Ok(health)
    }
}

/// A handle that a long-running task pets to show it is making progress.
#[derive(Clone, Debug)]
pub struct Watchdog {
    last: Arc<AtomicU64>,
    base: Instant,
}

impl Watchdog {
    /// Records progress now.
    pub fn pet(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Release);
    }
}

impl Health {
    /// A watchdog for the task `name`: when it is not petted within `max_silence`, the check
    /// `name` fails with `no heartbeat for ..` (critical; no hysteresis on failing).
    pub fn watchdog(&self, name: &str, max_silence: Duration) -> Watchdog {
        let dog = Watchdog {
            last: Arc::new(AtomicU64::new(0)),
            base: Instant::now(),
        };
        let d = dog.clone();
        let mut check = Check::new(move || {
            let silent = Duration::from_millis(
                (d.base.elapsed().as_millis() as u64)
                    .saturating_sub(d.last.load(Ordering::Acquire)),
            );
            async move {
                if silent > max_silence {
                    Err(format!("no heartbeat for {}s", silent.as_secs()))
                } else {
                    Ok(())
                }
            }
        });
        check.interval =
            Some((max_silence / 4).clamp(Duration::from_millis(10), self.inner.interval));
        check.fail_after = Some(1);
        self.inner
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.to_owned(),
                CheckState {
                    healthy: true,
                    critical: true,
                    ever_healthy: true,
                    ..CheckState::default()
                },
            );
        tokio::spawn(run_check(
            Arc::downgrade(&self.inner),
            name.to_owned(),
            check,
        ));
        dog
    }

    /// Whether the service is SERVING now.
    pub fn is_serving(&self) -> bool {
        *self.inner.serving.borrow()
    }

    /// Follows SERVING (`true`) and NOT_SERVING (`false`).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.serving.subscribe()
    }

    /// Reports NOT_SERVING from now on, whatever the checks say: the first step of a
    /// graceful shutdown.
    pub async fn set_not_serving(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.publish();
    }

    /// A grpc.health.v1 service (from `tonic-health`) that reports this health for the whole
    /// server (`""`) and for every name given to [`HealthBuilder::grpc_service`]; Watch
    /// streams see every change.
    pub fn grpc_service(
        &self,
    ) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>
    {
        let (reporter, server) = tonic_health::server::health_reporter();
        let names: Vec<String> = std::iter::once(String::new())
            .chain(self.inner.services.iter().cloned())
            .collect();
        // One task per reporter follows the status, so a newer status is never overwritten
        // by an older one; it ends when the health is dropped.
        let mut serving = self.subscribe();
        tokio::spawn(async move {
            loop {
                let status = if *serving.borrow_and_update() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for n in &names {
                    reporter.set_service_status(n, status).await;
                }
                if serving.changed().await.is_err() {
                    return;
                }
            }
        });
        server
    }

    /// The JSON report served at `/health` and `/health/ready`.
    pub fn report(&self) -> serde_json::Value {
        http::report(self)
    }

    /// HTTP endpoints (axum): `/health/live` (the process is up), `/health` and
    /// `/health/ready` (dependencies; 200 SERVING, 503 NOT_SERVING, JSON body).
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    pub(crate) fn states(&self) -> BTreeMap<String, CheckState> {
        self.inner
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Inner {
    /// Computes SERVING, and SERVING but for the registration, and reports both where they
    /// changed. Under the lock of the states, so that concurrent callers cannot publish an
    /// older result after a newer one.
    fn publish(&self) {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let up = !self.shutting_down.load(Ordering::Acquire);
        let healthy = |s: &CheckState| !s.critical || s.healthy;
        let ready = up
            && states
                .iter()
                .all(|(n, s)| n == REGISTRATION_CHECK || healthy(s));
        let serving = ready && states.values().all(healthy);
        self.ready
            .send_if_modified(|cur| std::mem::replace(cur, ready) != ready);
        let changed = self
            .serving
            .send_if_modified(|cur| std::mem::replace(cur, serving) != serving);
        if !changed {
            return;
        }
        if serving {
            tracing::info!(serving, "health changed to SERVING");
        } else if !up {
            tracing::info!(serving, "health changed to NOT_SERVING: shutting down");
        } else {
            let failing: Vec<String> = states
                .iter()
                .filter(|(_, s)| !healthy(s))
                .map(|(n, s)| match &s.error {
                    Some(e) => format!("{n}: {e}"),
                    None => n.clone(),
                })
                .collect();
            tracing::warn!(serving, ?failing, "health changed to NOT_SERVING");
        }
    }
}

async fn run_check(inner: std::sync::Weak<Inner>, name: String, check: Check) {
    let every = match inner.upgrade() {
        Some(i) => check.interval.unwrap_or(i.interval),
        None => return,
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let outcome = match tokio::time::timeout(check.timeout, (check.run)()).await {
            Ok(r) => r,
            Err(_) => Err("timeout".to_owned()),
        };
        let latency = started.elapsed();
        let Some(this) = inner.upgrade() else { return };
        crate::metrics::health_check(&name, latency, outcome.is_ok());
        {
            let mut states = this.states.lock().unwrap_or_else(|p| p.into_inner());
            let s = states.entry(name.clone()).or_default();
            s.critical = check.critical;
            s.latency = Some(latency);
            s.checked_at = Some((SystemTime::now(), Instant::now()));
            let fail_after = check.fail_after.unwrap_or(this.fail_after);
            match &outcome {
                Ok(()) => {
                    s.failures = 0;
                    s.successes = s.successes.saturating_add(1);
                    s.error = None;
                    // Hysteresis guards against flapping, not against starting up: a check
                    // that was never healthy becomes healthy on its first success.
                    if !s.healthy && (!s.ever_healthy || s.successes >= this.recover_after) {
                        s.healthy = true;
                        s.ever_healthy = true;
                    }
                }
                Err(e) => {
                    s.successes = 0;
                    s.failures = s.failures.saturating_add(1);
                    s.error = Some(e.clone());
                    if s.healthy && s.failures >= fail_after {
                        s.healthy = false;
                    }
                }
            }
        }
        this.publish();
    }
}
