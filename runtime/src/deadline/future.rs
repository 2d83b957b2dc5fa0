use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use super::body::{Cut, CutBody, Timer, expired};
use crate::Context;
use crate::trace::context::CURRENT;

pin_project! {
    /// Response future of [`Deadline`](super::Deadline): runs the handler inside its
    /// [`Context`] and answers `DEADLINE_EXCEEDED` when the deadline passes first; the
    /// response body (a stream's messages) is cut at the deadline too.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Context, F>,
        // Armed only if the handler makes the call wait; moved into the response body
        // once the handler has answered.
        timer: Option<Timer>,
        timeout: Option<Duration>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new<S, R>(inner: &mut S, req: R, ctx: Context, timeout: Option<Duration>) -> Self
    where
        S: tower_service::Service<R, Future = F>,
        F: Future,
    {
        let timer = ctx.deadline().map(Timer::at);
        let fut = CURRENT.sync_scope(ctx.clone(), || inner.call(req));
        ResponseFuture {
            inner: CURRENT.scope(ctx, fut),
            timer,
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
            let (Ok(_), Some(timer)) = (out.as_ref(), this.timer.take()) else {
                return Poll::Ready(out);
            };
            let cut = Cut::GrpcTimeout(this.timeout.unwrap_or_default());
            return Poll::Ready(out.map(|response| {
                response.map(|body| tonic::body::Body::new(CutBody::new(body).deadline(timer, cut)))
            }));
        }
        if let Some(timer) = this.timer.as_mut() {
            ready!(timer.poll(cx));
            let status = expired(this.timeout.unwrap_or_default());
            return Poll::Ready(Ok(status.into_http()));
        }
        Poll::Pending
    }
}
