//! One HTTP/2 connection to an address, as clients and discovery pools hold it: a lazy tonic
//! channel whose connector counts the connections it made and those still open, so that
//! the first request on each new connection can let the names of steadfast's per-request
//! headers into the connection's HPACK table (see [`Connection::prepare`]), and a request
//! made while no connection is open can be given a timer of its own (see
//! [`Connection::is_open`]). Depends only on `wire`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tonic::transport::Endpoint;
use tower::ServiceExt;

/// A lazily connected tonic channel that knows when it connected again.
#[derive(Debug)]
pub(crate) struct Connection {
    channel: tonic::transport::Channel,
    /// Connections made so far, counted by the connector after each successful connect.
    made: Arc<AtomicU64>,
    /// The value of `made` for which a request already sent the header names indexed.
    named: AtomicU64,
    /// Connections open now (0 or 1; 2 for a moment while one replaces another).
    open: Arc<AtomicUsize>,
}

/// A connection's socket, counted among the open ones until it is dropped (when the HTTP/2
/// connection ends).
#[derive(Debug)]
struct Counted<T> {
    io: T,
    open: Arc<AtomicUsize>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl Connection {
    /// Connects to `endpoint` on first use, with the TCP settings tonic's own connector would
    /// use: `TCP_NODELAY` as given, and the name lookup and TCP connect together bounded by
    /// `connect_timeout` (tonic's bounds the TCP connect alone). `endpoint`'s TLS applies on
    /// top; give a TLS endpoint its own connect timeout too, so that it bounds the handshake
    /// (a peer that accepts the connection and never answers would hold it forever), and a
    /// plaintext one none: tonic enforces it by wrapping every read and write of the
    /// connection.
    pub(crate) fn lazy(endpoint: &Endpoint, nodelay: bool, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(nodelay);
        let made = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (count, opened) = (made.clone(), open.clone());
        let connector = tower::service_fn(move |uri: http::Uri| {
            let (http, count, opened) = (http.clone(), count.clone(), opened.clone());
            async move {
                let io = tokio::time::timeout(connect_timeout, http.oneshot(uri))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no connection within the connect timeout ({connect_timeout:?})"
                            ),
                        )
                    })??;
                opened.fetch_add(1, Ordering::Relaxed);
                count.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Counted { io, open: opened })
            }
        });
        Connection {
            channel: endpoint.connect_with_connector_lazy(connector),
            made,
            named: AtomicU64::new(0),
            open,
        }
    }

    /// Whether a connection is open now. A request sent while none is waits for one to be
    /// made, and tonic's channel starts the request's `grpc-timeout` timer only once it has
    /// one: until then the request has no timer but the one its sender gives it.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// A plaintext connection to `uri` with `TCP_NODELAY` and a 5 s connect timeout (for
    /// benchmarks and tests of the layers above, which do not care how it connects).
    pub(crate) fn plain(uri: &http::Uri) -> Self {
        Connection::lazy(&Endpoint::from(uri.clone()), true, Duration::from_secs(5))
    }

    /// The tonic channel.
    pub(crate) fn channel(&self) -> &tonic::transport::Channel {
        &self.channel
    }

    /// Connections made so far (0 before the first request connects).
    #[cfg(test)]
    pub(crate) fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Called for every request sent on this connection. steadfast sends `traceparent`,
    /// `x-trace-id` and `grpc-timeout` as never-indexed literals (their values are new on
    /// every request); the names repeat, though, and a literal whose name is not in the
    /// table spells the name out: Huffman-coded by the client, decoded into a new header
    /// name by the server, on every request. So the first request after each new
    /// connection sends them indexed once: their names enter the table, and every later
    /// request refers to each name by its index (the values stay literals).
    pub(crate) fn prepare(&self, headers: &mut http::HeaderMap) {
        let made = self.made.load(Ordering::Relaxed);
        if self.named.load(Ordering::Relaxed) < made
            && self.named.fetch_max(made, Ordering::Relaxed) < made
        {
            crate::wire::index_names(headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_the_connections_its_connector_makes() {
        use tonic::transport::server::TcpIncoming;
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let serve = |listener: tokio::net::TcpListener| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (_reporter, health) = tonic_health::server::health_reporter();
            let server = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                        let _ = stopped.await;
                    }),
            );
            (stop, server)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, server) = serve(listener);
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let conn = Connection::lazy(&endpoint, true, Duration::from_secs(1));
        let check = || async {
            HealthClient::new(conn.channel().clone())
                .check(HealthCheckRequest::default())
                .await
        };
        assert_eq!(conn.made(), 0, "lazy: nothing before the first request");
        for _ in 0..3 {
            check().await.unwrap();
        }
        assert_eq!(conn.made(), 1, "three calls, one connection");
        assert!(conn.is_open());

        // The server goes away (GOAWAY, connection closed) and comes back on the same port:
        // the channel connects again, and the count says so.
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        // The server closed the connection: the client's side of it ends too.
        tokio::time::timeout(Duration::from_secs(5), async {
            while conn.is_open() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the closed connection is no longer counted as open");
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (_stop, _server) = serve(listener);
        let mut answered = 0;
        for _ in 0..10 {
            if check().await.is_ok() {
                answered += 1;
                if answered == 2 {
                    break;
                }
            }
        }
        assert_eq!(answered, 2, "the channel did not connect again");
        assert_eq!(conn.made(), 2);
        assert!(conn.is_open());
    }

    #[test]
    fn names_are_indexed_once_per_connection() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let endpoint = Endpoint::from_static("http://127.0.0.1:1");
            let conn = Connection::lazy(&endpoint, true, Duration::from_secs(1));
            let request = || {
                let mut headers = http::HeaderMap::new();
                let mut v = http::HeaderValue::from_static("00-ab-cd-01");
                v.set_sensitive(true);
                headers.insert(crate::wire::TRACEPARENT, v);
                headers
            };
            let sensitive = |h: &http::HeaderMap| h[crate::wire::TRACEPARENT].is_sensitive();
            // Not connected yet: nothing to index into.
            let mut h = request();
            conn.prepare(&mut h);
            assert!(sensitive(&h));
            // A connection was made: the next request (only) sends the names indexed; and
            // once more after each new connection.
            for _ in 0..2 {
                conn.made.fetch_add(1, Ordering::Relaxed);
                let (mut first, mut second) = (request(), request());
                conn.prepare(&mut first);
                conn.prepare(&mut second);
                assert!(!sensitive(&first));
                assert!(sensitive(&second));
            }
        });
    }
}
