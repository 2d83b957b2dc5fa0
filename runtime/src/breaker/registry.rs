use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{BreakerConfig, BreakerObserver, BreakerState, CircuitBreaker};

/// Breakers keyed by downstream service name: every client of a service shares one.
///
/// The first registration of a name fixes its configuration; a later one with a different
/// configuration gets the existing breaker and a warning.
///
/// ```
/// use steadfast::breaker::{BreakerConfig, BreakerRegistry};
///
/// let registry = BreakerRegistry::new();
/// let a = registry.get_or_insert("order-svc", BreakerConfig::default());
/// let b = registry.get_or_insert("order-svc", BreakerConfig::default());
/// let c = registry.get_or_insert("user-svc", BreakerConfig::default());
/// assert!(std::sync::Arc::ptr_eq(&a, &b));
/// assert!(!std::sync::Arc::ptr_eq(&a, &c));
/// assert_eq!(registry.states().len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct BreakerRegistry {
    inner: Arc<Mutex<HashMap<String, Arc<CircuitBreaker>>>>,
    observer: Option<BreakerObserver>,
}

impl std::fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("states", &self.states())
            .finish_non_exhaustive()
    }
}

impl BreakerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        BreakerRegistry::default()
    }

    /// An empty registry whose breakers tell `observer` of their transitions and rejections
    /// (this is how [`metrics`](crate::metrics) watches them).
    pub fn with_observer(observer: BreakerObserver) -> Self {
        BreakerRegistry {
            inner: Arc::default(),
            observer: Some(observer),
        }
    }

    /// The breaker of `service`, created with `config` on first use. Called when clients are
    /// built, never per call.
    pub fn get_or_insert(&self, service: &str, config: BreakerConfig) -> Arc<CircuitBreaker> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let breaker = map
            .entry(service.to_owned())
            .or_insert_with(|| match &self.observer {
                Some(observer) => CircuitBreaker::observed(service, config, observer.clone()),
                None => CircuitBreaker::shared(service, config),
            })
            .clone();
        if *breaker.config() != config {
            tracing::warn!(
                service,
                "a client asked for another breaker config than the one its service's clients \
                 share; using the shared one"
            );
        }
        breaker
    }

    /// The breaker of `service`, if one exists.
    pub fn get(&self, service: &str) -> Option<Arc<CircuitBreaker>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(service).cloned()
    }

    /// Every breaker's state, by service name, for dashboards and health pages.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: Vec<_> = map.iter().map(|(k, b)| (k.clone(), b.state())).collect();
        states.sort();
        states
    }
}
