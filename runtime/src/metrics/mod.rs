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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::breaker::{BreakerEvent, BreakerObserver};

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

/// The exemplar label set: one trace id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabel {
    trace_id: String,
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

/// The process-wide metrics of steadfast.
///
/// ```
/// let text = steadfast::metrics::render();
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub struct Metrics {
    registry: Mutex<Registry>,
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
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("steadfast");
        let breaker_state = Family::<ServiceLabel, Gauge>::default();
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        let breaker_rejections = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state per downstream service: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes per downstream service",
            breaker_transitions.clone(),
        );
        registry.register(
            "breaker_rejections",
            "Calls rejected by an open or saturated half-open breaker",
            breaker_rejections.clone(),
        );
        let client_calls = Family::<CallLabels, CounterWithExemplar<TraceLabel>>::default();
        let client_retries = Family::<MethodLabels, CounterWithExemplar<TraceLabel>>::default();
        let client_duration = Family::new_with_constructor(latency_histogram as fn() -> _);
        let server_calls = Family::<CallLabels, CounterWithExemplar<TraceLabel>>::default();
        let server_duration = Family::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "client_calls",
            "Calls made by resilient clients, by final status",
            client_calls.clone(),
        );
        registry.register(
            "client_retries",
            "Retry attempts made by resilient clients",
            client_retries.clone(),
        );
        registry.register(
            "client_call_duration_seconds",
            "Duration of client calls, all attempts included",
            client_duration.clone(),
        );
        registry.register(
            "server_calls",
            "Calls handled by #[traced] handlers, by status",
            server_calls.clone(),
        );
        registry.register(
            "server_call_duration_seconds",
            "Duration of calls handled by #[traced] handlers",
            server_duration.clone(),
        );
        let health_latency = Family::<CheckLabel, FloatGauge>::default();
        let health_up = Family::<CheckLabel, Gauge>::default();
        registry.register(
            "health_check_latency_seconds",
            "Latency of the last run of each health check",
            health_latency.clone(),
        );
        registry.register(
            "health_check_up",
            "Whether the last run of each health check passed (1) or failed (0)",
            health_up.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            health_latency,
            health_up,
            client_calls,
            client_retries,
            client_duration,
            server_calls,
            server_duration,
            breaker_state,
            breaker_transitions,
            breaker_rejections,
        }
    }

    /// Encodes every metric as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// Encodes the process-wide metrics as OpenMetrics text, for a `/metrics` endpoint.
pub fn render() -> String {
    global().render()
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
    std::sync::Arc::new(|name: &str, event: BreakerEvent<'_>| {
        let m = global();
        match event {
            BreakerEvent::Created => {
                m.breaker_state.get_or_create(&service(name)).set(0);
            }
            BreakerEvent::Transition(t) => {
                m.breaker_state
                    .get_or_create(&service(name))
                    .set(t.to.as_gauge());
                m.breaker_transitions
                    .get_or_create(&TransitionLabels {
                        service: name.to_owned(),
                        to: t.to.as_str(),
                    })
                    .inc();
            }
            BreakerEvent::Rejected => {
                m.breaker_rejections.get_or_create(&service(name)).inc();
            }
        }
    })
}

fn exemplar(trace_id: Option<crate::trace::TraceId>) -> Option<TraceLabel> {
    trace_id.map(|t| TraceLabel {
        trace_id: t.to_string(),
    })
}

/// Records one finished client call.
pub(crate) fn client_call(
    service: &str,
    method: &str,
    code: tonic::Code,
    elapsed: std::time::Duration,
    trace_id: Option<crate::trace::TraceId>,
) {
    let m = global();
    let code = crate::code::code_name(code);
    record_call(
        &m.client_calls,
        &m.client_duration,
        service,
        method,
        code,
        elapsed,
        trace_id,
    );
}

/// Records one retry.
pub(crate) fn client_retry(service: &str, method: &str, trace_id: Option<crate::trace::TraceId>) {
    let labels = MethodLabels {
        service: service.to_owned(),
        method: method.to_owned(),
    };
    global()
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
        &m.server_calls,
        &m.server_duration,
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
    m.health_latency
        .get_or_create(&label)
        .set(latency.as_secs_f64());
    m.health_up.get_or_create(&label).set(i64::from(ok));
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
