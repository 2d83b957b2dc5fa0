use tower_layer::Layer;

use super::Deadline;

/// Applies [`Deadline`] to a server's services.
///
/// ```
/// use steadfast::deadline::DeadlineLayer;
/// let layer = DeadlineLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    _priv: (),
}

impl DeadlineLayer {
    /// A layer that enforces incoming `grpc-timeout` headers.
    pub fn new() -> Self {
        DeadlineLayer { _priv: () }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline::new(inner)
    }
}
