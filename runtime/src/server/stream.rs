//! `#[traced]` on a streaming handler: the handler's span stays open until its response
//! stream ends, and every message is produced inside the span and the call's context.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures_util::Stream;

use super::call::Call;

/// A response stream as tonic handlers write it (tonic's `BoxStream`).
pub type BoxStream<I> = Pin<Box<dyn Stream<Item = I> + Send + 'static>>;

/// Wraps a handler's response stream so that its span ends with it.
pub type Hold<U> = fn(U, Call, tracing::Span) -> U;

/// Tells, from a handler's return type alone, whether it answers with a stream that
/// `#[traced]` can follow to its end: generated code calls `(&Probe::<R>::new()).hold()`
/// with both [`StreamReply`] and [`UnaryReply`] in scope, and the more specific impl wins
/// (`Some` for a `BoxStream` reply, `None` for anything else).
#[derive(Debug)]
pub struct Probe<R>(PhantomData<fn() -> R>);

impl<R> Probe<R> {
    /// A probe of the return type `R`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Probe(PhantomData)
    }
}

/// The handler answers with a boxed stream: its span is held until the stream ends.
pub trait StreamReply<U> {
    /// How to hold the span.
    fn hold(&self) -> Option<Hold<U>>;
}

impl<T: 'static, E: 'static> StreamReply<BoxStream<Result<T, E>>>
    for Probe<Result<tonic::Response<BoxStream<Result<T, E>>>, tonic::Status>>
where
    E: Into<tonic::Status> + Clone,
{
    fn hold(&self) -> Option<Hold<BoxStream<Result<T, E>>>> {
        Some(|inner, call, span| {
            Box::pin(Traced {
                inner,
                call: Some(call),
                span,
            })
        })
    }
}

/// Any other reply: the span ends when the handler returns.
pub trait UnaryReply<U> {
    /// None: nothing to hold.
    fn hold(&self) -> Option<Hold<U>>;
}

impl<U> UnaryReply<U> for &Probe<Result<tonic::Response<U>, tonic::Status>> {
    fn hold(&self) -> Option<Hold<U>> {
        None
    }
}

/// A response stream polled inside its handler's span and context, that finishes the call
/// (log line and metrics) when it ends: with the first error's code, OK at its end, or
/// CANCELLED when dropped before (the caller went away or the deadline cut it).
struct Traced<S> {
    inner: S,
    call: Option<Call>,
    span: tracing::Span,
}

impl<S, T, E> Stream for Traced<S>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: Into<tonic::Status> + Clone,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(call) = &this.call else {
            return Poll::Ready(None);
        };
        let item = {
            let _entered = this.span.enter();
            call.in_scope(|| Pin::new(&mut this.inner).poll_next(cx))
        };
        let end = match &item {
            Poll::Ready(None) => Some(tonic::Code::Ok),
            Poll::Ready(Some(Err(e))) => Some(e.clone().into().code()),
            _ => None,
        };
        if let Some(code) = end
            && let Some(call) = this.call.take()
        {
            call.finish_stream(&this.span, code);
        }
        item
    }
}

impl<S> Drop for Traced<S> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish_stream(&self.span, tonic::Code::Cancelled);
        }
    }
}
