//! Span export over OTLP/gRPC (feature `otlp`), to an OpenTelemetry collector, Jaeger,
//! Tempo or any other OTLP receiver.
//!
//! [`init`](super::init) turns it on by itself when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, as OpenTelemetry SDKs do: every span
//! steadfast opens (server `rpc` spans, client call and attempt spans, `#[traced]` fns) and
//! every span of the application is exported, with the W3C ids the log lines show, under
//! the service name `OTEL_SERVICE_NAME` (else the executable's name). Call
//! [`shutdown`](super::shutdown) before the process exits, so the last spans are sent.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), steadfast::Error> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_SERVICE_NAME=user-svc ./user-svc
//! steadfast::telemetry::init()?; // JSON logs, and spans to the collector
//! // ... serve ...
//! steadfast::telemetry::shutdown().await; // sends the spans still buffered
//! # Ok(()) }
//! ```
//!
//! To build the subscriber yourself, [`layer`] gives the OpenTelemetry layer and its
//! provider. The exporter needs a running tokio runtime: call these inside one.
//!
//! Spans are sent in batches from a background thread (every `OTEL_BSP_SCHEDULE_DELAY`
//! milliseconds, 5000 by default). An unreachable collector costs dropped spans and a
//! warning, never a failed call: the exporter retries in the background and the queue is
//! bounded (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 by default).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

use crate::Error;

/// Where and as whom spans are exported.
///
/// ```
/// use steadfast::telemetry::otlp::OtlpConfig;
/// let config = OtlpConfig::new("http://127.0.0.1:4317", "user-svc");
/// assert_eq!(config.endpoint(), "http://127.0.0.1:4317");
/// assert!(OtlpConfig::new("127.0.0.1:4317", "user-svc").validate().is_err());
/// // A password in the endpoint never reaches the error.
/// let err = OtlpConfig::new("grpc://me:sekrit@collector:4317", "s").validate().unwrap_err();
/// assert!(!err.to_string().contains("sekrit"));
/// ```
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    endpoint: String,
    service_name: String,
    timeout: Duration,
}

impl OtlpConfig {
    /// Spans of `service_name` to the OTLP/gRPC receiver at `endpoint`
    /// (`http://host:4317`).
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// The configuration the OpenTelemetry environment variables give, if an endpoint is
    /// set: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, and
    /// `OTEL_SERVICE_NAME` (else the executable's name).
    pub fn from_env() -> Option<Self> {
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| {
                std::env::current_exe()
                    .ok()?
                    .file_stem()?
                    .to_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown_service".to_owned());
        Some(OtlpConfig::new(endpoint.trim(), service))
    }

    /// How long one export may take (10 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks the endpoint: `http://` or `https://` and a host.
    pub fn validate(&self) -> Result<(), Error> {
        let ok = ["http://", "https://"].iter().any(|scheme| {
            self.endpoint
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
        if ok && self.endpoint.parse::<http::Uri>().is_ok() {
            Ok(())
        } else {
            Err(Error::config(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!(
                    "`{}` is not an OTLP/gRPC endpoint; write it as http://host:4317",
                    without_credentials(&self.endpoint)
                ),
            ))
        }
    }
}

/// The `user:password` part of an endpoint, if it has one.
fn userinfo(endpoint: &str) -> Option<&str> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority
        .rfind('@')
        .map(|at| &authority[..at])
        .filter(|u| !u.is_empty())
}

/// `endpoint` with any `user:password@` part replaced by `***@`, for error messages.
fn without_credentials(endpoint: &str) -> String {
    match userinfo(endpoint) {
        Some(u) => endpoint.replacen(u, "***", 1),
        None => endpoint.to_owned(),
    }
}

/// The OpenTelemetry layer that exports spans per `config`, and its provider (keep it, and
/// call `shutdown` on it before exit). The layer leaves out the transport crates' own
/// spans (h2, hyper, tonic, tower), so exporting never traces itself.
pub fn layer<S>(config: &OtlpConfig) -> Result<(impl Layer<S>, SdkTracerProvider), Error>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    config.validate()?;
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| {
            // The error may quote the endpoint: never with its credentials.
            let mut text = e.to_string();
            if let Some(userinfo) = userinfo(&config.endpoint) {
                text = text.replace(userinfo, "***");
            }
            Error::config("OTEL_EXPORTER_OTLP_ENDPOINT", text)
        })?;
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("steadfast");
    let quiet = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(quiet);
    Ok((layer, provider))
}
