//! A response body cut by a timer: a streaming response is bounded by its deadline (not only
//! the handler's first answer) and, on clients, by an idle timeout between messages.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Passes a response body through until one of its timers fires: the deadline, or no frame
/// for the idle time (restarted with every frame). Then it drops the body (on a server, the
/// handler's stream ends and its producer sees the caller gone; on a client, the stream is
/// reset, which cancels it on the server) and ends the response with that timer's status in
/// the trailers.
pub(crate) struct CutBody {
    inner: Option<tonic::body::Body>,
    deadline: Option<(Timer, Cut)>,
    idle: Option<(Pin<Box<Sleep>>, Duration)>,
}

/// A timer for an instant, armed (a tokio `Sleep` made and registered) only when first
/// polled: most calls end before their deadline without ever waiting for it, and then no
/// timer is made, registered or dropped for them.
#[derive(Debug)]
pub(crate) struct Timer {
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// A timer that fires at `at`, not armed yet.
    pub(crate) fn at(at: Instant) -> Self {
        Timer { at, sleep: None }
    }

    /// Ready once the instant has passed; arms the timer on the first call.
    pub(crate) fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let at = self.at;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
    }
}

/// The status a [`CutBody`] ends with when its deadline passes; built only then (most bodies
/// end before their deadline, and a formatted message on every response costs an allocation
/// and a `format!`).
pub(crate) enum Cut {
    /// A status with this code and message.
    Static(tonic::Code, &'static str),
    /// The server's answer when its caller's `grpc-timeout` of this length expires.
    GrpcTimeout(Duration),
}

impl Cut {
    fn status(&self) -> tonic::Status {
        match self {
            Cut::Static(code, message) => tonic::Status::new(*code, *message),
            Cut::GrpcTimeout(t) => expired(*t),
        }
    }
}

impl CutBody {
    /// `inner`, with no timer yet.
    pub(crate) fn new(inner: tonic::body::Body) -> Self {
        CutBody {
            inner: Some(inner),
            deadline: None,
            idle: None,
        }
    }

    /// Cut when `timer` fires, with the status `cut` says.
    pub(crate) fn deadline(mut self, timer: Timer, cut: Cut) -> Self {
        self.deadline = Some((timer, cut));
        self
    }

    /// Cut with UNAVAILABLE when no frame comes for `idle`.
    pub(crate) fn idle(mut self, idle: Duration) -> Self {
        self.idle = Some((Box::pin(tokio::time::sleep(idle)), idle));
        self
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

impl Body for CutBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            match &frame {
                None => this.inner = None,
                Some(_) => {
                    if let Some((sleep, idle)) = &mut this.idle {
                        let at = tokio::time::Instant::now() + *idle;
                        sleep.as_mut().reset(at);
                    }
                }
            }
            return Poll::Ready(frame);
        }
        let mut fired = None;
        if let Some((timer, cut)) = &mut this.deadline
            && timer.poll(cx).is_ready()
        {
            fired = Some(cut.status());
        } else if let Some((sleep, idle)) = &mut this.idle
            && sleep.as_mut().poll(cx).is_ready()
        {
            fired = Some(tonic::Status::unavailable(format!(
                "no message for {idle:?} (the stream's idle timeout)"
            )));
        }
        let Some(status) = fired else {
            return Poll::Pending;
        };
        // Dropping the body drops the stream: the other side sees the call gone.
        this.inner = None;
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::{Poll, Timer};
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_timer_is_armed_only_when_polled_and_fires_at_its_instant() {
        let start = Instant::now();
        let mut timer = Timer::at(start + Duration::from_millis(250));
        assert!(timer.sleep.is_none(), "made without arming");
        assert!(poll_fn(|cx| Poll::Ready(timer.poll(cx))).await.is_pending());
        assert!(timer.sleep.is_some(), "armed by its first poll");
        poll_fn(|cx| timer.poll(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));

        // An instant already past fires on the first poll.
        let mut past = Timer::at(start);
        assert!(poll_fn(|cx| Poll::Ready(past.poll(cx))).await.is_ready());
    }
}
