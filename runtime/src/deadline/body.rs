//! The response body of a server call with a deadline: a streaming response is cut at the
//! deadline too, not only the handler's first answer.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

pin_project! {
    /// Passes a response body through until the deadline; then drops it (on a server, the
    /// handler's stream ends and its producer sees the caller gone; on a client, the stream
    /// is reset, which cancels it on the server) and ends the response with the trailers of
    /// `status`.
    pub(crate) struct DeadlineBody {
        inner: Option<tonic::body::Body>,
        sleep: Pin<Box<Sleep>>,
        status: Option<tonic::Status>,
    }
}

impl DeadlineBody {
    pub(crate) fn new(
        inner: tonic::body::Body,
        sleep: Pin<Box<Sleep>>,
        status: tonic::Status,
    ) -> Self {
        DeadlineBody {
            inner: Some(inner),
            sleep,
            status: Some(status),
        }
    }
}

/// The trailers a server sends when its caller's deadline passes.
pub(super) fn expired(timeout: Duration) -> tonic::Status {
    let mut status = tonic::Status::deadline_exceeded(format!(
        "deadline of {timeout:?} from grpc-timeout expired"
    ));
    status.metadata_mut().insert(
        super::DEADLINE_EXPIRED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if frame.is_none() {
                *this.inner = None;
            }
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            // Dropping the body drops the handler's stream: its producer sees the caller
            // gone, as when the client cancels.
            *this.inner = None;
            let mut trailers = http::HeaderMap::new();
            if let Some(status) = this.status.take() {
                let _ = status.add_header(&mut trailers);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

pin_project! {
    /// Ends a response stream with UNAVAILABLE when no frame comes for `idle`; the timer
    /// restarts with every frame.
    pub(crate) struct IdleBody {
        inner: Option<tonic::body::Body>,
        sleep: Pin<Box<Sleep>>,
        idle: Duration,
    }
}

impl IdleBody {
    pub(crate) fn new(inner: tonic::body::Body, idle: Duration) -> Self {
        IdleBody {
            inner: Some(inner),
            sleep: Box::pin(tokio::time::sleep(idle)),
            idle,
        }
    }
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            match &frame {
                None => *this.inner = None,
                Some(_) => this
                    .sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + *this.idle),
            }
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            // Dropping the body resets the stream: the server sees the call cancelled.
            *this.inner = None;
            let mut trailers = http::HeaderMap::new();
            let status = tonic::Status::unavailable(format!(
                "no message for {:?} (the stream's idle timeout)",
                this.idle
            ));
            let _ = status.add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
