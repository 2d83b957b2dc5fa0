use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;

use crate::Context;
use crate::trace::context::CURRENT;

pin_project! {
    /// Response future of [`Deadline`](super::Deadline): runs the handler inside its
    /// [`Context`] and answers `DEADLINE_EXCEEDED` when the deadline passes first.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Context, F>,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<Duration>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new<S, R>(inner: &mut S, req: R, ctx: Context, timeout: Option<Duration>) -> Self
    where
        S: tower_service::Service<R, Future = F>,
        F: Future,
    {
        let sleep = ctx.deadline().map(tokio::time::sleep_until);
        let fut = CURRENT.sync_scope(ctx.clone(), || inner.call(req));
        ResponseFuture {
            inner: CURRENT.scope(ctx, fut),
            sleep,
            timeout,
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            let mut status = tonic::Status::deadline_exceeded(format!(
                "deadline of {:?} from grpc-timeout expired",
                this.timeout.unwrap_or_default()
            ));
            status.metadata_mut().insert(
                super::DEADLINE_EXPIRED_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            return Poll::Ready(Ok(status.into_http()));
        }
        Poll::Pending
    }
}
