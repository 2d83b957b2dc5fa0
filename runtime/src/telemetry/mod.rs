//! Logging set-up: JSON lines through `tracing-subscriber`, with `trace_id` and `span_id` on
//! every line written inside a request, and `RUST_LOG` filtering.
//!
//! ```no_run
//! steadfast::telemetry::init().expect("no other global subscriber");
//! tracing::info!("service started"); // {"timestamp":"...","level":"INFO","target":"...","message":"service started"}
//! ```
//!
//! A line inside a request (a span that carries `trace_id`, as the trace layer and
//! `#[traced]` create) also has `"trace_id"`, `"span_id"` and `"span"` (the innermost span's
//! name). The ids come from the nearest enclosing span that has them.
//!
//! With the feature `otlp`, [`init`] also exports every span to an OpenTelemetry collector
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`telemetry::otlp`).
//!
//! # Secrets
//! Nothing steadfast records carries request metadata or headers: `#[traced]` never records
//! an argument that holds them (a `Request`, a `HeaderMap`, a `MetadataMap`), and the trace
//! layers log only the trace headers they parse. To record headers on purpose, record
//! [`redacted`] headers: values of sensitive keys ([`is_sensitive`]) are hidden.

#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;
mod redact;

pub use self::redact::{Headers, Redacted, is_sensitive, redacted};

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::Error;

/// Installs the JSON log subscriber on stdout as the global default. The filter comes from
/// `RUST_LOG` (default `info`); an invalid `RUST_LOG` is an error naming it. With the
/// feature `otlp` and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported there
/// (`telemetry::otlp`); call it inside a tokio runtime then, and [`shutdown`] before exit.
pub fn init() -> Result<(), Error> {
    init_with_writer(std::io::stdout)
}

/// Sends the spans still buffered for export and stops exporting (feature `otlp`; without
/// it, or when nothing is exported, it returns at once). Waits at most about 5 s.
pub async fn shutdown() {
    #[cfg(feature = "otlp")]
    if let Some(provider) = OTLP_PROVIDER.get().cloned() {
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!("span export did not shut down cleanly: {e}");
        }
    }
}

#[cfg(feature = "otlp")]
static OTLP_PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> =
    std::sync::OnceLock::new();

/// [`init`] with another destination.
pub fn init_with_writer<W>(writer: W) -> Result<(), Error>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| Error::config("RUST_LOG", format!("`{spec}`: {e}")))?,
        _ => EnvFilter::new("info"),
    };
    #[cfg(feature = "otlp")]
    let export = match otlp::OtlpConfig::from_env() {
        Some(config) => {
            let (layer, provider) = otlp::layer(&config)?;
            let _ = OTLP_PROVIDER.set(provider);
            Some(layer)
        }
        None => None,
    };
    #[cfg(not(feature = "otlp"))]
    let export: Option<tracing_subscriber::layer::Identity> = None;
    let subscriber = subscriber(writer).with(export).with(filter);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| {
        Error::config(
            "telemetry",
            format!("a global subscriber is already set: {e}"),
        )
    })
}

/// The subscriber [`init`] installs, without a level filter (it still drops the few
/// dependency events known to carry credentials): for `tracing::subscriber::set_default`
/// in tests, or to add layers.
pub fn subscriber<W>(writer: W) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(|m| {
            !leaks_credentials(m)
        }))
        .with(TraceFields)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(writer),
        )
}

/// Events known to carry credentials, dropped whatever the filter says: `nacos-sdk` logs
/// the Nacos password (and a login URL holding it) at DEBUG while it logs in.
fn leaks_credentials(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("nacos_sdk::api::plugin::auth")
        && *meta.level() > tracing::Level::INFO
}

/// The ids a span carries, kept in its extensions.
#[derive(Clone, Debug, Default)]
struct Ids {
    trace_id: Option<String>,
    span_id: Option<String>,
    parent_span_id: Option<String>,
}

impl Visit for Ids {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "trace_id" => self.trace_id = Some(format!("{value:?}")),
            "span_id" => self.span_id = Some(format!("{value:?}")),
            "parent_span_id" => self.parent_span_id = Some(format!("{value:?}")),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"))
    }
}

/// Remembers `trace_id` and `span_id` of each span for the formatter.
struct TraceFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TraceFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut ids = Ids::default();
        attrs.record(&mut ids);
        if (ids.trace_id.is_some() || ids.span_id.is_some())
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let mut ids = ext.get_mut::<Ids>().cloned().unwrap_or_default();
        values.record(&mut ids);
        if ids.trace_id.is_some() || ids.span_id.is_some() {
            ext.replace(ids);
        }
    }
}

/// Collects an event's fields as JSON.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// One JSON object per event.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            crate::time::rfc3339_millis(std::time::SystemTime::now()).into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        if let Some(message) = fields.remove("message") {
            line.insert("message".into(), message);
        }
        if let Some(scope) = ctx.event_scope() {
            let mut first = true;
            for span in scope {
                if first {
                    line.insert("span".into(), span.name().into());
                    first = false;
                }
                if let Some(ids) = span.extensions().get::<Ids>() {
                    if let Some(t) = &ids.trace_id {
                        line.insert("trace_id".into(), t.clone().into());
                    }
                    if let Some(s) = &ids.span_id {
                        line.insert("span_id".into(), s.clone().into());
                    }
                    if let Some(p) = &ids.parent_span_id {
                        line.insert("parent_span_id".into(), p.clone().into());
                    }
                    break;
                }
            }
        }
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}
