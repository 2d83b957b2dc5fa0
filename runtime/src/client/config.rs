use std::time::Duration;

use http::Uri;
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tonic::transport::Endpoint;

use super::Downstreams;
use crate::Error;
use crate::connection::Connection;
use crate::discovery::OutlierDetection;
use crate::retry::ServiceConfig;
use crate::tls::ClientTls;

/// How a client reaches its downstream: endpoints, connection options, TLS and policy
/// overrides.
///
/// Defaults: connect timeout 5 s, no HTTP/2 keepalive (gRPC's default, gRFC A8; turn it on
/// with [`ClientConfig::keepalive`]), `TCP_NODELAY`, lazy connect, the process-wide
/// [`Downstreams`].
///
/// ```
/// use std::time::Duration;
/// use steadfast::client::ClientConfig;
///
/// let config = ClientConfig::endpoints(["http://127.0.0.1:50051", "http://127.0.0.1:50052"])?
///     .connect_timeout(Duration::from_secs(2))?
///     .eager(true);
/// assert_eq!(config.endpoint_uris().len(), 2);
///
/// let err = ClientConfig::endpoints(["127.0.0.1:50051"]).unwrap_err();
/// assert!(err.to_string().contains("endpoints[0]"));
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    endpoints: Vec<Uri>,
    pub(crate) registry: Option<std::sync::Arc<dyn crate::registry::Registry>>,
    connect_timeout: Duration,
    /// HTTP/2 keepalive: PING interval and timeout, off by default.
    keepalive: Option<(Duration, Duration)>,
    tcp_nodelay: bool,
    eager: bool,
    tls: Option<ClientTls>,
    pub(crate) service_config: Option<ServiceConfig>,
    pub(crate) registry_config: bool,
    share_connections: bool,
    pub(crate) stream_idle: Option<Duration>,
    pub(crate) replay_buffer: usize,
    pub(crate) downstreams: Downstreams,
    pub(crate) outlier_detection: OutlierDetection,
    pub(crate) panic_threshold: u32,
    pub(crate) discovery_grace: Option<Duration>,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) transport: Option<super::channel::CustomTransport>,
    pub(crate) wire: WireOptions,
}

/// What the tonic client of a generated client is built with: compression and message size
/// limits (see [`ClientConfig::send_compressed`] and the methods after it).
#[derive(Clone, Debug, Default)]
pub struct WireOptions {
    /// Compress requests with this encoding.
    pub send_compressed: Option<CompressionEncoding>,
    /// Encodings of replies the client accepts.
    pub accept_compressed: Vec<CompressionEncoding>,
    /// The largest reply message decoded (tonic's default, 4 MiB, when `None`).
    pub max_decoding_message_size: Option<usize>,
    /// The largest request message encoded (unlimited when `None`).
    pub max_encoding_message_size: Option<usize>,
    /// Runs on every call before it enters the stack.
    pub(crate) interceptor: Option<Interceptor>,
}

/// A function that sees (and may change or refuse) every call's metadata and extensions
/// before the call enters the client stack. See [`ClientConfig::interceptor`].
#[derive(Clone)]
pub(crate) struct Interceptor(pub(crate) std::sync::Arc<InterceptorFn>);

type InterceptorFn = dyn Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Send + Sync;

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interceptor")
    }
}

impl ClientConfig {
    /// Static endpoints (`http://host:port` or `https://host:port`). Calls are balanced over
    /// them.
    pub fn endpoints<I, S>(endpoints: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| parse_endpoint(i, e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::config(
                "endpoints",
                "is empty; give at least one endpoint",
            ));
        }
        Ok(ClientConfig::with_target(endpoints, None))
    }

    /// The documented defaults, for either kind of target.
    fn with_target(
        endpoints: Vec<Uri>,
        registry: Option<std::sync::Arc<dyn crate::registry::Registry>>,
    ) -> Self {
        ClientConfig {
            endpoints,
            registry,
            connect_timeout: Duration::from_secs(5),
            keepalive: None,
            tcp_nodelay: true,
            eager: false,
            tls: None,
            service_config: None,
            registry_config: true,
            share_connections: false,
            stream_idle: None,
            replay_buffer: crate::retry::DEFAULT_BUFFER_LIMIT,
            downstreams: Downstreams::global(),
            outlier_detection: OutlierDetection::default(),
            panic_threshold: 50,
            discovery_grace: None,
            metrics: crate::metrics::Metrics::global(),
            transport: None,
            wire: WireOptions::default(),
        }
    }

    /// Sends every call through `transport`: your own `tonic::transport::Channel` (built
    /// from an `Endpoint` of yours), a channel wrapped in tower layers of your own, or any
    /// other `tower::Service` of HTTP/2 requests. The whole steadfast stack (deadline,
    /// retries, breaker, trace propagation, metrics) runs above it; connection settings of
    /// this config (TLS, timeouts, keepalive) do not apply, since you made the connection.
    ///
    /// ```
    /// use steadfast::client::ClientConfig;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051")
    ///     .user_agent("billing/1.2")?
    ///     .connect_lazy();
    /// let config = ClientConfig::transport(channel);
    /// assert!(config.endpoint_uris().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn transport<S>(transport: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Future: Send + 'static,
    {
        let mut config = ClientConfig::with_target(Vec::new(), None);
        config.transport = Some(super::channel::CustomTransport::new(transport));
        config
    }

    /// Runs `interceptor` on every call before it enters the client stack, with the call's
    /// metadata and extensions (as tonic's interceptors see them): add an `authorization`
    /// header, a tenant id, or refuse the call. It runs once per call, so every attempt of
    /// the call carries what it set. A refusal (`Err(status)`) ends the call with that
    /// status at once: nothing is sent, and neither the breaker nor outlier detection counts
    /// it. Per-call metadata can also be given directly: methods declared with a
    /// `tonic::Request<M>` argument send the request's metadata.
    ///
    /// ```
    /// use steadfast::client::ClientConfig;
    ///
    /// let token: tonic::metadata::MetadataValue<_> = "Bearer s3cr3t".parse().unwrap();
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?.interceptor(move |mut req| {
    ///     req.metadata_mut().insert("authorization", token.clone());
    ///     Ok(req)
    /// });
    /// # let _ = config;
    /// # Ok::<(), steadfast::Error>(())
    /// ```
    pub fn interceptor<F>(mut self, interceptor: F) -> Self
    where
        F: Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Send + Sync + 'static,
    {
        self.wire.interceptor = Some(Interceptor(std::sync::Arc::new(interceptor)));
        self
    }

    /// Compresses every request with `encoding` (the server must accept it, or it answers
    /// `UNIMPLEMENTED`). Needs steadfast's `gzip`, `deflate` or `zstd` feature.
    ///
    /// ```
    /// # #[cfg(feature = "gzip")] {
    /// use steadfast::client::ClientConfig;
    /// use tonic::codec::CompressionEncoding;
    ///
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .send_compressed(CompressionEncoding::Gzip)
    ///     .accept_compressed(CompressionEncoding::Gzip);
    /// assert_eq!(config.wire_options().send_compressed, Some(CompressionEncoding::Gzip));
    /// # }
    /// # Ok::<(), steadfast::Error>(())
    /// ```
    pub fn send_compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.wire.send_compressed = Some(encoding);
        self
    }

    /// Accepts replies compressed with `encoding` (may be given several times).
    pub fn accept_compressed(mut self, encoding: CompressionEncoding) -> Self {
        if !self.wire.accept_compressed.contains(&encoding) {
            self.wire.accept_compressed.push(encoding);
        }
        self
    }

    /// The largest reply message the client decodes, in bytes (default 4 MiB, as tonic);
    /// a larger one fails the call with `OUT_OF_RANGE`. Must be > 0.
    ///
    /// ```
    /// use steadfast::client::ClientConfig;
    ///
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .max_decoding_message_size(16 * 1024 * 1024)?;
    /// let err = ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .max_decoding_message_size(0)
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("max_decoding_message_size is 0"));
    /// # let _ = config;
    /// # Ok::<(), steadfast::Error>(())
    /// ```
    pub fn max_decoding_message_size(mut self, limit: usize) -> Result<Self, Error> {
        self.wire.max_decoding_message_size = Some(positive("max_decoding_message_size", limit)?);
        Ok(self)
    }

    /// The largest request message the client encodes, in bytes (default: no limit); a
    /// larger one fails the call with `OUT_OF_RANGE` before it is sent. Must be > 0.
    pub fn max_encoding_message_size(mut self, limit: usize) -> Result<Self, Error> {
        self.wire.max_encoding_message_size = Some(positive("max_encoding_message_size", limit)?);
        Ok(self)
    }

    /// Compression, message size limits and the interceptor of this config.
    pub fn wire_options(&self) -> &WireOptions {
        &self.wire
    }

    /// Discovers the service's endpoints in `registry` and follows them as instances come and
    /// go. Calls are balanced round-robin over instances in good standing; a retry goes to
    /// another instance than the one that just failed; [`OutlierDetection`] ejects failing
    /// instances (a refused connection at once); below the
    /// [`panic_threshold`](Self::panic_threshold) calls spread over every instance.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
    /// let registry = steadfast::registry::from_url("memory://").await?;
    /// let config = steadfast::client::ClientConfig::discover(registry);
    /// # let _ = config; Ok(()) }
    /// ```
    pub fn discover(registry: std::sync::Arc<dyn crate::registry::Registry>) -> Self {
        ClientConfig::with_target(Vec::new(), Some(registry))
    }

    /// Sets outlier detection for discovered endpoints (see [`OutlierDetection`] for the
    /// rules and defaults). The configuration is checked here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast::client::ClientConfig;
    /// use steadfast::discovery::OutlierDetection;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
    /// let registry = steadfast::registry::from_url("memory://").await?;
    /// let od = OutlierDetection { base_ejection_time: Duration::from_secs(5), ..Default::default() };
    /// let config = ClientConfig::discover(registry.clone()).outlier_detection(od)?;
    /// let bad = OutlierDetection { max_ejection_percent: 101, ..Default::default() };
    /// let err = ClientConfig::discover(registry).outlier_detection(bad).unwrap_err();
    /// assert!(err.to_string().contains("max_ejection_percent is 101"));
    /// # let _ = config; Ok(()) }
    /// ```
    pub fn outlier_detection(mut self, od: OutlierDetection) -> Result<Self, Error> {
        od.validate()?;
        self.outlier_detection = od;
        Ok(self)
    }

    /// Envoy's healthy panic threshold, in percent (default 50; 0 turns panic mode off):
    /// when fewer endpoints than this share are in good standing, calls are balanced over
    /// all endpoints, ejected or not.
    pub fn panic_threshold(mut self, percent: u32) -> Result<Self, Error> {
        if percent > 100 {
            return Err(Error::config(
                "panic_threshold",
                format!(
                    "panic_threshold is {percent}, but it is a percentage: write a value in 0..=100"
                ),
            ));
        }
        self.panic_threshold = percent;
        Ok(self)
    }

    /// How long discovery keeps calling an instance the registry stops listing without its
    /// having drained (default twice the registry's lease TTL, e.g. 20 s with etcd's
    /// default; zero with a registry that reports no TTL, such as `memory://` and
    /// `static://`). A lease can be lost while its instance still answers: etcd expires
    /// every lease at once when it resumes after a freeze, and the services put their keys
    /// back tens of milliseconds later; a process may lose etcd but not its clients. Such an
    /// instance stays in the pool while its connection works; it goes at its first
    /// connection failure, at the end of the grace period, or when the registry lists its
    /// id at another address. A graceful deregistration marks the instance
    /// [`draining`](crate::registry::Instance::draining) first, and it leaves at once.
    /// `Duration::ZERO` applies every removal at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
    /// use std::time::Duration;
    /// use steadfast::client::ClientConfig;
    /// let registry = steadfast::registry::from_url("memory://").await?;
    /// let config = ClientConfig::discover(registry).discovery_grace(Duration::from_secs(5));
    /// # let _ = config; Ok(()) }
    /// ```
    pub fn discovery_grace(mut self, grace: Duration) -> Self {
        self.discovery_grace = Some(grace);
        self
    }

    /// The time allowed to establish one connection: the name lookup and the TCP connect, and
    /// for `https` endpoints the TLS handshake too (default 5 s; must be > 0). A connection
    /// not made in time fails its requests as never sent (`UNAVAILABLE`, retried elsewhere
    /// at once).
    pub fn connect_timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        if timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        self.connect_timeout = timeout;
        Ok(self)
    }

    /// HTTP/2 keepalive: a PING after `interval` without a frame from the server (also while
    /// no call is in flight), the connection dropped when no answer comes within `timeout`.
    /// Both must be > 0.
    ///
    /// Off by default, as in grpc-go and grpc-java (gRFC A8): a call is bounded by its
    /// deadline, a failed endpoint is ejected by outlier detection, and a peer that closes
    /// or resets the connection is seen at once. Keepalive adds what those miss: a
    /// connection whose peer vanished without a trace (a host powered off, a silent network
    /// drop) is closed and made again, even while idle. It costs a clock read and a lock per
    /// received frame. Mind the server's ping policy: a server closes connections that ping
    /// more often than it allows (grpc-go servers allow one ping per 5 minutes by default, and
    /// answer more with GOAWAY `too_many_pings`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast::client::ClientConfig;
    ///
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .keepalive(Duration::from_secs(30), Duration::from_secs(20))?;
    /// let err = ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .keepalive(Duration::ZERO, Duration::from_secs(20))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("keepalive_interval"));
    /// # Ok::<(), steadfast::Error>(())
    /// ```
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Result<Self, Error> {
        if interval.is_zero() {
            return Err(Error::config(
                "keepalive_interval",
                "must be greater than zero",
            ));
        }
        if timeout.is_zero() {
            return Err(Error::config(
                "keepalive_timeout",
                "must be greater than zero",
            ));
        }
        self.keepalive = Some((interval, timeout));
        Ok(self)
    }

    /// Sets `TCP_NODELAY` (default on).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Connect at construction (`true`) or on first use (`false`, the default).
    ///
    /// An eager client fails to construct on errors that waiting will not fix: a bad
    /// address, a failed TLS handshake. A refused or timed-out connection is taken as
    /// temporary (the server may be starting): it is logged and the client connects lazily.
    pub fn eager(mut self, eager: bool) -> Self {
        self.eager = eager;
        self
    }

    /// Connects over TLS. Endpoints should use `https://`.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Overrides per-method timeouts and retry policies, and the retry throttle, from gRPC
    /// service config. Entries are matched on the client's `grpc_service` name (or on its
    /// steadfast service name when the client has none) and the method's gRPC name.
    ///
    /// Its `loadBalancingConfig` outlier detection, if any, replaces the client's.
    pub fn service_config(mut self, config: ServiceConfig) -> Self {
        if let Some(od) = config.outlier_detection() {
            self.outlier_detection = *od;
        }
        self.service_config = Some(config);
        self
    }

    /// Whether a client that discovers its instances in a registry also follows the gRPC
    /// service config stored there for its service (default `true`), as a gRPC client
    /// follows the service config its resolver returns.
    ///
    /// The registry's config, while there is one, takes the place of the one given with
    /// [`ClientConfig::service_config`] (which is then only the default), and is applied
    /// live: calls that start after an update run under the new policies. A value that
    /// does not parse is refused with a warning and the config in force stays;
    /// [`ClientCore::config_status`](super::ClientCore::config_status) says which is in
    /// force. Removing the value brings back the local config.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
    /// use steadfast::client::ClientConfig;
    /// let registry = steadfast::registry::from_url("memory://").await?;
    /// let config = ClientConfig::discover(registry).service_config_from_registry(false);
    /// # let _ = config; Ok(()) }
    /// ```
    pub fn service_config_from_registry(mut self, follow: bool) -> Self {
        self.registry_config = follow;
        self
    }

    /// Shares HTTP/2 connections (default off): clients of any service that use the same
    /// [`Downstreams`] (the process-wide one by default) and the same connection settings
    /// (timeouts, keepalive, `TCP_NODELAY`, TLS CA) reach one address over one connection,
    /// instead of one each. Ten thousand services served by one address then cost one
    /// connection, not ten thousand. A connection closes when the last client using it is
    /// gone. The calls of all those clients then share that connection's HTTP/2 stream
    /// limit. Applies to discovered instances and to a single fixed endpoint.
    ///
    /// ```
    /// use steadfast::client::ClientConfig;
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?.share_connections(true);
    /// # let _ = config; Ok::<(), steadfast::Error>(())
    /// ```
    pub fn share_connections(mut self, share: bool) -> Self {
        self.share_connections = share;
        self
    }

    /// Ends a response stream (a method returning `Streaming<..>`) that brings no message
    /// for `idle`, with UNAVAILABLE, so that a watch-style caller resumes it instead of
    /// waiting on a stuck server or a dead network path. Off by default; the method's
    /// timeout still bounds the whole stream (give long-lived streams a long one). Must be
    /// > 0.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast::client::ClientConfig;
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .stream_idle_timeout(Duration::from_secs(30))?;
    /// assert!(ClientConfig::endpoints(["http://127.0.0.1:50051"])?
    ///     .stream_idle_timeout(Duration::ZERO)
    ///     .unwrap_err()
    ///     .to_string()
    ///     .contains("stream_idle_timeout"));
    /// # let _ = config; Ok::<(), steadfast::Error>(())
    /// ```
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Result<Self, Error> {
        if idle.is_zero() {
            return Err(Error::config(
                "stream_idle_timeout",
                "is 0; give how long a stream may go without a message, e.g. 30s",
            ));
        }
        self.stream_idle = Some(idle);
        Ok(self)
    }

    /// How many bytes of a request stream (client and bidirectional streaming) a call keeps
    /// to send again on a retry: 256 KiB by default ([`DEFAULT_BUFFER_LIMIT`], as grpc-go's
    /// per-RPC retry buffer). Each message counts as its encoded length plus its 5-byte
    /// frame header. A stream that outgrows it commits its call: the call goes on, but a
    /// failure is returned instead of retried. With 0, a call is committed once its first
    /// message is read (a failure before that, for example a refused connection, is still
    /// retried).
    ///
    /// [`DEFAULT_BUFFER_LIMIT`]: crate::retry::DEFAULT_BUFFER_LIMIT
    ///
    /// ```
    /// use steadfast::client::ClientConfig;
    /// let config = ClientConfig::endpoints(["http://127.0.0.1:50051"])?.replay_buffer(1 << 20);
    /// # let _ = config; Ok::<(), steadfast::Error>(())
    /// ```
    pub fn replay_buffer(mut self, bytes: usize) -> Self {
        self.replay_buffer = bytes;
        self
    }

    /// Uses `downstreams` for per-service shared state (retry throttles) instead of the
    /// process-wide one. Tests use this for isolation.
    pub fn downstreams(mut self, downstreams: Downstreams) -> Self {
        self.downstreams = downstreams;
        self
    }

    /// Counts this client's calls and retries in `metrics` instead of the process-wide
    /// [`Metrics::global`](crate::metrics::Metrics::global) (for example a set registered in
    /// the application's own registry with
    /// [`Metrics::register_into`](crate::metrics::Metrics::register_into)).
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The endpoints.
    pub fn endpoint_uris(&self) -> &[Uri] {
        &self.endpoints
    }

    pub(crate) fn tonic_endpoint(&self, uri: &Uri) -> Result<Endpoint, Error> {
        Ok(self
            .endpoint_settings(uri)?
            .connect_timeout(self.connect_timeout))
    }

    /// The endpoint without its connect timeout: a [`Connection`]'s connector bounds the name
    /// lookup and TCP connect itself (an endpoint's timeout would wrap every read and write of
    /// the connection in another layer).
    fn endpoint_settings(&self, uri: &Uri) -> Result<Endpoint, Error> {
        let mut ep = Endpoint::from(uri.clone()).tcp_nodelay(self.tcp_nodelay);
        if let Some((interval, timeout)) = self.keepalive {
            ep = ep
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.config())
                .map_err(|e| Error::Tls(format!("endpoint {uri}: {e}")))?;
        }
        Ok(ep)
    }

    /// What a discovery pool needs from this config.
    pub(crate) fn pool_config(&self) -> crate::discovery::PoolConfig {
        let me = self.clone();
        crate::discovery::PoolConfig {
            connect: std::sync::Arc::new(move |uri| me.connection(uri)),
            outlier_detection: self.outlier_detection,
            panic_threshold: self.panic_threshold,
            grace: self.discovery_grace,
        }
    }

    /// A lazy connection to `uri`: shared with every other client of the same
    /// [`Downstreams`] with the same settings when [`ClientConfig::share_connections`] is on.
    pub(crate) fn connection(&self, uri: &Uri) -> Result<std::sync::Arc<Connection>, Error> {
        // With TLS, the endpoint's own timeout bounds the handshake too (see `Connection`).
        let endpoint = if self.tls.is_some() {
            self.tonic_endpoint(uri)?
        } else {
            self.endpoint_settings(uri)?
        };
        let make = || Connection::lazy(&endpoint, self.tcp_nodelay, self.connect_timeout);
        if !self.share_connections {
            return Ok(std::sync::Arc::new(make()));
        }
        let key = format!(
            "{uri} connect={:?} keepalive={:?} nodelay={} tls={:?}",
            self.connect_timeout,
            self.keepalive,
            self.tcp_nodelay,
            self.tls.as_ref().map(ClientTls::ca_path),
        );
        Ok(self.downstreams.connection(key, make))
    }

    pub(crate) fn is_eager(&self) -> bool {
        self.eager
    }
}

fn positive(field: &'static str, limit: usize) -> Result<usize, Error> {
    if limit == 0 {
        return Err(Error::config(
            field,
            format!(
                "{field} is 0, but no message would fit; write a size in bytes, for example 4194304 (4 MiB)"
            ),
        ));
    }
    Ok(limit)
}

fn parse_endpoint(i: usize, text: &str) -> Result<Uri, Error> {
    let bad = |why: String| Error::Config {
        field: "endpoints",
        reason: format!("endpoints[{i}] = `{text}`: {why}"),
    };
    let uri: Uri = text.parse().map_err(|e| bad(format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(bad(
                "write it as http://host:port or https://host:port".into()
            ));
        }
    }
    if uri.authority().is_none() {
        return Err(bad("has no host:port".into()));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_is_off_unless_asked_for_and_splits_shared_connections() {
        let downstreams = Downstreams::new();
        let plain = ClientConfig::endpoints(["http://127.0.0.1:1"])
            .unwrap()
            .share_connections(true)
            .downstreams(downstreams.clone());
        assert_eq!(plain.keepalive, None);
        let pinging = plain
            .clone()
            .keepalive(Duration::from_secs(30), Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            pinging.keepalive,
            Some((Duration::from_secs(30), Duration::from_secs(20)))
        );
        let uri = &plain.endpoint_uris()[0];
        let shared = plain.connection(uri).unwrap();
        assert!(std::sync::Arc::ptr_eq(
            &shared,
            &plain.clone().connection(uri).unwrap()
        ));
        // A connection that pings is not shared with one that does not.
        assert!(!std::sync::Arc::ptr_eq(
            &shared,
            &pinging.connection(uri).unwrap()
        ));
    }
}
