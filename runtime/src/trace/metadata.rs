//! Trace propagation on outgoing gRPC calls: the call's trace context into each attempt's
//! metadata.

use std::task::{Context as TaskContext, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::Context;

/// Writes the call's trace context (`traceparent`, `tracestate`, `X-Trace-ID`) into the
/// metadata of every request it sends. The context is the call's [`Context`] (a request
/// extension set by the client stack), else the running task's, else a new trace.
///
/// ```
/// use steadfast::trace::PropagateMetadataLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(PropagateMetadataLayer::new())
///     .service_fn(|req: tonic::Request<()>| async move {
///         let sent = req.metadata().get("traceparent").is_some();
///         Ok::<_, tonic::Status>(tonic::Response::new(sent))
///     });
/// assert!(svc.oneshot(tonic::Request::new(())).await.unwrap().into_inner());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateMetadataLayer {
    _priv: (),
}

impl PropagateMetadataLayer {
    /// The layer.
    pub fn new() -> Self {
        PropagateMetadataLayer { _priv: () }
    }
}

impl<S> Layer<S> for PropagateMetadataLayer {
    type Service = PropagateMetadata<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PropagateMetadata { inner }
    }
}

/// The service of [`PropagateMetadataLayer`].
#[derive(Clone, Debug)]
pub struct PropagateMetadata<S> {
    inner: S,
}

impl<S> PropagateMetadata<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        PropagateMetadata { inner }
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M> Service<tonic::Request<M>> for PropagateMetadata<S>
where
    S: Service<tonic::Request<M>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::Request<M>) -> S::Future {
        let trace = Context::of_call(req.extensions_mut())
            .trace()
            .cloned()
            .expect("of_call gives every call a trace");
        super::inject_metadata(&trace, req.metadata_mut());
        self.inner.call(req)
    }
}
