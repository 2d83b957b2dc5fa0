//! Prometheus metrics through `prometheus-client`, in one vocabulary for clients and
//! servers: the OpenTelemetry RPC metrics mapped to Prometheus names, so the client and
//! server series of one call join on (`rpc_service`, `rpc_method`).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `rpc_client_duration_seconds` | histogram, exemplars `trace_id` | `rpc_service`, `rpc_method`, `rpc_grpc_status_code` |
//! | `rpc_server_duration_seconds` | histogram, exemplars `trace_id` | `rpc_service`, `rpc_method`, `rpc_grpc_status_code` |
//! | `steadfast_client_retries_total` | counter, exemplar `trace_id` | `rpc_service`, `rpc_method` |
//! | `steadfast_client_streams_started_total` | counter | `rpc_service`, `rpc_method` |
//! | `steadfast_client_stream_duration_seconds` | histogram, exemplars `trace_id` | `rpc_service`, `rpc_method`, `rpc_grpc_status_code` |
//! | `steadfast_client_stream_messages_sent_total` | counter | `rpc_service`, `rpc_method` |
//! | `steadfast_client_stream_messages_received_total` | counter | `rpc_service`, `rpc_method` |
//! | `steadfast_http_handler_duration_seconds` | histogram, exemplars `trace_id` | `service`, `handler`, `outcome` |
//! | `steadfast_breaker_state` | gauge: 0 closed, 1 open, 2 half-open | `service` |
//! | `steadfast_breaker_transitions_total` | counter | `service`, `to` |
//! | `steadfast_breaker_rejections_total` | counter | `service` |
//! | `steadfast_health_check_latency_seconds` | gauge | `check` |
//! | `steadfast_health_check_up` | gauge: 1 passed, 0 failed | `check` |
//!
//! `rpc_service` is the full gRPC service name (`demo.user.UserService`), `rpc_method` the
//! gRPC method name (`GetUser`) and `rpc_grpc_status_code` the numeric status code (`0` for
//! OK, `14` for UNAVAILABLE), as in the OpenTelemetry semantic conventions. A call count is
//! the histogram's `_count`.
//!
//! # Streams
//! A streaming call (client, server or bidirectional streaming) is also counted as a
//! stream: `steadfast_client_streams_started_total` when it starts, and one sample of
//! `steadfast_client_stream_duration_seconds` when it ends, by its final code (the stream's
//! trailers, the deadline, or `1` CANCELLED when the caller dropped it), with the messages
//! it sent and received added to the two message counters. `rpc_client_duration_seconds`
//! times a streaming call until its response started (its headers), as for any call. The breaker metrics are labelled with the steadfast name of the
//! downstream (`service = "user-svc"`): one breaker guards every gRPC service it serves.
//!
//! # Formats
//! [`Metrics::render`] writes OpenMetrics text (with exemplars); [`Metrics::render_text`]
//! writes the classic Prometheus text format (version 0.0.4, no exemplars), which every
//! scraper and `promtool check metrics` read. [`router`] serves the classic format unless the
//! scraper's `Accept` header asks for `application/openmetrics-text`, as Prometheus does when
//! it stores exemplars ([`Format::negotiate`]).
//!
//! # Trace ids are exemplars, never labels
//! Every distinct label value creates a time series. A `trace_id` label would create one
//! series per request: memory in the process and in Prometheus grows without bound until
//! Prometheus falls over. An *exemplar* attaches a sample trace id to a counter or histogram
//! bucket instead, so a dashboard can jump from a latency spike to one trace that shows it,
//! at a fixed cost. Labels here have bounded values: service, method, status code.

mod layer;

use std::sync::{Arc, Mutex, OnceLock};

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::breaker::{BreakerEvent, BreakerObserver};
use crate::trace::TraceId;

pub use self::layer::{CallMetrics, CallMetricsLayer, LearnRpcService, ResponseFuture};

/// A label value shared between series without copying: a service or method name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc_service: Name,
    rpc_method: Name,
    rpc_grpc_status_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    rpc_service: Name,
    rpc_method: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    service: Name,
    handler: Name,
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Latency histograms by labels, with trace-id exemplars.
type LatencyFamily<L> =
    Family<L, HistogramWithExemplars<TraceLabel>, fn() -> HistogramWithExemplars<TraceLabel>>;

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

/// The numeric gRPC status code as a label value (`rpc_grpc_status_code`).
fn status_label(code: tonic::Code) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    CODES.get(code as usize).copied().unwrap_or("2")
}

/// A metrics exposition format.
///
/// ```
/// use steadfast::metrics::Format;
/// assert_eq!(Format::negotiate(None), Format::Text);
/// assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Text);
/// assert_eq!(
///     Format::negotiate(Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")),
///     Format::OpenMetrics,
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4: no exemplars.
    Text,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// The format a scraper asks for in its `Accept` header: OpenMetrics when it rates
    /// `application/openmetrics-text` at least as high as the classic format (`text/plain`,
    /// or a wildcard) and above zero, else the classic text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut open, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => CONTENT_TYPE,
        }
    }
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
/// metrics.client_method("user.UserService", "GetUser").call(tonic::Code::Ok, Duration::from_millis(3), None);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &mine).unwrap();
/// assert!(text.contains(r#"rpc_client_duration_seconds_count{rpc_service="user.UserService",rpc_method="GetUser",rpc_grpc_status_code="0"} 1"#));
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

    /// Encodes every metric as OpenMetrics text (with exemplars).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.0.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Encodes every metric in the classic Prometheus text format (version 0.0.4).
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }

    /// Encodes every metric in `format`.
    pub fn render_as(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::OpenMetrics => self.render(),
        }
    }

    /// Adds every steadfast metric to `registry` (the `rpc_*` names as they are, the others
    /// prefixed `steadfast_`), so an application's own endpoint serves them with its own
    /// metrics. The series are shared: both registries show the same values.
    pub fn register_into(&self, registry: &mut Registry) {
        self.0.register(registry);
    }

    /// The handles of one client method, resolved once (at client construction) so that a
    /// successful call records without a label lookup or an allocation. `rpc_service` is the
    /// full gRPC service name.
    pub fn client_method(&self, rpc_service: &str, rpc_method: &str) -> MethodMetrics {
        let method = MethodMetrics {
            metrics: self.clone(),
            method: Name(rpc_method.into()),
            resolved: OnceLock::new(),
        };
        method.resolve(rpc_service);
        method
    }

    /// The handles of one client method whose gRPC service name is not known yet: it is
    /// learned from the first call that reaches the transport ([`MethodMetrics::learn`]).
    /// Calls that end before that are recorded with an empty `rpc_service`.
    pub fn client_method_unresolved(&self, rpc_method: &str) -> MethodMetrics {
        MethodMetrics {
            metrics: self.clone(),
            method: Name(rpc_method.into()),
            resolved: OnceLock::new(),
        }
    }

    /// The handles of one server method (see [`ServerMethodMetrics`]).
    pub fn server_method(&self, rpc_service: &str, rpc_method: &str) -> ServerMethodMetrics {
        let labels = RpcLabels {
            rpc_service: Name(rpc_service.into()),
            rpc_method: Name(rpc_method.into()),
            rpc_grpc_status_code: status_label(tonic::Code::Ok),
        };
        ServerMethodMetrics {
            ok: self.0.server_duration.get_or_create(&labels).clone(),
            labels,
            metrics: self.clone(),
        }
    }
}

/// The metric handles of one client method (see [`Metrics::client_method`]).
pub struct MethodMetrics {
    metrics: Metrics,
    method: Name,
    resolved: OnceLock<Resolved>,
}

struct Resolved {
    service: Name,
    ok_duration: HistogramWithExemplars<TraceLabel>,
    retries: CounterWithExemplar<TraceLabel>,
}

impl std::fmt::Debug for MethodMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodMetrics")
            .field("service", &self.service())
            .field("method", &self.method())
            .finish_non_exhaustive()
    }
}

impl MethodMetrics {
    fn resolve(&self, rpc_service: &str) -> &Resolved {
        self.resolved.get_or_init(|| {
            let service = Name(rpc_service.into());
            let ok = RpcLabels {
                rpc_service: service.clone(),
                rpc_method: self.method.clone(),
                rpc_grpc_status_code: status_label(tonic::Code::Ok),
            };
            let families = &self.metrics.0;
            Resolved {
                ok_duration: families.client_duration.get_or_create(&ok).clone(),
                retries: families
                    .client_retries
                    .get_or_create(&MethodLabels {
                        rpc_service: service.clone(),
                        rpc_method: self.method.clone(),
                    })
                    .clone(),
                service,
            }
        })
    }

    /// Whether the gRPC service name is known.
    pub fn is_resolved(&self) -> bool {
        self.resolved.get().is_some()
    }

    /// Sets the gRPC service name when it is not known yet (the transport calls this with
    /// the name tonic puts on the request). Later calls keep the first name.
    pub fn learn(&self, rpc_service: &str) {
        if self.resolved.get().is_none() {
            self.resolve(rpc_service);
        }
    }

    /// Records one finished call with its final code, latency and trace id (exemplar).
    pub fn call(&self, code: tonic::Code, elapsed: std::time::Duration, trace_id: Option<TraceId>) {
        let Some(resolved) = self.resolved.get() else {
            // No attempt ever reached the transport, and no name was given: nothing joins
            // this call to a server series, so it is counted under the method alone.
            record(
                &self.metrics.0.client_duration,
                RpcLabels {
                    rpc_service: Name(Arc::from("")),
                    rpc_method: self.method.clone(),
                    rpc_grpc_status_code: status_label(code),
                },
                elapsed,
                trace_id,
            );
            return;
        };
        if code == tonic::Code::Ok {
            resolved
                .ok_duration
                .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
        } else {
            record(
                &self.metrics.0.client_duration,
                RpcLabels {
                    rpc_service: resolved.service.clone(),
                    rpc_method: self.method.clone(),
                    rpc_grpc_status_code: status_label(code),
                },
                elapsed,
                trace_id,
            );
        }
    }

    /// Records one retry.
    pub fn retry(&self, trace_id: Option<TraceId>) {
        match self.resolved.get() {
            Some(r) => {
                r.retries.inc_by(1, exemplar(trace_id), None);
            }
            None => {
                self.metrics
                    .0
                    .client_retries
                    .get_or_create(&MethodLabels {
                        rpc_service: Name(Arc::from("")),
                        rpc_method: self.method.clone(),
                    })
                    .inc_by(1, exemplar(trace_id), None);
            }
        }
    }

    fn method_labels(&self) -> MethodLabels {
        MethodLabels {
            rpc_service: self
                .resolved
                .get()
                .map_or_else(|| Name(Arc::from("")), |r| r.service.clone()),
            rpc_method: self.method.clone(),
        }
    }

    /// Records that a streaming call started.
    pub fn stream_started(&self) {
        self.metrics
            .0
            .client_streams_started
            .get_or_create(&self.method_labels())
            .inc();
    }

    /// Records that a streaming call ended with `code` after `elapsed`, having sent `sent`
    /// messages and received `received`.
    pub fn stream_finished(
        &self,
        code: tonic::Code,
        elapsed: std::time::Duration,
        sent: u64,
        received: u64,
        trace_id: Option<TraceId>,
    ) {
        let labels = self.method_labels();
        let families = &self.metrics.0;
        families
            .client_stream_sent
            .get_or_create(&labels)
            .inc_by(sent);
        families
            .client_stream_received
            .get_or_create(&labels)
            .inc_by(received);
        record(
            &families.client_stream_duration,
            RpcLabels {
                rpc_service: labels.rpc_service,
                rpc_method: labels.rpc_method,
                rpc_grpc_status_code: status_label(code),
            },
            elapsed,
            trace_id,
        );
    }

    /// The gRPC service name, once known.
    pub fn service(&self) -> Option<&str> {
        self.resolved.get().map(|r| &*r.service.0)
    }

    /// The gRPC method name.
    pub fn method(&self) -> &str {
        &self.method.0
    }
}

/// The metric handles of one server method, resolved once per handler: a successful call
/// records without a label lookup or an allocation.
///
/// ```
/// use std::time::Duration;
/// let m = steadfast::metrics::Metrics::new();
/// m.server_method("user.UserService", "GetUser").call(tonic::Code::NotFound, Duration::from_millis(1), None);
/// assert!(m.render_text().contains(r#"rpc_server_duration_seconds_count{rpc_service="user.UserService",rpc_method="GetUser",rpc_grpc_status_code="5"} 1"#));
/// ```
pub struct ServerMethodMetrics {
    metrics: Metrics,
    labels: RpcLabels,
    ok: HistogramWithExemplars<TraceLabel>,
}

impl std::fmt::Debug for ServerMethodMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMethodMetrics")
            .field("service", &self.labels.rpc_service.0)
            .field("method", &self.labels.rpc_method.0)
            .finish_non_exhaustive()
    }
}

impl ServerMethodMetrics {
    /// Records one handled call.
    pub fn call(&self, code: tonic::Code, elapsed: std::time::Duration, trace_id: Option<TraceId>) {
        if code == tonic::Code::Ok {
            self.ok
                .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
        } else {
            let mut labels = self.labels.clone();
            labels.rpc_grpc_status_code = status_label(code);
            record(&self.metrics.0.server_duration, labels, elapsed, trace_id);
        }
    }
}

struct Families {
    client_retries: Family<MethodLabels, CounterWithExemplar<TraceLabel>>,
    client_duration: LatencyFamily<RpcLabels>,
    client_streams_started: Family<MethodLabels, Counter>,
    client_stream_duration: LatencyFamily<RpcLabels>,
    client_stream_sent: Family<MethodLabels, Counter>,
    client_stream_received: Family<MethodLabels, Counter>,
    server_duration: LatencyFamily<RpcLabels>,
    http_duration: LatencyFamily<HandlerLabels>,
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
            client_retries: Family::default(),
            client_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            client_streams_started: Family::default(),
            client_stream_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            client_stream_sent: Family::default(),
            client_stream_received: Family::default(),
            server_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            http_duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            health_latency: Family::default(),
            health_up: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            breaker_rejections: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        let mut registry = Registry::default();
        families.register(&mut registry);
        families.registry = Mutex::new(registry);
        families
    }

    /// Registers every family (shared handles) in `root`.
    fn register(&self, root: &mut Registry) {
        root.register(
            "rpc_client_duration_seconds",
            "Duration of gRPC calls made by resilient clients, all attempts included",
            self.client_duration.clone(),
        );
        root.register(
            "rpc_server_duration_seconds",
            "Duration of gRPC calls handled by #[traced] handlers",
            self.server_duration.clone(),
        );
        let r = root.sub_registry_with_prefix("steadfast");
        r.register(
            "client_retries",
            "Retry attempts made by resilient clients",
            self.client_retries.clone(),
        );
        r.register(
            "client_streams_started",
            "Streaming calls (client, server or bidirectional) started by resilient clients",
            self.client_streams_started.clone(),
        );
        r.register(
            "client_stream_duration_seconds",
            "Duration of streaming calls made by resilient clients, from start to the stream's end, by final code",
            self.client_stream_duration.clone(),
        );
        r.register(
            "client_stream_messages_sent",
            "Messages sent on streaming calls made by resilient clients",
            self.client_stream_sent.clone(),
        );
        r.register(
            "client_stream_messages_received",
            "Messages received on streaming calls made by resilient clients",
            self.client_stream_received.clone(),
        );
        r.register(
            "http_handler_duration_seconds",
            "Duration of HTTP requests handled by #[traced] handlers",
            self.http_duration.clone(),
        );
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

/// Encodes the process-wide metrics as OpenMetrics text.
pub fn render() -> String {
    Metrics::global().render()
}

/// Rewrites OpenMetrics text as the classic Prometheus text format: counter families take
/// their `_total` sample name, exemplars, `# UNIT` and `# EOF` are dropped.
fn openmetrics_to_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut counters: Vec<&str> = Vec::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.push(name);
                let _ = writeln!(out, "# TYPE {name}_total counter");
            } else {
                let _ = writeln!(out, "{line}");
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            let is_counter = open.contains(&format!("# TYPE {name} counter"));
            if is_counter {
                let _ = writeln!(out, "# HELP {name}_total{}", &rest[name.len()..]);
            } else {
                let _ = writeln!(out, "{line}");
            }
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not part of the classic format.
        } else {
            let _ = writeln!(out, "{}", strip_exemplar(line));
        }
    }
    out
}

/// The sample without its exemplar (` # {labels} value [timestamp]` after the value). Label
/// values may contain ` # `, so the search starts after the label set.
fn strip_exemplar(line: &str) -> &str {
    let after_labels = match line
        .find([' ', '{'])
        .filter(|&i| line.as_bytes()[i] == b'{')
    {
        Some(open) => {
            // Find the closing brace outside quoted label values.
            let bytes = line.as_bytes();
            let (mut i, mut quoted, mut escaped) = (open + 1, false, false);
            while i < bytes.len() {
                match bytes[i] {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => quoted = !quoted,
                    b'}' if !quoted => break,
                    _ => {}
                }
                i += 1;
            }
            i
        }
        None => 0,
    };
    match line[after_labels..].find(" # ") {
        Some(at) => &line[..after_labels + at],
        None => line,
    }
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

/// Records one HTTP request handled by a `#[traced]` handler.
pub(crate) fn http_handler(
    service: &str,
    handler: &str,
    outcome: &'static str,
    elapsed: std::time::Duration,
    trace_id: Option<TraceId>,
) {
    record(
        &global().0.http_duration,
        HandlerLabels {
            service: Name(service.into()),
            handler: Name(handler.into()),
            outcome,
        },
        elapsed,
        trace_id,
    );
}

/// One latency sample with the trace id as exemplar.
fn record<L>(
    family: &LatencyFamily<L>,
    labels: L,
    elapsed: std::time::Duration,
    trace_id: Option<TraceId>,
) where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    family
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64(), exemplar(trace_id), None);
}

/// The OpenMetrics content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the classic Prometheus text format ([`Metrics::render_text`]).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// An axum router serving the process-wide metrics at `/metrics`: the classic Prometheus
/// text format, or OpenMetrics with exemplars when the scraper's `Accept` asks for it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::ServiceExt;
/// let ask = |accept: &'static str| {
///     steadfast::metrics::router().oneshot(
///         http::Request::get("/metrics").header("accept", accept).body(axum::body::Body::empty()).unwrap(),
///     )
/// };
/// let classic = ask("text/plain").await.unwrap();
/// assert_eq!(classic.headers()["content-type"], steadfast::metrics::TEXT_CONTENT_TYPE);
/// let open = ask("application/openmetrics-text; version=1.0.0").await.unwrap();
/// assert_eq!(open.headers()["content-type"], steadfast::metrics::CONTENT_TYPE);
/// # }
/// ```
pub fn router() -> axum::Router {
    router_for(Metrics::global())
}

/// [`router`] for another set of metrics.
pub fn router_for(metrics: Metrics) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let metrics = metrics.clone();
            async move {
                let accept = headers
                    .get(axum::http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let format = Format::negotiate(accept);
                let mut r = axum::response::IntoResponse::into_response(metrics.render_as(format));
                r.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static(format.content_type()),
                );
                r
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_has_no_exemplars_units_or_eof_and_names_counters_total() {
        let m = Metrics::new();
        let id = TraceId::random();
        m.client_method("a.B", "C").call(
            tonic::Code::Ok,
            std::time::Duration::from_millis(2),
            Some(id),
        );
        m.client_method("a.B", "C").retry(Some(id));
        let open = m.render();
        assert!(open.contains(" # {trace_id=\""), "{open}");
        let text = m.render_text();
        assert!(!text.contains("trace_id"), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE steadfast_client_retries_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP steadfast_client_retries_total "),
            "{text}"
        );
        assert!(
            text.contains(r#"steadfast_client_retries_total{rpc_service="a.B",rpc_method="C"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rpc_client_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn an_exemplar_is_cut_after_the_labels_even_when_a_label_value_has_a_hash() {
        assert_eq!(
            strip_exemplar(r#"x_total{a="p # q"} 1 # {trace_id="ab"} 1.0"#),
            r#"x_total{a="p # q"} 1"#
        );
        assert_eq!(strip_exemplar("x_total 1 # {t=\"a\"} 1"), "x_total 1");
        assert_eq!(strip_exemplar("x 1"), "x 1");
    }

    #[test]
    fn a_zero_quality_openmetrics_is_not_chosen() {
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0,text/plain")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;Q=0,text/plain")),
            Format::Text
        );
    }

    #[test]
    fn the_higher_quality_wins() {
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.1")),
            Format::Text
        );
        // What Prometheus sends when it can store exemplars.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
    }
}
