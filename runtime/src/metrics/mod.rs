//! Prometheus metrics in OpenMetrics text, through `prometheus-client`.
//!
//! The process-wide [`Metrics`] holds every steadfast metric; [`render`] encodes them for a
//! `/metrics` endpoint.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `steadfast_breaker_state` | gauge: 0 closed, 1 open, 2 half-open | `service` |
//! | `steadfast_breaker_transitions_total` | counter | `service`, `to` |
//! | `steadfast_breaker_rejections_total` | counter | `service` |
//! | `steadfast_client_calls_total` | counter, exemplar `trace_id` | `service`, `method`, `code` |
//! | `steadfast_client_retries_total` | counter, exemplar `trace_id` | `service`, `method` |
//! | `steadfast_client_call_duration_seconds` | histogram, exemplars `trace_id` | `service`, `method`, `code` |
//! | `steadfast_server_calls_total` | counter, exemplar `trace_id` | `service`, `method`, `code` |
//! | `steadfast_server_call_duration_seconds` | histogram, exemplars `trace_id` | `service`, `method`, `code` |
//! | `steadfast_health_check_latency_seconds` | gauge | `check` |
//! | `steadfast_health_check_up` | gauge: 1 passed, 0 failed | `check` |
//!
//! # Trace ids are exemplars, never labels
//! Every distinct label value creates a time series. A `trace_id` label would create one
//! series per request: memory in the process and in Prometheus grows without bound until
//! Prometheus falls over. An *exemplar* attaches a sample trace id to a counter or histogram
//! bucket instead, so a dashboard can jump from a latency spike to one trace that shows it,
//! at a fixed cost. Labels here have bounded values: service, method, status code.

mod layer;

use std::sync::{Mutex, OnceLock};

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::breaker::{BreakerEvent, BreakerObserver};
use crate::trace::TraceId;

pub use self::layer::{CallMetrics, CallMetricsLayer, ResponseFuture};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Latency histograms by call labels, with trace-id exemplars.
type LatencyFamily = Family<
    CallLabels,
    HistogramWithExemplars<TraceLabel>,
    fn() -> HistogramWithExemplars<TraceLabel>,
>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabel {
    check: String,
}

/// The exemplar label set: one trace id, encoded as hex when scraped (no allocation when
/// recorded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabel {
    trace_id: TraceHex,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct TraceHex(TraceId);

impl EncodeLabelValue for TraceHex {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let hex = self.0.to_hex();
        encoder.write_str(std::str::from_utf8(&hex).map_err(|_| std::fmt::Error)?)
    }
}

fn latency_histogram() -> HistogramWithExemplars<TraceLabel> {
    // 0.5 ms to about 16 s.
    HistogramWithExemplars::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    service: String,
    to: &'static str,
}

/// Every steadfast metric, as a cheap handle (clones share the same series).
///
/// [`Metrics::global`] is the process-wide default that clients, breakers, servers and
/// health checks use unless told otherwise; [`Metrics::new`] makes an isolated set (give it
/// to [`ClientConfig::metrics`](crate::client::ClientConfig::metrics)). Either can be added to
/// an application's own `prometheus_client` registry with [`register_into`](Self::register_into),
/// so one endpoint serves both.
///
/// ```
/// let text = steadfast::metrics::render();
/// assert!(text.ends_with("# EOF\n"));
///
/// use std::time::Duration;
/// use steadfast::metrics::Metrics;
///
/// let metrics = Metrics::new();
/// let mut mine = prometheus_client::registry::Registry::default();
/// metrics.register_into(&mut mine);
/// metrics.client_method("user-svc", "GetUser").call(tonic::Code::Ok, Duration::from_millis(3), None);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &mine).unwrap();
/// assert!(text.contains(r#"steadfast_client_calls_total{service="user-svc",method="GetUser",code="Ok"} 1"#));
/// assert_eq!(text.matches("# EOF").count(), 1);
/// ```
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A new, isolated set of every steadfast metric.
    pub fn new() -> Metrics {
        Metrics(Arc::new(Families::new()))
    }

    /// The process-wide set.
    pub fn global() -> Metrics {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(Metrics::new).clone()
    }

    /// Encodes every metric as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.0.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Adds every steadfast metric (prefixed `steadfast_`) to `registry`, so an
    /// application's own endpoint serves them with its own metrics. The series are shared:
    /// both registries show the same values.
    pub fn register_into(&self, registry: &mut Registry) {
        self.0
            .register(registry.sub_registry_with_prefix("steadfast"));
    }

    /// The handles of one client method, resolved once (at client construction) so that a
    /// successful call records without a label lookup or an allocation.
    pub fn client_method(&self, service: &str, method: &str) -> MethodMetrics {
        let labels = |code| CallLabels {
            service: service.to_owned(),
            method: method.to_owned(),
            code,
        };
        let ok = labels(crate::code::code_name(tonic::Code::Ok));
        MethodMetrics {
            ok_calls: self.0.client_calls.get_or_create(&ok).clone(),
            ok_duration: self.0.client_duration.get_or_create(&ok).clone(),
            retries: self
                .0
                .client_retries
                .get_or_create(&MethodLabels {
                    service: service.to_owned(),
                    method: method.to_owned(),
                })
                .clone(),
            service: service.into(),
            method: method.into(),
            metrics: self.clone(),
        }
    }
}

/// The metric handles of one client method (see [`Metrics::client_method`]).
#[derive(Clone)]
pub struct MethodMetrics {
    metrics: Metrics,
    service: Arc<str>,
    method: Arc<str>,
    ok_calls: CounterWithExemplar<TraceLabel>,
    ok_duration: HistogramWithExemplars<TraceLabel>,
    retries: CounterWithExemplar<TraceLabel>,
}

impl std::fmt::Debug for MethodMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodMetrics")
            .field("service", &self.service)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl MethodMetrics {
    /// Records one finished call with its final code, latency and trace id (exemplar).
    pub fn call(&self, code: tonic::Code, elapsed: std::time::Duration, trace_id: Option<TraceId>) {
        if code == tonic::Code::Ok {
            self.ok_calls.inc_by(1, exemplar(trace_id), None);
            self.ok_duration
                .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
        } else {
            record_call(
                &self.metrics.0.client_calls,
                &self.metrics.0.client_duration,
                &self.service,
                &self.method,
                crate::code::code_name(code),
                elapsed,
                trace_id,
            );
        }
    }

    /// Records one retry.
    pub fn retry(&self, trace_id: Option<TraceId>) {
        self.retries.inc_by(1, exemplar(trace_id), None);
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }
}

struct Families {
    client_calls: Family<CallLabels, CounterWithExemplar<TraceLabel>>,
    client_retries: Family<MethodLabels, CounterWithExemplar<TraceLabel>>,
    client_duration: LatencyFamily,
    server_calls: Family<CallLabels, CounterWithExemplar<TraceLabel>>,
    server_duration: LatencyFamily,
    health_latency: Family<CheckLabel, FloatGauge>,
    health_up: Family<CheckLabel, Gauge>,
    breaker_state: Family<ServiceLabel, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    breaker_rejections: Family<ServiceLabel, Counter>,
    registry: Mutex<Registry>,
}

impl Families {
    fn new() -> Families {
        let mut families = Families {
            client_calls: Family::default(),
            client_retries: Family::default(),
            client_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            server_calls: Family::default(),
            server_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            health_latency: Family::default(),
            health_up: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            breaker_rejections: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        let mut registry = Registry::with_prefix("steadfast");
        families.register(&mut registry);
        families.registry = Mutex::new(registry);
        families
    }

    /// Registers every family (shared handles) in `r`.
    fn register(&self, r: &mut Registry) {
        r.register(
            "breaker_state",
            "Circuit breaker state per downstream service: 0 closed, 1 open, 2 half-open",
            self.breaker_state.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker state changes per downstream service",
            self.breaker_transitions.clone(),
        );
        r.register(
            "breaker_rejections",
            "Calls rejected by an open or saturated half-open breaker",
            self.breaker_rejections.clone(),
        );
        r.register(
            "client_calls",
            "Calls made by resilient clients, by final status",
            self.client_calls.clone(),
        );
        r.register(
            "client_retries",
            "Retry attempts made by resilient clients",
            self.client_retries.clone(),
        );
        r.register(
            "client_call_duration_seconds",
            "Duration of client calls, all attempts included",
            self.client_duration.clone(),
        );
        r.register(
            "server_calls",
            "Calls handled by #[traced] handlers, by status",
            self.server_calls.clone(),
        );
        r.register(
            "server_call_duration_seconds",
            "Duration of calls handled by #[traced] handlers",
            self.server_duration.clone(),
        );
        r.register(
            "health_check_latency_seconds",
            "Latency of the last run of each health check",
            self.health_latency.clone(),
        );
        r.register(
            "health_check_up",
            "Whether the last run of each health check passed (1) or failed (0)",
            self.health_up.clone(),
        );
    }
}

/// The process-wide metrics (same as [`Metrics::global`]).
pub fn global() -> Metrics {
    Metrics::global()
}

/// Encodes the process-wide metrics as OpenMetrics text, for a `/metrics` endpoint.
pub fn render() -> String {
    Metrics::global().render()
}

fn service(name: &str) -> ServiceLabel {
    ServiceLabel {
        service: name.to_owned(),
    }
}

/// The breaker observer that keeps the breaker metrics: the state gauge, transitions and
/// rejections. Give it to [`BreakerRegistry::with_observer`](crate::breaker::BreakerRegistry::with_observer).
///
/// ```
/// use steadfast::breaker::{BreakerConfig, BreakerRegistry};
/// let registry = BreakerRegistry::with_observer(steadfast::metrics::breaker_observer());
/// registry.get_or_insert("doc-svc", BreakerConfig::default());
/// assert!(steadfast::metrics::render().contains(r#"steadfast_breaker_state{service="doc-svc"} 0"#));
/// ```
pub fn breaker_observer() -> BreakerObserver {
    Metrics::global().breaker_observer()
}

impl Metrics {
    /// The breaker observer that keeps this set's breaker metrics (see [`breaker_observer`]).
    pub fn breaker_observer(&self) -> BreakerObserver {
        let m = self.clone();
        Arc::new(move |name: &str, event: BreakerEvent<'_>| match event {
            BreakerEvent::Created => {
                m.0.breaker_state.get_or_create(&service(name)).set(0);
            }
            BreakerEvent::Transition(t) => {
                m.0.breaker_state
                    .get_or_create(&service(name))
                    .set(t.to.as_gauge());
                m.0.breaker_transitions
                    .get_or_create(&TransitionLabels {
                        service: name.to_owned(),
                        to: t.to.as_str(),
                    })
                    .inc();
            }
            BreakerEvent::Rejected => {
                m.0.breaker_rejections.get_or_create(&service(name)).inc();
            }
        })
    }
}

fn exemplar(trace_id: Option<TraceId>) -> Option<TraceLabel> {
    trace_id.map(|t| TraceLabel {
        trace_id: TraceHex(t),
    })
}

/// Records one retry.
pub(crate) fn client_retry(service: &str, method: &str, trace_id: Option<crate::trace::TraceId>) {
    let labels = MethodLabels {
        service: service.to_owned(),
        method: method.to_owned(),
    };
    global()
        .0
        .client_retries
        .get_or_create(&labels)
        .inc_by(1, exemplar(trace_id), None);
}

/// Records one handled call (from `#[traced]`).
#[doc(hidden)]
pub fn server_call(
    service: &str,
    method: &str,
    code: &'static str,
    elapsed: std::time::Duration,
    trace_id: Option<crate::trace::TraceId>,
) {
    let m = global();
    record_call(
        &m.0.server_calls,
        &m.0.server_duration,
        service,
        method,
        code,
        elapsed,
        trace_id,
    );
}

/// One call into a calls counter and a latency histogram, both with the trace id as exemplar.
fn record_call(
    calls: &Family<CallLabels, CounterWithExemplar<TraceLabel>>,
    duration: &LatencyFamily,
    service: &str,
    method: &str,
    code: &'static str,
    elapsed: std::time::Duration,
    trace_id: Option<crate::trace::TraceId>,
) {
    let labels = CallLabels {
        service: service.to_owned(),
        method: method.to_owned(),
        code,
    };
    calls
        .get_or_create(&labels)
        .inc_by(1, exemplar(trace_id), None);
    duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
}

/// The OpenMetrics content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Records one health check run.
pub(crate) fn health_check(check: &str, latency: std::time::Duration, ok: bool) {
    let m = global();
    let label = CheckLabel {
        check: check.to_owned(),
    };
    m.0.health_latency
        .get_or_create(&label)
        .set(latency.as_secs_f64());
    m.0.health_up.get_or_create(&label).set(i64::from(ok));
}

/// An axum router serving [`render`] at `/metrics` with the OpenMetrics content type.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            let mut r = axum::response::IntoResponse::into_response(render());
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }),
    )
}
