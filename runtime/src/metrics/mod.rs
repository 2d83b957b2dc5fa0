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

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::breaker::{BreakerConfig, CircuitBreaker};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
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
        Metrics {
            registry: Mutex::new(registry),
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

/// A breaker whose state changes update the metrics.
pub(crate) fn observed_breaker(name: &str, config: BreakerConfig) -> CircuitBreaker {
    let m = global();
    m.breaker_state.get_or_create(&service(name)).set(0);
    CircuitBreaker::with_observers(
        name,
        config,
        vec![Box::new(|name, t| {
            let m = global();
            m.breaker_state
                .get_or_create(&service(name))
                .set(t.to.as_gauge());
            m.breaker_transitions
                .get_or_create(&TransitionLabels {
                    service: name.to_owned(),
                    to: t.to.as_str(),
                })
                .inc();
        })],
    )
}

/// Counts one rejected call (cold path: the breaker is open).
pub(crate) fn breaker_rejected(name: &str) {
    global()
        .breaker_rejections
        .get_or_create(&service(name))
        .inc();
}
