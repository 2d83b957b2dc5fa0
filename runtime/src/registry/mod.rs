//! Service registration: where instances announce themselves, and where clients watch the live
//! set of a service.
//!
//! Backends, chosen by URL with [`from_url`]:
//! - `memory://[?ttl=10s]`: [`MemoryRegistry`], in-process, no server, with etcd's liveness
//!   (each handle holds a lease renewed by a keepalive task); the default for demos and tests;
//! - `static://host:port,host:port`: [`StaticRegistry`], a fixed list served for every
//!   service name;
//! - `etcd://host:port[,host:port...]`: [`EtcdRegistry`], etcd v3 with one TTL lease per
//!   process. Options as query parameters: `prefix`, `config_prefix`, `user`, `password`,
//!   `ttl` (e.g. `10s`), `tls_ca` (a PEM file; with it, etcd is reached over TLS). Values are percent-decoded:
//!   write a `&` in a password as `%26` and a `%` as `%25`.
//!
//! # etcd layout
//! Key `/steadfast/services/{service}/{instance_id}` (the prefix is configurable), value the
//! JSON of [`Instance`]:
//! `{"id","service","addr":"http://127.0.0.1:50051","version","zone","weight","metadata":{},"registered_at"}`,
//! and `"draining":true` for the moment between a graceful deregistration's announcement
//! and the key's removal.
//! A client in another language discovers our services by listing the prefix and watching
//! it; the key lives only while the lease of the process that wrote it does. Watchers list
//! the prefix a page at a time and skip (with a warning) values that are not such JSON, are
//! larger than [`MAX_VALUE_BYTES`] (64 KiB), or stored under another key than
//! `{prefix}/{service}/{id}`.
//!
//! A service's gRPC service config, if any, is stored as JSON text under
//! `/steadfast/config/{service}` (option `config_prefix`), with no lease: clients built
//! from the registry follow it live ([`Registry::watch_config`], [`Registry::put_config`]),
//! as gRPC clients follow the service config their resolver returns.
//!
//! # Writing another backend
//! Implement [`Registry`]: `register` must make the instance visible to `watch`ers until
//! `deregister` or `shutdown` (or the process's death, for a backend with liveness such as a
//! lease or a session), and keep it so through outages, retrying; `status` says whether it
//! is in place now, and why not; `watch` returns a [`watch::Receiver`] of the full live set
//! (an [`InstanceSet`]: change it in place with `insert` and `remove`, for example in
//! [`watch::Sender::send_if_modified`], rather than building it anew, so that watchers apply
//! a change in time proportional to it), updated on every change and kept at its last value
//! while the backend is unreachable, and stops watching once every receiver is dropped. A
//! Consul backend would map the lease to a session with a TTL health check and the watch to
//! blocking queries; a Nacos backend to ephemeral instances with heartbeats and a
//! subscription. Test it against the real server, as `EtcdRegistry` is.

mod etcd;
mod fixed;
mod linger;
mod memory;
#[cfg(feature = "nacos")]
#[cfg_attr(docsrs, doc(cfg(feature = "nacos")))]
pub mod nacos;
pub(crate) mod set;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::etcd::{EtcdConfig, EtcdRegistry, MAX_VALUE_BYTES};
pub use self::fixed::StaticRegistry;
pub use self::memory::MemoryRegistry;
#[cfg(feature = "nacos")]
pub use self::nacos::{NacosConfig, NacosRegistry};
pub use self::set::{Change, InstanceSet};

use crate::Error;

/// One running instance of a service, as stored in the registry.
///
/// ```
/// use steadfast::registry::Instance;
/// let i = Instance::new("user-svc", "user-1", "http://127.0.0.1:50051");
/// let json = serde_json::to_string(&i).unwrap();
/// assert!(json.contains(r#""addr":"http://127.0.0.1:50051""#));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within the service (`--instance-id`).
    pub id: String,
    /// The service name (`user-svc`).
    pub service: String,
    /// Where to reach it: `http://host:port` or `https://host:port`.
    pub addr: String,
    /// The software version.
    #[serde(default)]
    pub version: String,
    /// The zone or rack.
    #[serde(default)]
    pub zone: String,
    /// Relative weight for balancing (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Anything else.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When it registered (RFC 3339).
    #[serde(default)]
    pub registered_at: String,
    /// Set by a graceful deregistration just before the key is removed: clients stop
    /// sending new calls to it at once. An instance that vanishes without it (a lost lease,
    /// a crash) is kept by clients while their connections to it work, for a grace period.
    /// Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn one() -> u32 {
    1
}

impl Instance {
    /// An instance with the given identity and address.
    pub fn new(service: impl Into<String>, id: impl Into<String>, addr: impl Into<String>) -> Self {
        Instance {
            id: id.into(),
            service: service.into(),
            addr: addr.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            zone: String::new(),
            weight: 1,
            metadata: BTreeMap::new(),
            registered_at: crate::time::rfc3339_millis(std::time::SystemTime::now()),
            draining: false,
        }
    }

    /// Checks the fields a client relies on.
    pub fn validate(&self) -> Result<(), Error> {
        if self.service.is_empty() || self.service.contains('/') {
            return Err(Error::config(
                "instance.service",
                format!("`{}` must be non-empty, without '/'", self.service),
            ));
        }
        if self.id.is_empty() || self.id.contains('/') {
            return Err(Error::config(
                "instance.id",
                format!("`{}` must be non-empty, without '/'", self.id),
            ));
        }
        match self.addr.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                Ok(())
            }
            _ => Err(Error::config(
                "instance.addr",
                format!(
                    "`{}` is not http://host:port or https://host:port",
                    self.addr
                ),
            )),
        }
    }
}

/// The live set of one service, as a watch channel: the current value is the whole set, an
/// [`InstanceSet`] (a persistent set: a watcher finds what changed since the version it
/// last read with [`InstanceSet::changes_from`], in time proportional to the change).
pub type Instances = watch::Receiver<InstanceSet>;

/// The service config stored for one service, as a watch channel: its JSON text, or `None`
/// while there is none. The registry does not parse it; the client does, and keeps its last
/// good config when a value does not parse.
pub type ConfigText = watch::Receiver<Option<Arc<str>>>;

/// Whether the registrations of this process are in place in the registry.
///
/// ```
/// use steadfast::registry::RegistrationStatus;
/// let s = RegistrationStatus::Unregistered("cannot reach etcd".into());
/// assert!(!s.is_registered());
/// assert_eq!(s.to_string(), "not registered: cannot reach etcd");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// Every registration is in place (or none is wanted).
    Registered,
    /// Some registration is not known to be in place; why. The registry keeps trying.
    Unregistered(String),
}

impl RegistrationStatus {
    /// Whether every registration is in place.
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationStatus::Registered)
    }
}

impl fmt::Display for RegistrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationStatus::Registered => f.write_str("registered"),
            RegistrationStatus::Unregistered(why) => write!(f, "not registered: {why}"),
        }
    }
}

/// Where services register and clients discover them.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + fmt::Debug {
    /// Makes `instance` visible to watchers of its service.
    async fn register(&self, instance: &Instance) -> Result<(), Error>;
    /// Removes an instance (its key disappears; other registrations stay).
    async fn deregister(&self, service: &str, id: &str) -> Result<(), Error>;
    /// Follows the live set of `service`.
    async fn watch(&self, service: &str) -> Result<Instances, Error>;
    /// Ends every registration of this process at once (for etcd: revokes the lease).
    async fn shutdown(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Follows whether every registration of this process is in place. The default, for
    /// backends whose `register` is done once it returns, is always
    /// [`RegistrationStatus::Registered`].
    fn status(&self) -> watch::Receiver<RegistrationStatus> {
        watch::channel(RegistrationStatus::Registered).1
    }
    /// Follows the gRPC service config stored for `service` beside its instances (in etcd,
    /// under `{config_prefix}/{service}`, `/steadfast/config/user-svc` by default). Kept at
    /// its last value while the backend is unreachable; stops watching once every receiver
    /// is dropped. The default, for backends that store none, is always `None`.
    async fn watch_config(&self, service: &str) -> Result<ConfigText, Error> {
        let _ = service;
        let (tx, rx) = watch::channel(None);
        // Nothing will ever be stored: keep the sender as long as the receivers, so that
        // `changed()` waits instead of failing.
        tokio::spawn(async move { tx.closed().await });
        Ok(rx)
    }
    /// Stores `json` as the service config of `service` (`None` removes it). It is not
    /// bound to any lease: it stays when the process that wrote it ends. The registry
    /// stores the text as given; clients that cannot parse it keep their last good config.
    async fn put_config(&self, service: &str, json: Option<&str>) -> Result<(), Error> {
        let _ = json;
        Err(Error::config(
            "registry",
            format!(
                "this registry stores no service config (asked to store one for `{service}`); use memory:// or etcd://"
            ),
        ))
    }
    /// How long a registration outlives its process (etcd's lease TTL), for backends with
    /// liveness. Discovery keeps an instance that vanishes without draining for twice this,
    /// while its connection works. A backend that returns it should mark an instance
    /// [`draining`](Instance::draining) before a graceful deregistration removes it, and
    /// keep it listed so a moment after the removal (as [`EtcdRegistry`] does).
    fn lease_ttl(&self) -> Option<Duration> {
        None
    }
}

/// Builds a registry from its URL: `memory://`, `static://host:port,...` or
/// `etcd://host:port,...?prefix=..&user=..&password=..&ttl=10s&tls_ca=ca.pem`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let memory = steadfast::registry::from_url("memory://").await.unwrap();
/// let err = steadfast::registry::from_url("zookeeper://x:1").await.unwrap_err();
/// assert!(err.to_string().contains("registry"));
/// # }
/// ```
pub async fn from_url(url: &str) -> Result<Arc<dyn Registry>, Error> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::config(
            "registry",
            format!("`{url}` has no scheme; use memory://, static://host:port or etcd://host:port"),
        )
    })?;
    match scheme {
        "memory" => Ok(Arc::new(MemoryRegistry::from_url_rest(rest)?)),
        "static" => Ok(Arc::new(StaticRegistry::parse(rest)?)),
        "etcd" => Ok(Arc::new(
            EtcdRegistry::connect(EtcdConfig::parse(rest)?).await?,
        )),
        #[cfg(feature = "nacos")]
        "nacos" => Ok(Arc::new(NacosRegistry::new(NacosConfig::parse(rest)?))),
        #[cfg(not(feature = "nacos"))]
        "nacos" => Err(Error::config(
            "registry",
            format!("`{url}` needs the `nacos` feature of steadfast"),
        )),
        other => Err(Error::config(
            "registry",
            format!(
                "unknown scheme `{other}`; use memory://, static://host:port, etcd://host:port \
                 or nacos://host:8848"
            ),
        )),
    }
}

/// Steps (2) and (3) of [`graceful_shutdown`](crate::server::graceful_shutdown): remove the instance from discovery, then wait
/// `drain` so clients notice before the server stops accepting calls.
pub async fn drain(registry: &dyn Registry, instance: &Instance, drain: Duration) {
    if let Err(e) = registry.shutdown().await {
        tracing::warn!(service = %instance.service, id = %instance.id, "deregistration failed: {e}");
    }
    if let Err(e) = registry.deregister(&instance.service, &instance.id).await {
        tracing::debug!(service = %instance.service, id = %instance.id, "deregister after shutdown: {e}");
    }
    tokio::time::sleep(drain).await;
}

/// Decodes `%XX` escapes; anything else is kept as written.
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`%` at byte {i} is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the decoded value is not UTF-8".to_owned())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
