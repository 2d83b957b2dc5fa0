//! The metrics layer of the client stack: one count and one latency sample per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::MethodMetrics;
use crate::Context;
use crate::outcome::{StreamSummary, StreamTally};
use crate::trace::TraceId;

/// Records each call (all its attempts together) in `rpc_client_duration_seconds`, by gRPC
/// service, method and final status code, with the call's trace id as exemplar.
///
/// ```
/// use steadfast::metrics::{CallMetricsLayer, Metrics};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handles = Metrics::global().client_method("doc.EchoService", "Echo");
/// let svc = ServiceBuilder::new()
///     .layer(CallMetricsLayer::new(handles))
///     .service_fn(|req: tonic::Request<u8>| async move {
///         Ok::<_, tonic::Status>(tonic::Response::new(req.into_inner()))
///     });
/// svc.oneshot(tonic::Request::new(1)).await.unwrap();
/// let text = steadfast::metrics::render();
/// assert!(text.contains(r#"rpc_client_duration_seconds_count{rpc_service="doc.EchoService",rpc_method="Echo",rpc_grpc_status_code="0"} 1"#));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CallMetricsLayer {
    handles: Arc<MethodMetrics>,
}

impl CallMetricsLayer {
    /// Records calls with `handles` (resolved once per method by
    /// [`Metrics::client_method`](super::Metrics::client_method)).
    pub fn new(handles: impl Into<Arc<MethodMetrics>>) -> Self {
        CallMetricsLayer {
            handles: handles.into(),
        }
    }
}

impl<S> Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// The service of [`CallMetricsLayer`].
#[derive(Clone, Debug)]
pub struct CallMetrics<S> {
    inner: S,
    handles: Arc<MethodMetrics>,
}

impl<S> CallMetrics<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, R> Service<tonic::Request<M>> for CallMetrics<S>
where
    S: Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>,
{
    type Response = tonic::Response<R>;
    type Error = Status;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::Request<M>) -> Self::Future {
        let ctx = Context::of_call(req.extensions_mut());
        let trace_id = ctx.trace().map(|t| t.trace_id());
        // The call starts here: the layers inside read this instant instead of the clock.
        let started = ctx.start_call();
        if !self.handles.is_resolved() {
            req.extensions_mut()
                .insert(LearnRpcService(self.handles.clone()));
        }
        let tally = req.extensions().get::<StreamTally>().cloned().map(|t| {
            // A stream counts as started now, unless the service name is still to be learned
            // (then when its response starts).
            let counted = self.handles.is_resolved();
            if counted {
                self.handles.stream_started();
            }
            (t, counted)
        });
        ResponseFuture {
            inner: self.inner.call(req),
            started,
            handles: self.handles.clone(),
            trace_id,
            tally,
        }
    }
}

/// A request extension asking the transport to tell the call's gRPC service name (from
/// tonic's `GrpcMethod`) to the metrics of a method that was built without it.
#[derive(Clone, Debug)]
pub struct LearnRpcService(Arc<MethodMetrics>);

impl LearnRpcService {
    /// Passes on the gRPC service name tonic put on an outgoing request.
    pub fn learn_from(extensions: &http::Extensions) {
        if let (Some(learn), Some(method)) = (
            extensions.get::<LearnRpcService>(),
            extensions.get::<tonic::GrpcMethod<'static>>(),
        ) {
            learn.0.learn(method.service());
        }
    }
}

pin_project! {
    /// The response future of [`CallMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        handles: Arc<MethodMetrics>,
        trace_id: Option<TraceId>,
        // A streaming call: also counted as a stream, when it ends.
        tally: Option<(StreamTally, bool)>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped before its response: a stream the caller gave up on.
            if let Some((tally, counted)) = this.tally.take() {
                if !counted {
                    this.handles.stream_started();
                }
                this.handles.stream_finished(
                    tonic::Code::Cancelled,
                    this.started.elapsed(),
                    tally.sent(),
                    0,
                    *this.trace_id,
                );
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, R> Future for ResponseFuture<F>
where
    F: Future<Output = Result<tonic::Response<R>, Status>>,
{
    type Output = Result<tonic::Response<R>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        let started = *this.started;
        this.handles.call(code, started.elapsed(), *this.trace_id);
        if let Some((tally, counted)) = this.tally.take() {
            if !counted {
                this.handles.stream_started();
            }
            let (handles, trace_id) = (this.handles.clone(), *this.trace_id);
            let finish = move |s: StreamSummary| {
                handles.stream_finished(s.code, started.elapsed(), s.sent, s.received, trace_id);
            };
            if code == tonic::Code::Ok && tally.is_response_stream() {
                // The transport reports the end of the response stream.
                tally.on_end(Box::new(finish));
            } else {
                tally.on_end(Box::new(finish));
                tally.ended(code, u64::from(code == tonic::Code::Ok));
            }
        }
        Poll::Ready(result)
    }
}
