use std::sync::Arc;

use tower_layer::Layer;

use super::{CallPolicy, Retry};

/// Applies [`Retry`] with one [`CallPolicy`].
///
/// ```
/// use steadfast::retry::{CallPolicy, RetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// let layer = RetryLayer::new(CallPolicy::new("user-svc", "GetUser").retry(Some(RetryPolicy::default())));
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|req: tonic::Request<u8>| async move { Ok::<_, tonic::Status>(tonic::Response::new(req.into_inner())) });
/// # let _ = svc;
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Arc<CallPolicy>,
}

impl RetryLayer {
    /// A layer that retries under `policy` (its retry policy and throttle; the timeouts and
    /// the breaker are the business of [`CallDeadlineLayer`](crate::deadline::CallDeadlineLayer),
    /// [`AttemptTimeoutLayer`](crate::deadline::AttemptTimeoutLayer) and
    /// [`BreakerLayer`](crate::breaker::BreakerLayer)).
    pub fn new(policy: impl Into<Arc<CallPolicy>>) -> Self {
        RetryLayer {
            policy: policy.into(),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone())
    }
}
