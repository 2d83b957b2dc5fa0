//! The client stack that `#[resilient_client]` generates code for: connection set-up,
//! per-method policies and the shared per-downstream state.

mod channel;
mod config;
mod stack;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

pub use self::channel::{Channel, ResponseFuture};
pub use self::config::{ClientConfig, WireOptions};

pub use self::stack::{ClientStack, stack};

use crate::Error;
use crate::breaker::{BreakerConfig, BreakerRegistry};
use crate::connection::Connection;
use crate::retry::{CallPolicy, RetryPolicy, RetryThrottle, ServiceConfig};

/// Per-downstream state shared by every client of one service in the process: all clients
/// of `user-svc` draw on one retry throttle.
///
/// The process-wide instance is [`Downstreams::global`]; [`Downstreams::new`] makes an
/// isolated one (tests use it so that they do not share buckets).
///
/// ```
/// use steadfast::client::Downstreams;
/// use steadfast::retry::RetryThrottle;
///
/// let d = Downstreams::new();
/// let a = d.throttle("user-svc", RetryThrottle::default);
/// let b = d.throttle("user-svc", || RetryThrottle::new(50, 1.0).unwrap());
/// assert!(std::sync::Arc::ptr_eq(&a, &b), "the first registration wins");
/// ```
#[derive(Clone, Debug)]
pub struct Downstreams {
    inner: Arc<Mutex<HashMap<String, Arc<RetryThrottle>>>>,
    breakers: BreakerRegistry,
    /// Connections shared by clients with `share_connections`: (address, settings) -> the
    /// connection, while some client holds it.
    connections: Arc<Mutex<HashMap<String, std::sync::Weak<Connection>>>>,
}

impl Default for Downstreams {
    fn default() -> Self {
        Downstreams::new()
    }
}

impl Downstreams {
    /// An empty, isolated set; its breakers report to the [`metrics`](crate::metrics).
    pub fn new() -> Self {
        Downstreams::with_breakers(BreakerRegistry::with_observer(
            crate::metrics::breaker_observer(),
        ))
    }

    /// An empty set whose breakers report to `metrics` (pair it with
    /// [`ClientConfig::metrics`] to keep a client's series out of the process-wide set).
    pub fn with_metrics(metrics: &crate::metrics::Metrics) -> Self {
        Downstreams::with_breakers(BreakerRegistry::with_observer(metrics.breaker_observer()))
    }

    /// An empty set whose breakers come from `breakers` (for example one with an observer
    /// of your own, or none).
    pub fn with_breakers(breakers: BreakerRegistry) -> Self {
        Downstreams {
            inner: Arc::default(),
            breakers,
            connections: Arc::default(),
        }
    }

    /// The process-wide set.
    pub fn global() -> Self {
        static GLOBAL: std::sync::OnceLock<Downstreams> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Downstreams::new).clone()
    }

    /// The shared connection for `key`, made with `make` when no client holds one.
    pub(crate) fn connection(
        &self,
        key: String,
        make: impl FnOnce() -> Connection,
    ) -> Arc<Connection> {
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = map.get(&key).and_then(std::sync::Weak::upgrade) {
            return shared;
        }
        let channel = Arc::new(make());
        map.insert(key, Arc::downgrade(&channel));
        // Forget connections nobody holds any more, now and then.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, c| c.strong_count() > 0);
        }
        channel
    }

    /// Makes `wanted` the throttle of `service`, unless the shared one already has its
    /// settings (then that one stays, with its tokens). For a new service config.
    pub(crate) fn replace_throttle(
        &self,
        service: &str,
        wanted: RetryThrottle,
    ) -> Arc<RetryThrottle> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(service) {
            Some(shared)
                if (shared.max_tokens(), shared.token_ratio())
                    == (wanted.max_tokens(), wanted.token_ratio()) =>
            {
                shared.clone()
            }
            _ => {
                let new = Arc::new(wanted.clone_config());
                map.insert(service.to_owned(), new.clone());
                new
            }
        }
    }

    /// The circuit breakers, one per service.
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.breakers
    }

    /// The throttle of `service`, created with `make` on first use. Called at client
    /// construction, never per call.
    pub fn throttle(
        &self,
        service: &str,
        make: impl FnOnce() -> RetryThrottle,
    ) -> Arc<RetryThrottle> {
        let wanted = make();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let shared = map
            .entry(service.to_owned())
            .or_insert_with(|| Arc::new(wanted.clone_config()))
            .clone();
        if (shared.max_tokens(), shared.token_ratio())
            != (wanted.max_tokens(), wanted.token_ratio())
        {
            tracing::warn!(
                service,
                max_tokens = wanted.max_tokens(),
                token_ratio = wanted.token_ratio(),
                shared_max_tokens = shared.max_tokens(),
                shared_token_ratio = shared.token_ratio(),
                "a client asked for another retry throttle than the one its service's clients \
                 share; using the shared one"
            );
        }
        shared
    }
}

/// The static description of a client, emitted by `#[resilient_client]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct ClientSpec {
    pub service: &'static str,
    pub grpc_service: Option<&'static str>,
    pub throttle: Option<(u32, u32)>,
    pub breaker: BreakerConfig,
    pub methods: &'static [MethodSpec],
}

/// The static description of one method, emitted by `#[resilient_client]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct MethodSpec {
    pub grpc_method: &'static str,
    /// The response is a stream (`Streaming<..>`): the deadline bounds all of it.
    pub streaming: bool,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub hedging: Option<crate::retry::HedgingPolicy>,
}

/// The runtime half of a generated client: the channel and one [`CallPolicy`] per method.
#[derive(Clone, Debug)]
pub struct ClientCore {
    inner: Arc<CoreInner>,
}

#[derive(Debug)]
struct CoreInner {
    spec: &'static ClientSpec,
    service: &'static str,
    channel: Channel,
    /// Replaced as a whole when the registry's service config changes; a call reads it
    /// once, when it starts.
    methods: RwLock<Arc<[Arc<CallPolicy>]>>,
    breaker: Arc<crate::breaker::CircuitBreaker>,
    wire: config::WireOptions,
    /// At most this long between two messages of a response stream.
    stream_idle: Option<Duration>,
    /// Bytes of a request stream kept for replay.
    replay_buffer: usize,
    config_status: watch::Sender<ConfigStatus>,
    /// The task following the registry's service config; ended with the client.
    follower: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for CoreInner {
    fn drop(&mut self) {
        if let Some(task) = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Where the service config in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The one given with [`ClientConfig::service_config`], or none: the registry stores
    /// none for this service (or the client does not follow it).
    Local,
    /// The one stored in the registry for this service.
    Registry,
}

/// Which service config a client has in force, and what became of the last one the
/// registry sent ([`ClientCore::config_status`]).
///
/// ```
/// use steadfast::client::{ConfigSource, ConfigStatus};
/// let s = ConfigStatus::default();
/// assert_eq!(s.source, ConfigSource::Local);
/// assert_eq!(s.updates, 0);
/// assert!(s.rejected.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigStatus {
    /// Where the config in force comes from.
    pub source: ConfigSource,
    /// How many values from the registry have been applied (a removal counts).
    pub updates: u64,
    /// Why the registry's latest value was refused, if it was: the config in force is then
    /// the last good one.
    pub rejected: Option<String>,
}

impl Default for ConfigStatus {
    fn default() -> Self {
        ConfigStatus {
            source: ConfigSource::Local,
            updates: 0,
            rejected: None,
        }
    }
}

/// What rebuilding the method policies needs, kept by the task that follows the
/// registry's service config.
struct Builder {
    spec: &'static ClientSpec,
    config: ClientConfig,
    enforces_grpc_timeout: bool,
    breaker: Arc<crate::breaker::CircuitBreaker>,
}

impl Builder {
    /// The method policies under `sc` (the registry's config, or else the local one). An
    /// update replaces the service's shared retry throttle when it asks for another one.
    fn methods(&self, sc: Option<&ServiceConfig>, update: bool) -> Arc<[Arc<CallPolicy>]> {
        let (spec, config) = (self.spec, &self.config);
        let sc = sc.or(config.service_config.as_ref());
        let wanted = || {
            sc.and_then(|sc| sc.throttle())
                .or_else(|| {
                    spec.throttle
                        .map(|(max, milli)| RetryThrottle::from_parts(max, milli))
                })
                .unwrap_or_default()
        };
        let throttle = if update {
            config.downstreams.replace_throttle(spec.service, wanted())
        } else {
            config.downstreams.throttle(spec.service, wanted)
        };
        let match_name = spec.grpc_service.unwrap_or(spec.service);
        spec.methods
            .iter()
            .map(|m| {
                let over = sc.and_then(|sc| sc.lookup(match_name, m.grpc_method));
                let timeout = over.and_then(|o| o.timeout).or(m.timeout);
                // A method marked `no_retry` is not idempotent: config cannot add retries,
                // nor hedging.
                let retry = m.retry.and(over.and_then(|o| o.retry).or(m.retry));
                // A config entry replaces the method's policy: its retry policy turns the
                // method's hedging off, its hedging policy replaces the method's retries.
                let hedging = match over {
                    Some(o) if o.retry.is_some() => None,
                    Some(o) if o.hedging.is_some() => o.hedging,
                    _ => m.hedging,
                };
                let hedging = m.retry.and(hedging);
                Arc::new(
                    CallPolicy::new(spec.service, m.grpc_method)
                        .grpc_service(spec.grpc_service)
                        .transport_timer(self.enforces_grpc_timeout)
                        .timeout(timeout)
                        .retry(retry)
                        .hedging(hedging)
                        .throttle(Some(throttle.clone()))
                        .breaker(Some(self.breaker.clone()))
                        .metrics(Some(Arc::new(match spec.grpc_service {
                            Some(grpc) => config.metrics.client_method(grpc, m.grpc_method),
                            None => config.metrics.client_method_unresolved(m.grpc_method),
                        }))),
                )
            })
            .collect()
    }
}

impl ClientCore {
    /// Connects per `config` and resolves the method policies of `spec`. A client that
    /// discovers its instances in a registry also follows the service config stored there
    /// (unless [`ClientConfig::service_config_from_registry`] turned that off).
    #[doc(hidden)]
    pub async fn connect(spec: &'static ClientSpec, config: ClientConfig) -> Result<Self, Error> {
        let channel = connect(spec.service, &config).await?;
        let follow = match &config.registry {
            Some(registry) if config.registry_config && config.transport.is_none() => {
                Some(registry.watch_config(spec.service).await?)
            }
            _ => None,
        };
        let (core, builder) = Self::with_channel(spec, config, channel);
        if let Some(mut rx) = follow {
            // Apply what the registry holds now, before the first call.
            let text = rx.borrow_and_update().clone();
            let mut current = None;
            if text.is_some() {
                current = apply(&core.inner, &builder, text.as_deref(), None);
            }
            let weak = Arc::downgrade(&core.inner);
            let task = tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let text = rx.borrow_and_update().clone();
                    let Some(inner) = weak.upgrade() else { return };
                    current = apply(&inner, &builder, text.as_deref(), current.take());
                }
            });
            *core
                .inner
                .follower
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        }
        Ok(core)
    }

    fn with_channel(
        spec: &'static ClientSpec,
        config: ClientConfig,
        channel: Channel,
    ) -> (Self, Builder) {
        let breaker = config
            .downstreams
            .breakers()
            .get_or_insert(spec.service, spec.breaker);
        let wire = config.wire.clone();
        let stream_idle = config.stream_idle;
        let replay_buffer = config.replay_buffer;
        let builder = Builder {
            spec,
            enforces_grpc_timeout: channel.enforces_grpc_timeout(),
            breaker: breaker.clone(),
            config,
        };
        let methods = builder.methods(None, false);
        let core = ClientCore {
            inner: Arc::new(CoreInner {
                spec,
                service: spec.service,
                channel,
                methods: RwLock::new(methods),
                breaker,
                wire,
                stream_idle,
                replay_buffer,
                config_status: watch::channel(ConfigStatus::default()).0,
                follower: Mutex::new(None),
            }),
        };
        (core, builder)
    }

    /// The downstream service name.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// The transport, for constructing the tonic client.
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// The circuit breaker shared by every client of this downstream service.
    pub fn breaker(&self) -> &Arc<crate::breaker::CircuitBreaker> {
        &self.inner.breaker
    }

    /// Compression and message size limits for the tonic client (generated code applies
    /// them when it builds the client).
    pub fn wire_options(&self) -> &WireOptions {
        &self.inner.wire
    }

    /// The resolved policy of each method, in declaration order, as in force now.
    pub fn policies(&self) -> Arc<[Arc<CallPolicy>]> {
        self.inner
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows which service config is in force, and what became of the registry's latest
    /// value. Changes when a value from the registry is applied or refused.
    ///
    /// ```
    /// # #[path = "../../tests/ui/pass/fake.rs"] mod pb;
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use steadfast::client::{ClientConfig, ConfigSource};
    /// use steadfast::registry::{Instance, MemoryRegistry, Registry};
    ///
    /// #[steadfast::resilient_client(service = "user-svc", client = pb::UserClient)]
    /// trait Users {
    ///     async fn get_user(&self, id: u64) -> Result<String, tonic::Status>;
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
    /// let registry = Arc::new(MemoryRegistry::new());
    /// registry.register(&Instance::new("user-svc", "u1", "http://127.0.0.1:50051")).await?;
    /// let users = UsersClient::connect(ClientConfig::discover(registry.clone())).await?;
    /// let mut status = users.core().config_status();
    ///
    /// // Operators change the policy of every client of user-svc, live.
    /// let config = r#"{"methodConfig": [{"name": [{}], "timeout": "0.5s"}]}"#;
    /// registry.put_config("user-svc", Some(config)).await?;
    /// status.wait_for(|s| s.source == ConfigSource::Registry).await.unwrap();
    /// assert_eq!(users.core().policies()[0].get_timeout(), Some(Duration::from_millis(500)));
    ///
    /// // A value that does not parse is refused; the last good config stays in force.
    /// registry.put_config("user-svc", Some("{\"methodConfig\": 7}")).await?;
    /// let why = status.wait_for(|s| s.rejected.is_some()).await.unwrap().rejected.clone();
    /// assert!(why.unwrap().contains("methodConfig"));
    /// assert_eq!(users.core().policies()[0].get_timeout(), Some(Duration::from_millis(500)));
    /// # Ok(()) }
    /// ```
    pub fn config_status(&self) -> watch::Receiver<ConfigStatus> {
        self.inner.config_status.subscribe()
    }
}

/// Applies the registry's service config `text` (`None`: there is none, so the local one
/// is in force). A value that does not parse is refused, with a warning, and the config
/// in force stays. Returns the registry config now in force.
fn apply(
    inner: &CoreInner,
    builder: &Builder,
    text: Option<&str>,
    current: Option<Arc<ServiceConfig>>,
) -> Option<Arc<ServiceConfig>> {
    let service = builder.spec.service;
    let parsed = match text {
        None => None,
        Some(t) => match ServiceConfig::from_json(t) {
            Ok(sc) => Some(Arc::new(sc)),
            Err(e) => {
                tracing::warn!(
                    service,
                    "refused the service config stored in the registry; keeping the one in force: {e}"
                );
                inner
                    .config_status
                    .send_modify(|s| s.rejected = Some(e.to_string()));
                return current;
            }
        },
    };
    let methods = builder.methods(parsed.as_deref(), true);
    *inner.methods.write().unwrap_or_else(|p| p.into_inner()) = methods;
    let od = parsed
        .as_deref()
        .and_then(ServiceConfig::outlier_detection)
        .copied()
        .unwrap_or(builder.config.outlier_detection);
    inner.channel.set_outlier_detection(od);
    let source = if parsed.is_some() {
        tracing::info!(service, "applied the service config stored in the registry");
        ConfigSource::Registry
    } else {
        tracing::info!(
            service,
            "the registry holds no service config any more; back to the local one"
        );
        ConfigSource::Local
    };
    inner.config_status.send_modify(|s| {
        s.source = source;
        s.updates += 1;
        s.rejected = None;
    });
    parsed
}

/// Runs one call of method `index` that sends a stream of requests (client or
/// bidirectional streaming) through its [`stack`]: the stream is read once, and what it
/// sent is replayed on a retry while it fits the replay buffer
/// ([`ClientConfig::replay_buffer`]). Called by generated code.
#[doc(hidden)]
pub fn streaming<S, M, R, F, Fut>(
    core: &ClientCore,
    index: usize,
    request: tonic::Request<S>,
    attempt: F,
) -> impl Future<Output = Result<R, Status>> + Send + 'static
where
    S: futures_util::Stream<Item = M> + Send + 'static,
    M: prost::Message + Clone + Send + 'static,
    R: Send + 'static,
    F: FnMut(tonic::Request<crate::retry::ReplayStream<M>>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
{
    let (metadata, mut extensions, source) = request.into_parts();
    let replay = crate::retry::ReplayStream::prost(source, core.inner.replay_buffer);
    extensions.insert(replay.commit());
    let tally = crate::outcome::StreamTally::new(core.inner.spec.methods[index].streaming);
    tally.count_sent(replay.read_counter());
    extensions.insert(tally);
    unary(
        core,
        index,
        tonic::Request::from_parts(metadata, extensions, replay),
        attempt,
    )
}

/// Runs one call of method `index` with one request message (unary or server streaming),
/// or with a stream of requests made replayable by [`streaming`], through its [`stack`].
/// Called by generated code.
#[doc(hidden)]
pub fn unary<M, R, F, Fut>(
    core: &ClientCore,
    index: usize,
    mut request: tonic::Request<M>,
    attempt: F,
) -> impl Future<Output = Result<R, Status>> + Send + 'static
where
    M: Clone + Send + 'static,
    R: Send + 'static,
    F: FnMut(tonic::Request<M>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
{
    // Read now, not at first poll: a spawned call keeps its caller's deadline and trace.
    if request.extensions().get::<crate::Context>().is_none() {
        request.extensions_mut().insert(crate::Context::current());
    }
    if core.inner.spec.methods[index].streaming {
        request
            .extensions_mut()
            .insert(crate::deadline::StreamingResponse {
                idle: core.inner.stream_idle,
            });
        if request
            .extensions()
            .get::<crate::outcome::StreamTally>()
            .is_none()
        {
            request
                .extensions_mut()
                .insert(crate::outcome::StreamTally::new(true));
        }
    }

    let request = match &core.inner.wire.interceptor {
        Some(interceptor) => intercept(interceptor, request),
        None => Ok(request),
    };
    // The caller's span, now: the call's span is its child even when the call is spawned.
    let policy = core.inner.methods.read().unwrap_or_else(|p| p.into_inner())[index].clone();
    let svc: stack::MethodStack<F> = stack::stack_for_call(
        &policy,
        tower::service_fn(attempt),
        tracing::Span::current(),
    );
    async move {
        tower::ServiceExt::oneshot(svc, request?)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Runs the interceptor on the request's metadata and extensions, as tonic's do.
fn intercept<M>(
    interceptor: &config::Interceptor,
    request: tonic::Request<M>,
) -> Result<tonic::Request<M>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    let (metadata, extensions, ()) =
        (interceptor.0)(tonic::Request::from_parts(metadata, extensions, ()))?.into_parts();
    Ok(tonic::Request::from_parts(metadata, extensions, message))
}

async fn connect(service: &str, config: &ClientConfig) -> Result<Channel, Error> {
    if let Some(transport) = &config.transport {
        return Ok(Channel::custom(transport.clone()));
    }
    if let Some(registry) = &config.registry {
        let pool = crate::discovery::Pool::start(service, registry, config.pool_config()).await?;
        return Ok(Channel::discovered(pool));
    }
    let endpoints = config
        .endpoint_uris()
        .iter()
        .map(|uri| config.tonic_endpoint(uri).map(|ep| (uri, ep)))
        .collect::<Result<Vec<_>, _>>()?;
    if config.is_eager() {
        for (uri, ep) in &endpoints {
            if let Err(e) = ep.connect().await {
                let reason = error_chain(&e);
                if is_temporary(&e) {
                    tracing::warn!(
                        service, endpoint = %uri,
                        "endpoint not reachable yet, connecting lazily: {reason}"
                    );
                } else {
                    return Err(Error::Connect {
                        service: service.to_owned(),
                        endpoint: uri.to_string(),
                        reason,
                    });
                }
            }
        }
    }
    // One fixed endpoint: its own connection, or the shared one.
    if let [(uri, _)] = endpoints.as_slice() {
        return Ok(Channel::shared(config.connection(uri)?));
    }
    // Several fixed endpoints: tonic balances over connections of its own.
    Ok(Channel::new(tonic::transport::Channel::balance_list(
        endpoints.into_iter().map(|(_, ep)| ep),
    )))
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Whether a connect error may go away by itself (the server is starting or overloaded).
fn is_temporary(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotConnected
            );
        }
        if e.to_string().contains("timed out") {
            return true;
        }
        cur = e.source();
    }
    false
}
