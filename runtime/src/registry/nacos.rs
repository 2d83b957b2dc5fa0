//! The Nacos backend (feature `nacos`), on the official `nacos-sdk` client: ephemeral
//! instances held by the client's gRPC connection (Nacos's equivalent of an etcd lease), and
//! subscriptions for live changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio::time::Instant;

use super::linger::{Lingering, publish, publish_changes};
use super::{Instance, InstanceSet, Instances, RegistrationStatus, Registry};
use crate::Error;

/// Metadata keys under which steadfast keeps the [`Instance`] fields Nacos has no field
/// for. Other metadata entries are the instance's own `metadata`.
pub mod keys {
    /// The instance id (default when absent: `ip:port`).
    pub const ID: &str = "steadfast.id";
    /// `http` or `https` (default `http`).
    pub const SCHEME: &str = "steadfast.scheme";
    /// The software version (falls back to a plain `version` entry, as Java services write it).
    pub const VERSION: &str = "steadfast.version";
    /// The zone (falls back to a plain `zone` entry).
    pub const ZONE: &str = "steadfast.zone";
    /// When it registered (RFC 3339).
    pub const REGISTERED_AT: &str = "steadfast.registered_at";
    /// `true` between a graceful deregistration's announcement and the instance's removal.
    pub const DRAINING: &str = "steadfast.draining";
}

/// Whether this build speaks TLS to Nacos: `nacos-sdk` decides it for a whole build, with
/// its feature `tls` (steadfast's `nacos-tls`).
const TLS_BUILD: bool = cfg!(feature = "nacos-tls");

/// The variable `nacos-sdk` reads its CA from (PEM), when connecting over TLS.
pub const TLS_CA_VAR: &str = "NACOS_CLIENT_TLS_CA_CERT";

/// Checks the CA file that [`TLS_CA_VAR`] names: `nacos-sdk` trusts no other root and panics
/// on a file it cannot read or parse, so a missing or bad one is refused here, as a
/// configuration error.
fn check_tls_ca() -> Result<(), Error> {
    check_ca(std::env::var_os(TLS_CA_VAR))
}

fn check_ca(path: Option<std::ffi::OsString>) -> Result<(), Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(path) = path else {
        return Err(Error::config(
            TLS_CA_VAR,
            "is not set; TLS to Nacos needs it to name the PEM file of the CA that signed \
             the servers' certificates (nacos-sdk trusts no other root)",
        ));
    };
    let shown = path.to_string_lossy().into_owned();
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        Error::config(
            TLS_CA_VAR,
            format!("names `{shown}`, which cannot be read: {e}"),
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(Error::config(
            TLS_CA_VAR,
            format!("names `{shown}`, which holds no PEM certificate"),
        )),
        Err(e) => Err(Error::config(
            TLS_CA_VAR,
            format!("names `{shown}`, whose PEM does not parse: {e}"),
        )),
    }
}

/// How long discovery keeps an instance that vanished without draining (half of the grace
/// period): about the time Nacos takes to notice a silently dead client (20 s).
const SESSION_TTL: Duration = Duration::from_secs(15);

/// How to reach Nacos, and where in it services live.
///
/// From `nacos://host:8848[,host2:8848]?namespace=..&group=..&cluster=..&username=..&password=..&grpc_port=..&tls=..`:
/// `namespace` is the namespace id (default: `public`), `group` the service group (default
/// `DEFAULT_GROUP`), `cluster` the cluster this process registers in (default `DEFAULT`) and
/// the only one it discovers when given; `grpc_port` the server's gRPC port when it is not
/// the HTTP port + 1000. Values are percent-decoded.
///
/// # TLS
/// `nacos-sdk` speaks TLS to Nacos for a whole build or not at all, so TLS is a cargo
/// feature, `nacos-tls` (it implies `nacos`): a build with it reaches every Nacos server over
/// TLS (gRPC and the HTTP login), and `tls` defaults to on; a build without it refuses
/// `tls=1`, and one with it refuses `tls=0`, each with an error that says so. The gRPC
/// connection checks the server's certificate against the CA in the PEM file that the
/// variable `NACOS_CLIENT_TLS_CA_CERT` ([`TLS_CA_VAR`]) names, and against no other root, so
/// the variable is required; the HTTP login (with `username`) checks it against the system's
/// OpenSSL store, which `SSL_CERT_FILE` replaces. A missing variable, or a file that cannot
/// be read or holds no certificate, is refused when the URL is parsed (`nacos-sdk` would
/// panic on it).
///
/// ```
/// use steadfast::registry::NacosConfig;
/// let c = NacosConfig::parse("127.0.0.1:8848?namespace=prod&group=payments&username=app&password=a%26b")?;
/// assert_eq!(c.servers(), ["127.0.0.1:8848"]);
/// assert_eq!(c.group(), "payments");
/// assert!(!format!("{c:?}").contains("a&b"), "Debug never shows the password");
/// let err = NacosConfig::parse("127.0.0.1:8848?tls=maybe").unwrap_err().to_string();
/// assert!(err.contains("registry.nacos.tls"), "{err}");
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone)]
pub struct NacosConfig {
    servers: Vec<String>,
    namespace: String,
    group: String,
    cluster: Option<String>,
    user: Option<(String, String)>,
    grpc_port: Option<u16>,
    tls: bool,
    connect_timeout: Duration,
}

impl std::fmt::Debug for NacosConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosConfig")
            .field("servers", &self.servers)
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .field("user", &self.user.as_ref().map(|u| &u.0)) // never the password
            .field("grpc_port", &self.grpc_port)
            .field("tls", &self.tls)
            .finish()
    }
}

impl NacosConfig {
    /// Parses the part of a `nacos://` URL after the scheme.
    pub fn parse(rest: &str) -> Result<Self, Error> {
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let servers: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            return Err(Error::config(
                "registry.nacos.servers",
                "give at least one host:port, as in nacos://127.0.0.1:8848",
            ));
        }
        for s in &servers {
            let port = s.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
            match port {
                Some(p) if p <= u16::MAX - 1000 => {}
                _ => {
                    return Err(Error::config(
                        "registry.nacos.servers",
                        format!("`{s}` is not host:port with a port up to 64535"),
                    ));
                }
            }
        }
        let mut c = NacosConfig {
            servers,
            namespace: String::new(),
            group: "DEFAULT_GROUP".into(),
            cluster: None,
            user: None,
            grpc_port: None,
            tls: TLS_BUILD,
            connect_timeout: Duration::from_secs(3),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = super::percent_decode(v).map_err(|why| {
                Error::config(
                    "registry",
                    format!("nacos option `{k}`: {why}; write `%` as %25 and `&` as %26"),
                )
            })?;
            let nonempty = |field: &'static str| {
                if v.is_empty() {
                    Err(Error::config(
                        field,
                        "is empty; leave the option out for the default",
                    ))
                } else {
                    Ok(v.clone())
                }
            };
            match k {
                "namespace" => c.namespace = v.clone(),
                "group" => c.group = nonempty("registry.nacos.group")?,
                "cluster" => c.cluster = Some(nonempty("registry.nacos.cluster")?),
                "username" | "user" => {
                    c.user = Some((v.clone(), c.user.map(|u| u.1).unwrap_or_default()))
                }
                "password" => c.user = Some((c.user.map(|u| u.0).unwrap_or_default(), v)),
                "grpc_port" => {
                    c.grpc_port = Some(v.parse().map_err(|_| {
                        Error::config(
                            "registry.nacos.grpc_port",
                            format!("`{v}` is not a port number"),
                        )
                    })?)
                }
                "tls" => {
                    c.tls = match v.as_str() {
                        "1" | "true" | "yes" | "on" => true,
                        "0" | "false" | "no" | "off" => false,
                        _ => {
                            return Err(Error::config(
                                "registry.nacos.tls",
                                format!("`{v}` is not a switch; write tls=1 or tls=0"),
                            ));
                        }
                    }
                }
                other => {
                    return Err(Error::config(
                        "registry",
                        format!(
                            "unknown nacos option `{other}`; use namespace, group, cluster, \
                             username, password, grpc_port, tls"
                        ),
                    ));
                }
            }
        }
        match (c.tls, TLS_BUILD) {
            (true, false) => {
                return Err(Error::config(
                    "registry.nacos.tls",
                    "is on, but this build has no TLS to Nacos: enable steadfast's feature \
                     `nacos-tls` (nacos-sdk turns TLS on for a whole build)",
                ));
            }
            (false, true) => {
                return Err(Error::config(
                    "registry.nacos.tls",
                    "is off, but this build speaks TLS to every Nacos server (steadfast's \
                     feature `nacos-tls`: nacos-sdk turns TLS on for a whole build); build \
                     without it to reach Nacos in plain text",
                ));
            }
            (true, true) => check_tls_ca()?,
            (false, false) => {}
        }
        if let Some((user, password)) = &c.user
            && (user.is_empty() || password.is_empty())
        {
            return Err(Error::config(
                "registry.nacos.username",
                "username and password go together; give both or neither",
            ));
        }
        Ok(c)
    }

    /// The servers, `host:port` (HTTP ports).
    pub fn servers(&self) -> &[String] {
        &self.servers
    }
    /// The namespace id (empty: `public`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The service group.
    pub fn group(&self) -> &str {
        &self.group
    }
    /// The cluster, if one was given.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    fn props(&self) -> ClientProps {
        let mut props = ClientProps::new()
            .server_addr(self.servers.join(","))
            .namespace(self.namespace.clone())
            .app_name("steadfast")
            // Ours, not the environment's: a stray NACOS_CLIENT_* or .env changes nothing.
            .env_first(false)
            // Deliver "every instance is gone": discovery decides what to do with it.
            .naming_push_empty_protection(false);
        if let Some(p) = self.grpc_port {
            props = props.remote_grpc_port(p);
        }
        if let Some((user, password)) = &self.user {
            props = props
                .auth_username(user.clone())
                .auth_password(password.clone());
        }
        props
    }
}

/// Nacos registry: instances are registered as ephemeral Nacos instances, held by this
/// process's gRPC connection to Nacos, and discovered by subscription.
///
/// The mapping, so that Java and Go services in the same Nacos find steadfast services and
/// the other way round: [`Instance::service`] is the Nacos service name, in the configured
/// namespace and group; the address is the instance's `ip` and `port`; `weight` is the
/// Nacos weight; the other fields are metadata entries ([`keys`]), next to the instance's
/// own metadata. Discovery lists only instances that are `healthy`, `enabled` and of weight
/// above 0 (weight 0 takes no traffic), of the configured cluster if one is given; an
/// instance without steadfast's keys gets the id `ip:port` and the scheme `http`.
///
/// Like the etcd backend, it never gives up: a registration is retried (capped at 1 s)
/// until Nacos takes it, [`Registry::status`] says why while it has not, and the client
/// re-registers by itself after a reconnect. A graceful `deregister` or `shutdown` first
/// marks the instance draining, so that clients stop sending it new calls at once.
///
/// `nacos-sdk` has no way to close its client: the connection to Nacos lives as long as the
/// process. After a Nacos restart it reconnects and registers again by itself, with its own
/// backoff (about 15 s against rnacos); clients keep the instances they know meanwhile.
/// It logs the password at DEBUG (target `nacos_sdk::api::plugin::auth`) while logging in:
/// [`telemetry::init`](crate::telemetry::init) and
/// [`telemetry::subscriber`](crate::telemetry::subscriber) drop those events; with a
/// subscriber of your own, keep that target at INFO. Service config stored in the registry
/// is not supported on Nacos. TLS to Nacos: see [`NacosConfig`].
///
/// ```no_run
/// # async fn run() -> Result<(), steadfast::Error> {
/// use steadfast::registry::{Instance, Registry};
/// let registry = steadfast::registry::from_url("nacos://127.0.0.1:8848?group=shop").await?;
/// registry.register(&Instance::new("user-svc", "u1", "http://10.0.0.7:50051")).await?;
/// let users = registry.watch("user-svc").await?;
/// println!("{} instances", users.borrow().len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NacosRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    config: NacosConfig,
    naming: OnceCell<NamingService>,
    /// What this process wants registered: service -> instance id -> instance.
    wanted: Mutex<BTreeMap<String, BTreeMap<String, Instance>>>,
    status: watch::Sender<RegistrationStatus>,
    /// Per service, the task retrying its registration.
    retrying: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosRegistry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    /// The last handle is gone: stop retrying, and remove this handle's instances (as the
    /// etcd backend revokes its lease), on a thread of its own since the runtime may be
    /// shutting down. `nacos-sdk`'s connection outlives the handle; without this, its
    /// instances would stay registered until the process exits.
    fn drop(&mut self) {
        for (_, task) in self
            .retrying
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            task.abort();
        }
        let wanted = std::mem::take(self.wanted.get_mut().unwrap_or_else(|p| p.into_inner()));
        let Some(naming) = self.naming.get().cloned() else {
            return;
        };
        if wanted.is_empty() {
            return;
        }
        let (config, t) = (self.config.clone(), self.config.connect_timeout);
        let group = Some(config.group.clone());
        let spawned = std::thread::Builder::new()
            .name("steadfast-nacos-drop".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    for (service, instances) in wanted {
                        for i in instances.values() {
                            let call = naming.deregister_instance(
                                service.clone(),
                                group.clone(),
                                to_nacos(i, &config),
                            );
                            if let Err(e) = bounded("deregister", t, call).await {
                                tracing::debug!(service, id = %i.id, "deregistering a dropped registry's instance failed: {e}");
                            }
                        }
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::debug!("cannot deregister a dropped nacos registry's instances: {e}");
        }
    }
}

/// One request to Nacos, bounded by `t`; an error, or no answer, names `what`.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    t: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(t, call).await {
        Ok(r) => r.map_err(|e| nacos_err(what, e)),
        Err(_) => Err(nacos_err(what, format!("no answer within {t:?}"))),
    }
}

fn nacos_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Connect {
        service: "nacos".into(),
        endpoint: what.into(),
        reason: e.to_string(),
    }
}

impl NacosRegistry {
    /// A registry on `config`. Connects lazily: a Nacos that is not up yet is no error
    /// here; registrations are retried until it answers.
    pub fn new(config: NacosConfig) -> Self {
        NacosRegistry {
            inner: Arc::new(Inner {
                config,
                naming: OnceCell::new(),
                wanted: Mutex::default(),
                status: watch::channel(RegistrationStatus::Registered).0,
                retrying: Mutex::default(),
            }),
        }
    }

    /// The Nacos client, built on first use (bounded by the connect timeout).
    async fn naming(&self) -> Result<&NamingService, Error> {
        let config = &self.inner.config;
        self.inner
            .naming
            .get_or_try_init(|| async {
                let mut builder = NamingServiceBuilder::new(config.props());
                if config.user.is_some() {
                    builder = builder.enable_auth_plugin_http();
                }
                let servers = config.servers.join(",");
                bounded(&servers, config.connect_timeout, builder.build()).await
            })
            .await
    }

    fn group(&self) -> Option<String> {
        Some(self.inner.config.group.clone())
    }

    /// Makes Nacos hold exactly the wanted instances of `service` (one attempt).
    async fn sync(&self, service: &str) -> Result<(), Error> {
        let want: Vec<ServiceInstance> = {
            let wanted = self.inner.wanted.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .get(service)
                .map(|m| {
                    m.values()
                        .map(|i| to_nacos(i, &self.inner.config))
                        .collect()
                })
                .unwrap_or_default()
        };
        let naming = self.naming().await?;
        let t = self.inner.config.connect_timeout;
        let call = async {
            match want.len() {
                0 => Ok(()),
                // Nacos 2.x keeps one instance per service and connection: several go in
                // one batch, which replaces the set.
                1 => {
                    naming
                        .register_instance(service.to_owned(), self.group(), want[0].clone())
                        .await
                }
                _ => {
                    naming
                        .batch_register_instance(service.to_owned(), self.group(), want)
                        .await
                }
            }
        };
        bounded("register", t, call).await
    }

    /// Ends the background task retrying the registration of `service`, if one runs.
    fn stop_retrying(&self, service: &str) {
        if let Some(t) = self
            .inner
            .retrying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service)
        {
            t.abort();
        }
    }

    /// Syncs `service` now; on failure keeps retrying in the background until it succeeds.
    async fn sync_or_retry(&self, service: &str) -> Result<(), Error> {
        self.stop_retrying(service);
        match self.sync(service).await {
            Ok(()) => {
                self.refresh_status(None);
                Ok(())
            }
            Err(e) => {
                self.refresh_status(Some(e.to_string()));
                let me = Arc::downgrade(&self.inner);
                let svc = service.to_owned();
                let task = tokio::spawn(async move {
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        tokio::time::sleep(backoff).await;
                        let Some(inner) = me.upgrade() else { return };
                        let reg = NacosRegistry { inner };
                        match reg.sync(&svc).await {
                            Ok(()) => {
                                reg.inner
                                    .retrying
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .remove(&svc);
                                reg.refresh_status(None);
                                tracing::info!(service = %svc, "registered in nacos");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(service = %svc, "nacos registration: {e}; retrying in {backoff:?}");
                                reg.refresh_status(Some(e.to_string()));
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                });
                self.inner
                    .retrying
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(service.to_owned(), task.abort_handle());
                Err(e)
            }
        }
    }

    fn refresh_status(&self, error: Option<String>) {
        let pending = !self
            .inner
            .retrying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        let status = match error {
            Some(why) => RegistrationStatus::Unregistered(why),
            None if pending => RegistrationStatus::Unregistered("retrying".into()),
            None => RegistrationStatus::Registered,
        };
        self.inner.status.send_if_modified(|cur| {
            let changed = *cur != status;
            *cur = status;
            changed
        });
    }

    /// Re-registers `instance` marked draining, so that subscribers stop sending it new
    /// calls before it goes. Best effort: a failure only delays that by the removal.
    async fn mark_draining(&self, instance: &Instance) {
        let Ok(naming) = self.naming().await else {
            return;
        };
        let mut marked = instance.clone();
        marked.draining = true;
        let call = naming.register_instance(
            instance.service.clone(),
            self.group(),
            to_nacos(&marked, &self.inner.config),
        );
        if let Err(e) = bounded("register", self.inner.config.connect_timeout, call).await {
            tracing::debug!(service = %instance.service, "draining mark not written: {e}");
        }
    }
}

/// The Nacos form of an instance.
fn to_nacos(i: &Instance, config: &NacosConfig) -> ServiceInstance {
    let uri: http::Uri = i.addr.parse().expect("validated by Instance::validate");
    let ip = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let mut metadata: HashMap<String, String> = i
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert(keys::ID.into(), i.id.clone());
    metadata.insert(keys::SCHEME.into(), scheme.into());
    metadata.insert(keys::VERSION.into(), i.version.clone());
    metadata.insert(keys::ZONE.into(), i.zone.clone());
    metadata.insert(keys::REGISTERED_AT.into(), i.registered_at.clone());
    if i.draining {
        metadata.insert(keys::DRAINING.into(), "true".into());
    }
    ServiceInstance {
        instance_id: None,
        ip,
        port: i32::from(port),
        weight: f64::from(i.weight),
        healthy: true,
        enabled: true,
        ephemeral: true,
        cluster_name: Some(
            config
                .cluster
                .clone()
                .unwrap_or_else(|| "DEFAULT".to_owned()),
        ),
        service_name: None,
        metadata,
    }
}

/// The steadfast form of a Nacos instance; `None` (with a warning for malformed ones) for
/// instances that take no traffic or cannot be used.
fn from_nacos(service: &str, n: &ServiceInstance) -> Option<Instance> {
    if !n.healthy || !n.enabled || !n.weight.is_finite() || n.weight <= 0.0 {
        return None;
    }
    let port = match u16::try_from(n.port) {
        Ok(p) if p > 0 => p,
        _ => {
            tracing::warn!(service, ip = %n.ip, port = n.port, "skipping nacos instance with an invalid port");
            return None;
        }
    };
    let md = &n.metadata;
    let scheme = md.get(keys::SCHEME).map_or("http", String::as_str);
    let host = if n.ip.contains(':') {
        format!("[{}]", n.ip)
    } else {
        n.ip.clone()
    };
    let get = |k: &str, fallback: &str| {
        md.get(k)
            .or_else(|| md.get(fallback))
            .cloned()
            .unwrap_or_default()
    };
    let instance = Instance {
        id: md
            .get(keys::ID)
            .cloned()
            .unwrap_or_else(|| format!("{}:{port}", n.ip)),
        service: service.to_owned(),
        addr: format!("{scheme}://{host}:{port}"),
        version: get(keys::VERSION, "version"),
        zone: get(keys::ZONE, "zone"),
        weight: (n.weight.round() as u32).max(1),
        metadata: md
            .iter()
            .filter(|(k, _)| !k.starts_with("steadfast."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        registered_at: md.get(keys::REGISTERED_AT).cloned().unwrap_or_default(),
        draining: md.get(keys::DRAINING).is_some_and(|v| v == "true"),
    };
    match instance.validate() {
        Ok(()) => Some(instance),
        Err(e) => {
            tracing::warn!(service, ip = %n.ip, port, "skipping malformed nacos instance: {e}");
            None
        }
    }
}

/// Hands the SDK's events (on its own runtime) to our follow task.
struct Forward(mpsc::UnboundedSender<Arc<NamingChangeEvent>>);

impl NamingEventListener for Forward {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let _ = self.0.send(event);
    }
}

/// Keeps `tx` equal to the usable instances of `service`, from a first read and then the
/// subscription's events; a removed draining instance lingers (as draining) for
/// [`DRAINED_LINGER`](super::linger::DRAINED_LINGER). Ends, unsubscribing, once every
/// receiver is dropped.
async fn follow(
    reg: NacosRegistry,
    service: String,
    tx: watch::Sender<InstanceSet>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let group = reg.group();
    let clusters: Vec<String> = reg.inner.config.cluster.iter().cloned().collect();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let listener: Arc<dyn NamingEventListener> = Arc::new(Forward(events_tx));
    // Subscribe (and read the current set), retrying while Nacos cannot be reached.
    let mut backoff = Duration::from_millis(100);
    let naming = loop {
        let attempt = async {
            let naming = reg.naming().await?.clone();
            naming
                .subscribe(
                    service.clone(),
                    group.clone(),
                    clusters.clone(),
                    listener.clone(),
                )
                .await
                .map_err(|e| nacos_err("subscribe", e))?;
            let now = naming
                .get_all_instances(service.clone(), group.clone(), clusters.clone(), false)
                .await
                .map_err(|e| nacos_err("list", e))?;
            Ok::<_, Error>((naming, now))
        };
        let t = reg.inner.config.connect_timeout;
        let outcome = tokio::select! {
            r = tokio::time::timeout(t, attempt) => r.unwrap_or_else(|_| Err(nacos_err("subscribe", format!("no answer within {t:?}")))),
            _ = tx.closed() => return,
        };
        match outcome {
            Ok((naming, now)) => {
                apply_list(
                    &tx,
                    &service,
                    &now,
                    &mut BTreeMap::new(),
                    &mut Lingering::default(),
                );
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                break naming;
            }
            Err(e) => {
                tracing::warn!(
                    service,
                    "nacos subscription failed, retrying in {backoff:?}: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut known: BTreeMap<String, Instance> = tx
        .borrow()
        .iter()
        .map(|i| (i.id.clone(), i.clone()))
        .collect();
    let mut lingering = Lingering::default();
    loop {
        let next = lingering.next();
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let list = event.instances.clone().unwrap_or_default();
                apply_list(&tx, &service, &list, &mut known, &mut lingering);
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let over = lingering.expire().into_iter().map(|id| (id, None)).collect();
                publish_changes(&tx, &mut known, over);
            }
            _ = tx.closed() => break,
        }
    }
    if let Err(e) = naming
        .unsubscribe(service.clone(), group, clusters, listener)
        .await
    {
        tracing::debug!(service, "nacos unsubscribe failed: {e}");
    }
}

/// Applies a full list from Nacos to `known` and publishes it. An instance that was draining
/// and is no longer listed stays (as draining) for
/// [`DRAINED_LINGER`](super::linger::DRAINED_LINGER).
fn apply_list(
    tx: &watch::Sender<InstanceSet>,
    service: &str,
    list: &[ServiceInstance],
    known: &mut BTreeMap<String, Instance>,
    lingering: &mut Lingering,
) {
    let now: BTreeMap<String, Instance> = list
        .iter()
        .filter_map(|n| from_nacos(service, n))
        .map(|i| (i.id.clone(), i))
        .collect();
    for id in now.keys() {
        lingering.forget(id);
    }
    for (id, old) in known.iter() {
        if old.draining && !now.contains_key(id) {
            lingering.hold(id.clone());
        }
    }
    let mut next = now;
    for id in lingering.keys() {
        if let Some(old) = known.get(id) {
            next.entry(id.to_owned()).or_insert_with(|| old.clone());
        }
    }
    *known = next;
    publish(tx, known);
}

#[async_trait::async_trait]
impl Registry for NacosRegistry {
    /// Registers `instance` as an ephemeral Nacos instance. On an error the registration
    /// stays wanted and is retried in the background until Nacos takes it.
    async fn register(&self, instance: &Instance) -> Result<(), Error> {
        instance.validate()?;
        self.inner
            .wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(instance.service.clone())
            .or_default()
            .insert(instance.id.clone(), instance.clone());
        self.sync_or_retry(&instance.service).await
    }

    /// Marks the instance draining, then removes it.
    async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        let (removed, left) = {
            let mut wanted = self.inner.wanted.lock().unwrap_or_else(|p| p.into_inner());
            let entry = wanted.entry(service.to_owned()).or_default();
            let removed = entry.remove(id);
            let left = entry.len();
            if left == 0 {
                wanted.remove(service);
            }
            (removed, left)
        };
        let Some(instance) = removed else {
            return Ok(());
        };
        self.mark_draining(&instance).await;
        if left > 0 {
            return self.sync_or_retry(service).await;
        }
        self.stop_retrying(service);
        self.refresh_status(None);
        let naming = self.naming().await?;
        let t = self.inner.config.connect_timeout;
        let call = naming.deregister_instance(
            service.to_owned(),
            self.group(),
            to_nacos(&instance, &self.inner.config),
        );
        bounded("deregister", t, call).await
    }

    /// Subscribes to `service`; returns once the first list is in (or the connect timeout
    /// has passed: then it follows Nacos in the background).
    async fn watch(&self, service: &str) -> Result<Instances, Error> {
        let (tx, rx) = watch::channel(InstanceSet::new());
        let (first, listed) = tokio::sync::oneshot::channel();
        tokio::spawn(follow(self.clone(), service.to_owned(), tx, first));
        let t = self.inner.config.connect_timeout;
        if tokio::time::timeout(t, listed).await.is_err() {
            tracing::warn!(
                service,
                "nacos did not list the instances within {t:?}; following them in the background"
            );
        }
        Ok(rx)
    }

    /// Deregisters every instance of this process (each marked draining first).
    async fn shutdown(&self) -> Result<(), Error> {
        let all: Vec<(String, String)> = {
            let wanted = self.inner.wanted.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .flat_map(|(s, m)| m.keys().map(move |id| (s.clone(), id.clone())))
                .collect()
        };
        let mut result = Ok(());
        for (service, id) in all {
            if let Err(e) = self.deregister(&service, &id).await {
                result = Err(e);
            }
        }
        result
    }

    fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.inner.status.subscribe()
    }

    fn lease_ttl(&self) -> Option<Duration> {
        Some(SESSION_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NacosConfig {
        NacosConfig::parse("127.0.0.1:8848").unwrap()
    }

    #[test]
    fn an_instance_survives_the_round_trip_through_nacos_fields() {
        let mut i = Instance::new("user-svc", "u1", "https://10.0.0.7:50051");
        i.zone = "eu-1a".into();
        i.weight = 3;
        i.metadata.insert("team".into(), "growth".into());
        let n = to_nacos(&i, &config());
        assert_eq!((n.ip.as_str(), n.port, n.weight), ("10.0.0.7", 50051, 3.0));
        assert!(n.ephemeral);
        assert_eq!(from_nacos("user-svc", &n), Some(i.clone()));
        i.draining = true;
        let back = from_nacos("user-svc", &to_nacos(&i, &config())).unwrap();
        assert!(back.draining);
    }

    #[test]
    fn instances_written_by_other_clients_are_read_and_unusable_ones_skipped() {
        let java = ServiceInstance {
            ip: "10.0.0.9".into(),
            port: 9090,
            metadata: HashMap::from([("version".into(), "2.1".into())]),
            ..ServiceInstance::default()
        };
        let i = from_nacos("orders", &java).unwrap();
        assert_eq!(i.id, "10.0.0.9:9090");
        assert_eq!(i.addr, "http://10.0.0.9:9090");
        assert_eq!(i.version, "2.1");
        for unusable in [
            ServiceInstance {
                weight: 0.0,
                ..java.clone()
            },
            ServiceInstance {
                healthy: false,
                ..java.clone()
            },
            ServiceInstance {
                enabled: false,
                ..java.clone()
            },
            ServiceInstance {
                port: 70000,
                ..java.clone()
            },
            ServiceInstance {
                ip: "bad host".into(),
                ..java.clone()
            },
        ] {
            assert_eq!(from_nacos("orders", &unusable), None, "{unusable:?}");
        }
        let v6 = ServiceInstance {
            ip: "::1".into(),
            ..java
        };
        assert_eq!(from_nacos("orders", &v6).unwrap().addr, "http://[::1]:9090");
    }

    #[test]
    fn bad_urls_name_what_is_wrong() {
        for (url, field) in [
            ("", "registry.nacos.servers"),
            ("h:65000", "registry.nacos.servers"),
            ("h", "registry.nacos.servers"),
            ("h:8848?grpc_port=x", "registry.nacos.grpc_port"),
            ("h:8848?group=", "registry.nacos.group"),
            ("h:8848?username=a", "registry.nacos.username"),
            ("h:8848?zone=1", "unknown nacos option `zone`"),
        ] {
            let err = NacosConfig::parse(url).unwrap_err().to_string();
            assert!(err.contains(field), "{url}: {err}");
        }
    }
}

#[cfg(test)]
mod tls_ca_tests {
    use super::check_ca;

    fn err(path: Option<&std::path::Path>) -> String {
        check_ca(path.map(|p| p.as_os_str().to_owned()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_missing_unreadable_or_malformed_ca_is_refused_naming_the_variable() {
        assert!(err(None).contains("NACOS_CLIENT_TLS_CA_CERT"));
        let dir = std::env::temp_dir().join(format!("steadfast-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(err(Some(&missing)).contains("cannot be read"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here").unwrap();
        assert!(err(Some(&empty)).contains("holds no PEM certificate"));
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = err(Some(&broken));
        assert!(
            e.contains("broken.pem") && e.contains("NACOS_CLIENT_TLS_CA_CERT"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
