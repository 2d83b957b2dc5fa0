use std::sync::Arc;

use tower_layer::Layer;

use super::{Breaker, CircuitBreaker};

/// Applies [`Breaker`] with a shared [`CircuitBreaker`].
///
/// ```
/// use steadfast::breaker::{BreakerLayer, BreakerRegistry, BreakerConfig};
/// use tower::ServiceBuilder;
///
/// let registry = BreakerRegistry::new();
/// let breaker = registry.get_or_insert("user-svc", BreakerConfig::default());
/// let svc = ServiceBuilder::new()
///     .layer(BreakerLayer::new(breaker))
///     .service_fn(|req: tonic::Request<u8>| async move {
///         Ok::<_, tonic::Status>(tonic::Response::new(req.into_inner()))
///     });
/// # let _ = svc;
/// ```
#[derive(Clone, Debug)]
pub struct BreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl BreakerLayer {
    /// A layer guarding services with `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        BreakerLayer { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, self.breaker.clone())
    }
}
