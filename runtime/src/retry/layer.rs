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
    policy: CallPolicy,
}

impl RetryLayer {
    /// A layer that retries under `policy`.
    pub fn new(policy: CallPolicy) -> Self {
        RetryLayer { policy }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone())
    }
}
