use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tower::ServiceExt;

use crate::connection::Connection;
use crate::discovery::Pool;
use crate::outcome::AttemptInfo;
use crate::outcome::classify_http;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxedTransport = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    BoxError,
>;

/// A transport the user brought (see [`ClientConfig::transport`](super::ClientConfig::transport)).
#[derive(Clone)]
pub(crate) struct CustomTransport(BoxedTransport);

impl CustomTransport {
    pub(crate) fn new<S>(svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        CustomTransport(BoxedTransport::new(svc.map_err(Into::into)))
    }
}

impl std::fmt::Debug for CustomTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomTransport")
    }
}

/// The transport of every steadfast client: a tonic channel to fixed endpoints, or a pool
/// that follows a service's live instances in a registry (see the discovery rules in
/// [`ClientConfig::discover`](super::ClientConfig::discover)).
///
/// It reads and fills the attempt's [`AttemptInfo`] (a request extension) when the layer
/// above put one there: whether response headers arrived (a response that started, HTTP 200
/// without `grpc-status`, commits the call per gRFC A6, so it is not retried; a trailers-only
/// error or a proxy's 503 does not), which endpoint served it (so that a retry can go
/// elsewhere), and where to report the attempt's outcome for outlier detection. Without an
/// `AttemptInfo` it classifies what it sees itself.
///
/// Use it as the transport of any tonic-generated client: `UserServiceClient::new(channel)`.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: Transport,
    /// The connection of a fixed endpoint, when this channel made it (it may be shared with
    /// other clients: held, so that it stays shared while in use).
    connection: Option<Arc<Connection>>,
}

#[derive(Clone, Debug)]
enum Transport {
    Fixed(tonic::transport::Channel),
    Discovered(Arc<Pool>),
    Custom(CustomTransport),
}

impl Channel {
    /// Wraps a tonic channel.
    pub fn new(inner: tonic::transport::Channel) -> Self {
        Channel {
            inner: Transport::Fixed(inner),
            connection: None,
        }
    }

    /// A fixed endpoint's connection shared with other clients.
    pub(crate) fn shared(shared: Arc<Connection>) -> Self {
        Channel {
            inner: Transport::Fixed(shared.channel().clone()),
            connection: Some(shared),
        }
    }

    pub(crate) fn custom(transport: CustomTransport) -> Self {
        Channel {
            inner: Transport::Custom(transport),
            connection: None,
        }
    }

    pub(crate) fn discovered(pool: Arc<Pool>) -> Self {
        Channel {
            inner: Transport::Discovered(pool),
            connection: None,
        }
    }

    /// Whether the transport enforces the `grpc-timeout` each request carries, for the whole
    /// request. A tonic channel starts its timer only once the request reaches a connection;
    /// this channel times a request sent while no connection is open itself (until one is
    /// made: a TLS handshake a frozen peer never answers, a slow name lookup), so together
    /// they do, on the connections this channel made. A tonic channel given to
    /// [`Channel::new`], several fixed endpoints (tonic balances over its own connections)
    /// and a custom transport leave the attempt's timer to the layer above.
    pub fn enforces_grpc_timeout(&self) -> bool {
        match &self.inner {
            Transport::Discovered(_) => true,
            Transport::Fixed(_) => self.connection.is_some(),
            Transport::Custom(_) => false,
        }
    }

    /// Attempts sent so far to the discovered instance `id` (`None` when it is not in the
    /// pool, or the endpoints are fixed).
    pub fn attempts_to(&self, id: &str) -> Option<u64> {
        match &self.inner {
            Transport::Fixed(_) | Transport::Custom(_) => None,
            Transport::Discovered(pool) => pool.attempts_to(id),
        }
    }

    /// The ids of the instances currently in a discovered pool, sorted (empty for fixed
    /// endpoints).
    pub fn discovered_ids(&self) -> Vec<String> {
        match &self.inner {
            Transport::Fixed(_) | Transport::Custom(_) => Vec::new(),
            Transport::Discovered(pool) => pool.ids(),
        }
    }

    /// The ids of the discovered instances that outlier detection has ejected now.
    pub fn ejected_ids(&self) -> Vec<String> {
        match &self.inner {
            Transport::Fixed(_) | Transport::Custom(_) => Vec::new(),
            Transport::Discovered(pool) => pool.ejected_ids(),
        }
    }

    /// Replaces a discovered pool's outlier detection (fixed endpoints have none).
    pub(crate) fn set_outlier_detection(&self, od: crate::discovery::OutlierDetection) {
        if let Transport::Discovered(pool) = &self.inner {
            pool.set_outlier_detection(od);
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.inner {
            Transport::Fixed(ch) => tower_service::Service::poll_ready(ch, cx).map_err(Into::into),
            Transport::Custom(t) => tower_service::Service::poll_ready(&mut t.0, cx),
            // Each call picks its endpoint and waits for it to be ready.
            Transport::Discovered(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        crate::metrics::LearnRpcService::learn_from(req.extensions());
        crate::trace::LearnSpanService::learn_from(req.extensions());
        let commit = req.extensions().get::<AttemptInfo>().cloned();
        let tally = req
            .extensions()
            .get::<crate::outcome::StreamTally>()
            .filter(|t| t.is_response_stream())
            .cloned();
        // A response stream is bounded by the call's deadline as a whole, not only until
        // its headers.
        let streaming = req
            .extensions()
            .get::<crate::deadline::StreamingResponse>()
            .copied();
        let idle = streaming.and_then(|s| s.idle);
        let streaming = streaming.is_some();
        let stream_deadline = streaming
            .then(|| req.extensions().get::<crate::Context>())
            .flatten()
            .and_then(crate::Context::deadline);
        match &mut self.inner {
            Transport::Fixed(ch) => ResponseFuture {
                connect_timer: self
                    .connection
                    .as_ref()
                    .and_then(|connection| connect_timer(connection, &req)),
                inner: Inner::Fixed {
                    fut: {
                        if let Some(connection) = &self.connection {
                            connection.prepare(req.headers_mut());
                        }
                        tower_service::Service::call(ch, req)
                    },
                },
                commit,
                stream_deadline,
                streaming,
                idle,
                tally,
            },
            Transport::Custom(t) => ResponseFuture {
                connect_timer: None,
                inner: Inner::Discovered {
                    fut: tower_service::Service::call(&mut t.0, req),
                },
                commit,
                stream_deadline,
                streaming,
                idle,
                tally,
            },
            Transport::Discovered(pool) => {
                let (avoid, probe) = commit
                    .as_ref()
                    .map_or((None, false), |i| (i.avoid(), i.is_probe()));
                let Some(slot) = pool.pick(avoid, probe) else {
                    let status = tonic::Status::unavailable(format!(
                        "no live instances of `{}` in the registry",
                        pool.service()
                    ));
                    return ResponseFuture {
                        connect_timer: None,
                        inner: Inner::Failed {
                            status: Some(status),
                        },
                        commit,
                        stream_deadline,
                        streaming,
                        idle,
                        tally,
                    };
                };
                // The layer above reports the final outcome (it sees the trailers); without
                // one, this channel classifies what it sees.
                let self_report = match &commit {
                    Some(info) => {
                        let (pool, slot) = (pool.clone(), slot.clone());
                        info.set_address(slot.addr.clone());
                        info.set_endpoint(
                            slot.id.clone(),
                            Box::new(move |outcome| pool.report(&slot, outcome)),
                        );
                        None
                    }
                    None => Some(pool.clone()),
                };
                slot.channel.prepare(req.headers_mut());
                let connect_timer = connect_timer(&slot.channel, &req);
                let fut = async move {
                    let result = slot.channel.channel().clone().oneshot(req).await;
                    if let Some(pool) = self_report {
                        pool.report(&slot, classify_http(result.as_ref().map_err(|e| e as _)));
                    }
                    result.map_err(BoxError::from)
                };
                ResponseFuture {
                    connect_timer,
                    inner: Inner::Discovered { fut: Box::pin(fut) },
                    commit,
                    stream_deadline,
                    streaming,
                    idle,
                    tally,
                }
            }
        }
    }
}

/// A timer for a request sent while `connection` has no connection open: tonic's channel
/// times the request's `grpc-timeout` only from when a connection takes it.
fn connect_timer(
    connection: &Connection,
    req: &http::Request<tonic::body::Body>,
) -> Option<Pin<Box<tokio::time::Sleep>>> {
    if connection.is_open() {
        return None;
    }
    let timeout = req.headers().get(crate::wire::GRPC_TIMEOUT_HEADER)?;
    let timeout = crate::wire::parse_grpc_timeout(timeout.as_bytes()).ok()?;
    Some(Box::pin(tokio::time::sleep(timeout)))
}

type DiscoveredFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>>;

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Fixed { #[pin] fut: tonic::transport::channel::ResponseFuture },
        Discovered { fut: DiscoveredFuture },
        Failed { status: Option<tonic::Status> },
    }
}

pin_project! {
    /// Response future of [`Channel`].
    pub struct ResponseFuture {
        #[pin]
        inner: Inner,
        // The request's own timer while it waits for a connection to be made.
        connect_timer: Option<Pin<Box<tokio::time::Sleep>>>,
        commit: Option<AttemptInfo>,
        stream_deadline: Option<tokio::time::Instant>,
        streaming: bool,
        idle: Option<std::time::Duration>,
        tally: Option<crate::outcome::StreamTally>,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.inner.project() {
            InnerProj::Fixed { fut } => fut.poll(cx).map_err(BoxError::from),
            InnerProj::Discovered { fut } => fut.as_mut().poll(cx),
            InnerProj::Failed { status } => Poll::Ready(Err(Box::new(
                status
                    .take()
                    .unwrap_or_else(|| tonic::Status::unavailable("no live instances")),
            ) as BoxError)),
        };
        let out = match polled {
            Poll::Ready(out) => out,
            // Still waiting: past its `grpc-timeout` it ends as the transport's own timer
            // would end it.
            Poll::Pending => {
                let expired = this
                    .connect_timer
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                Err(Box::new(tonic::TimeoutExpired(())) as BoxError)
            }
        };
        // Committed: a real gRPC response started (HTTP 200 without `grpc-status` in the
        // headers). A proxy's plain 503 or a trailers-only error is not committed.
        if let (Ok(response), Some(commit)) = (&out, this.commit.as_ref())
            && response.status() == http::StatusCode::OK
            && !response.headers().contains_key("grpc-status")
        {
            commit.commit();
        }
        if !*this.streaming {
            return Poll::Ready(out);
        }
        // A response stream: bounded by the call's deadline, and its end reported.
        let deadline = this.stream_deadline.take();
        let idle = *this.idle;
        let info = this.commit.clone();
        let tally = this.tally.take();
        Poll::Ready(out.map(|response| {
            // A trailers-only response (an empty stream, or a failure) has its status in
            // the headers, and a body that ends without trailers.
            let headers_status = response.headers().get("grpc-status").map(|v| {
                let code = tonic::Code::from_bytes(v.as_bytes());
                let outcome = crate::outcome::classify_status(response.headers())
                    .unwrap_or(crate::outcome::AttemptOutcome::Remote(code));
                (outcome, code)
            });
            response.map(|body| {
                let body = if deadline.is_some() || idle.is_some() {
                    let mut cut = crate::deadline::body::CutBody::new(body);
                    if let Some(at) = deadline {
                        cut = cut.deadline(
                            crate::deadline::body::Timer::at(at),
                            crate::deadline::body::Cut::Static(
                                tonic::Code::DeadlineExceeded,
                                "the call's deadline expired while the response was streaming",
                            ),
                        );
                    }
                    if let Some(idle) = idle {
                        cut = cut.idle(idle);
                    }
                    tonic::body::Body::new(cut)
                } else {
                    body
                };
                if info.is_none() && tally.is_none() {
                    return body;
                }
                tonic::body::Body::new(StreamEndBody {
                    inner: body,
                    info,
                    tally,
                    messages: MessageCounter::default(),
                    headers_status,
                })
            })
        }))
    }
}

pin_project! {
    /// A response stream that tells its attempt how it ended (the status in its trailers,
    /// or the error that cut it; see [`AttemptInfo::on_stream_end`]) and its call's
    /// [`StreamTally`](crate::outcome::StreamTally) how many messages it brought.
    struct StreamEndBody {
        #[pin]
        inner: tonic::body::Body,
        info: Option<AttemptInfo>,
        tally: Option<crate::outcome::StreamTally>,
        messages: MessageCounter,
        // The status of a trailers-only response, from its headers.
        headers_status: Option<(crate::outcome::AttemptOutcome, tonic::Code)>,
    }

    impl PinnedDrop for StreamEndBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped before its end: the caller went away.
            if let Some(tally) = this.tally.take() {
                tally.ended(tonic::Code::Cancelled, this.messages.count);
            }
        }
    }
}

/// Counts the gRPC messages in a response body: each is a 5-byte header (flag, 4-byte
/// big-endian length) and its payload, cut anywhere across data frames.
#[derive(Default)]
struct MessageCounter {
    header: [u8; 5],
    filled: usize,
    payload_left: usize,
    count: u64,
}

impl MessageCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.filled).min(data.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 5 {
                self.filled = 0;
                self.count += 1;
                let [_, a, b, c, d] = self.header;
                self.payload_left = u32::from_be_bytes([a, b, c, d]) as usize;
            }
        }
    }
}

impl http_body::Body for StreamEndBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if this.tally.is_some()
            && let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref()))
            && let Some(data) = data
        {
            this.messages.feed(data);
        }
        let ended = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| {
                crate::outcome::classify_status(t)
                    .unwrap_or(crate::outcome::AttemptOutcome::Success)
            }),
            Some(Err(status)) => Some(crate::outcome::classify(status, false)),
            // The end without trailers: a trailers-only response, else a broken one.
            None => Some(
                this.headers_status
                    .map_or(crate::outcome::AttemptOutcome::Transport, |(o, _)| o),
            ),
        };
        if let Some(outcome) = ended {
            if let Some(info) = this.info.take() {
                info.stream_ended(outcome);
            }
            if let Some(tally) = this.tally.take() {
                let code = match &frame {
                    Some(Err(status)) => status.code(),
                    Some(Ok(f)) => f
                        .trailers_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .map_or(tonic::Code::Unknown, |v| {
                            tonic::Code::from_bytes(v.as_bytes())
                        }),
                    None => this.headers_status.map_or(outcome.code(), |(_, c)| c),
                };
                tally.ended(code, this.messages.count);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::MessageCounter;

    #[test]
    fn messages_are_counted_across_any_cut_of_the_body() {
        let mut body = Vec::new();
        for len in [0u32, 3, 300, 1] {
            body.push(0);
            body.extend_from_slice(&len.to_be_bytes());
            body.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for chunk in [1, 2, 4, 5, 7, 64, body.len()] {
            let mut counter = MessageCounter::default();
            for piece in body.chunks(chunk) {
                counter.feed(piece);
            }
            assert_eq!(counter.count, 4, "chunks of {chunk}");
            assert_eq!((counter.filled, counter.payload_left), (0, 0));
        }
    }
}
