use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Instance, Instances, Registry};
use crate::Error;

const MIN_TTL: Duration = Duration::from_secs(2);

/// How to reach etcd and how to use it.
///
/// ```
/// use std::time::Duration;
/// use steadfast::registry::EtcdConfig;
///
/// let c = EtcdConfig::parse("127.0.0.1:2379,127.0.0.1:22379?prefix=/prod&ttl=5s")?;
/// assert_eq!(c.endpoints().len(), 2);
/// assert_eq!(c.prefix_str(), "/prod");
/// assert_eq!(c.lease_ttl(), Duration::from_secs(5));
/// assert!(EtcdConfig::parse("127.0.0.1:2379?ttl=1s").unwrap_err().to_string().contains("ttl"));
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    prefix: String,
    ttl: Duration,
    user: Option<(String, String)>,
    tls_ca: Option<PathBuf>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("user", &self.user.as_ref().map(|u| &u.0)) // never the password
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl EtcdConfig {
    /// Endpoints `host:port`; prefix `/steadfast/services`, TTL 10 s.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(endpoints: I) -> Result<Self, Error> {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::config(
                "registry.etcd.endpoints",
                "give at least one host:port",
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: "/steadfast/services".into(),
            ttl: Duration::from_secs(10),
            user: None,
            tls_ca: None,
            connect_timeout: Duration::from_secs(3),
        })
    }

    /// Parses the part of an `etcd://` URL after the scheme.
    pub fn parse(rest: &str) -> Result<Self, Error> {
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut c = EtcdConfig::new(hosts.split(',').map(str::trim).filter(|s| !s.is_empty()))?;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "prefix" => c = c.prefix(v)?,
                "ttl" => {
                    let d = crate::duration::parse(v)
                        .map_err(|e| Error::config("registry.etcd.ttl", e))?;
                    c = c.ttl(d)?;
                }
                "user" => c.user = Some((v.to_owned(), c.user.map(|u| u.1).unwrap_or_default())),
                "password" => {
                    c.user = Some((c.user.map(|u| u.0).unwrap_or_default(), v.to_owned()))
                }
                "tls_ca" => c.tls_ca = Some(PathBuf::from(v)),
                other => {
                    return Err(Error::config(
                        "registry",
                        format!(
                            "unknown etcd option `{other}`; use prefix, ttl, user, password, tls_ca"
                        ),
                    ));
                }
            }
        }
        Ok(c)
    }

    /// The key prefix (default `/steadfast/services`).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, Error> {
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(Error::config(
                "registry.etcd.prefix",
                format!("`{prefix}` must start with '/' and not end with '/'"),
            ));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// The lease TTL (default 10 s, at least 2 s). Keepalive runs every TTL/3.
    pub fn ttl(mut self, ttl: Duration) -> Result<Self, Error> {
        if ttl < MIN_TTL {
            return Err(Error::config(
                "registry.etcd.ttl",
                format!("{ttl:?} is under 2s; a shorter lease expires on ordinary hiccups"),
            ));
        }
        self.ttl = ttl;
        Ok(self)
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
    /// The key prefix.
    pub fn prefix_str(&self) -> &str {
        &self.prefix
    }
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }
}

#[derive(Default)]
struct Lease {
    id: Option<i64>,
    /// key -> JSON value of every registration of this process.
    keys: BTreeMap<String, String>,
}

struct Inner {
    client: Client,
    config: EtcdConfig,
    lease: tokio::sync::Mutex<LeaseDebug>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .field("ttl", &self.config.ttl)
            .finish_non_exhaustive()
    }
}

/// `Lease` with a Debug that shows no secrets or values.
#[derive(Default)]
struct LeaseDebug(Lease);

impl std::fmt::Debug for LeaseDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.0.id)
            .field("keys", &self.0.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// etcd v3 registry: one lease per process, every registration bound to it, keepalive
/// every TTL/3, and re-registration with backoff when the lease is lost (etcd restarted,
/// the lease revoked by someone else, an outage longer than the TTL). Watchers list the
/// service's prefix, then watch from the returned revision; they keep the last known set
/// while etcd is unreachable. Nothing here panics on an etcd failure.
#[derive(Clone, Debug)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

impl EtcdRegistry {
    /// Connects to etcd.
    pub async fn connect(config: EtcdConfig) -> Result<Self, Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.ttl.max(Duration::from_secs(3)))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &config.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(ca) = &config.tls_ca {
            let pem = std::fs::read(ca).map_err(|source| Error::Io {
                context: format!("reading etcd CA {}", ca.display()),
                source,
            })?;
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(pem)),
            );
        }
        let client = Client::connect(&config.endpoints, Some(opts))
            .await
            .map_err(|e| Error::Connect {
                service: "etcd".into(),
                endpoint: config.endpoints.join(","),
                reason: e.to_string(),
            })?;
        Ok(EtcdRegistry {
            inner: Arc::new(Inner {
                client,
                config,
                lease: tokio::sync::Mutex::new(LeaseDebug::default()),
                keeper: Mutex::new(None),
            }),
        })
    }

    /// Checks that etcd answers (a read of the prefix).
    pub async fn ping(&self) -> Result<(), Error> {
        let client = self.inner.client.clone();
        let prefix = self.inner.config.prefix.clone();
        tokio::time::timeout(Duration::from_secs(2), async move {
            client
                .clone()
                .get(prefix, Some(GetOptions::new().with_count_only()))
                .await
        })
        .await
        .map_err(|_| Error::Connect {
            service: "etcd".into(),
            endpoint: self.inner.config.endpoints.join(","),
            reason: "no answer within 2s".into(),
        })?
        .map(drop)
        .map_err(|e| etcd_err("get", e))
    }

    /// The key of an instance.
    pub fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.inner.config.prefix)
    }

    /// The current lease id, if any registration holds one.
    pub async fn lease_id(&self) -> Option<i64> {
        self.inner.lease.lock().await.0.id
    }

    /// Stops sending keepalives without revoking the lease, as a frozen process would: the
    /// keys expire after the TTL. For tests of expiry.
    #[doc(hidden)]
    pub fn abort_keepalive(&self) {
        if let Some(h) = self
            .inner
            .keeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }

    fn ensure_keeper(&self) {
        let mut keeper = self.inner.keeper.lock().unwrap_or_else(|p| p.into_inner());
        if keeper.as_ref().is_none_or(|h| h.is_finished()) {
            *keeper = Some(tokio::spawn(keep_alive(Arc::downgrade(&self.inner))));
        }
    }
}

/// Runs an etcd request, retrying connection failures a few times (with several endpoints,
/// the next attempt may reach a live member).
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 6 && is_transient(&e) => {
                tracing::debug!("etcd {what} failed (attempt {attempt}), retrying: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(etcd_err(what, e)),
        }
    }
    unreachable!("the loop returns")
}

fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            )
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn etcd_err(what: &str, e: etcd_client::Error) -> Error {
    Error::Connect {
        service: "etcd".into(),
        endpoint: what.into(),
        reason: e.to_string(),
    }
}

impl Inner {
    /// Grants a new lease and puts every key under it.
    async fn regrant(&self, lease: &mut Lease) -> Result<i64, Error> {
        let client = self.client.clone();
        let ttl = self.config.ttl.as_secs().max(2) as i64;
        let id = retrying("lease grant", || {
            let mut c = client.clone();
            async move { c.lease_grant(ttl, None).await }
        })
        .await?
        .id();
        for (key, value) in &lease.keys {
            retrying("put", || {
                let mut c = client.clone();
                let (k, v) = (key.clone(), value.clone());
                async move { c.put(k, v, Some(PutOptions::new().with_lease(id))).await }
            })
            .await?;
        }
        let mut client = client;
        if let Some(old) = lease.id.replace(id) {
            let _ = client.lease_revoke(old).await; // best effort; it may be gone already
        }
        Ok(id)
    }
}

/// Keeps the lease alive every TTL/3; when that fails or the lease is lost, re-grants and
/// re-puts every key, with backoff. Ends when the registry is dropped.
async fn keep_alive(inner: Weak<Inner>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(this) = inner.upgrade() else { return };
        let every = this.config.ttl / 3;
        let id = this.lease.lock().await.0.id;
        let outcome = match id {
            Some(id) => run_keepalive(&this, id, every).await,
            None => Err("no lease".to_owned()),
        };
        let why = match outcome {
            Ok(()) => continue,
            Err(why) => why,
        };
        tracing::warn!(lease = ?id, "etcd lease keepalive failed ({why}); re-registering");
        loop {
            let mut lease = this.lease.lock().await;
            if lease.0.keys.is_empty() {
                return; // nothing left to keep alive
            }
            match this.regrant(&mut lease.0).await {
                Ok(new) => {
                    tracing::warn!(
                        lease = new,
                        keys = lease.0.keys.len(),
                        "re-registered with a new etcd lease"
                    );
                    backoff = Duration::from_millis(200);
                    break;
                }
                Err(e) => {
                    drop(lease);
                    tracing::warn!("etcd re-registration failed, retrying in {backoff:?}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(every.max(Duration::from_millis(500)));
                }
            }
        }
        drop(this);
    }
}

/// Sends keepalives until one fails or etcd says the lease is gone.
async fn run_keepalive(this: &Inner, id: i64, every: Duration) -> Result<(), String> {
    let mut client = this.client.clone();
    let (mut keeper, mut stream) = client
        .lease_keep_alive(id)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(every.max(Duration::from_millis(500)), stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return Err("the lease is gone (revoked or expired)".into()),
            Ok(Ok(None)) => return Err("keepalive stream ended".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no keepalive answer in time".into()),
        }
        tokio::time::sleep(every).await;
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, instance: &Instance) -> Result<(), Error> {
        instance.validate()?;
        let key = self.key(&instance.service, &instance.id);
        let value = serde_json::to_string(instance).expect("an Instance serialises");
        let mut lease = self.inner.lease.lock().await;
        lease.0.keys.insert(key.clone(), value.clone());
        let id = match lease.0.id {
            Some(id) => id,
            None => self.inner.regrant(&mut lease.0).await?,
        };
        let client = self.inner.client.clone();
        retrying("put", || {
            let mut c = client.clone();
            let (k, v) = (key.clone(), value.clone());
            async move { c.put(k, v, Some(PutOptions::new().with_lease(id))).await }
        })
        .await?;
        drop(lease);
        self.ensure_keeper();
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        let key = self.key(service, id);
        self.inner.lease.lock().await.0.keys.remove(&key);
        let client = self.inner.client.clone();
        retrying("delete", || {
            let mut c = client.clone();
            let k = key.clone();
            async move { c.delete(k, None).await }
        })
        .await?;
        Ok(())
    }

    async fn watch(&self, service: &str) -> Result<Instances, Error> {
        let (tx, rx) = watch::channel(Arc::from(Vec::new()));
        let prefix = format!("{}/{service}/", self.inner.config.prefix);
        tokio::spawn(follow(
            self.inner.client.clone(),
            prefix,
            service.to_owned(),
            tx,
        ));
        Ok(rx)
    }

    async fn shutdown(&self) -> Result<(), Error> {
        self.abort_keepalive();
        let mut lease = self.inner.lease.lock().await;
        lease.0.keys.clear();
        if let Some(id) = lease.0.id.take() {
            self.inner
                .client
                .clone()
                .lease_revoke(id)
                .await
                .map_err(|e| etcd_err("lease revoke", e))?;
        }
        Ok(())
    }
}

fn parse_instance(key: &str, value: &[u8]) -> Option<Instance> {
    match serde_json::from_slice::<Instance>(value) {
        Ok(i) if i.validate().is_ok() => Some(i),
        Ok(i) => {
            tracing::warn!(
                key,
                "skipping registry value with invalid fields: {:?}",
                i.validate().err()
            );
            None
        }
        Err(e) => {
            tracing::warn!(key, "skipping malformed registry value: {e}");
            None
        }
    }
}

/// Keeps `tx` equal to the live set under `prefix`: list, then watch from the listed
/// revision; re-list after a compaction; on errors keep the last set and retry with backoff.
async fn follow(
    client: Client,
    prefix: String,
    service: String,
    tx: watch::Sender<Arc<[Instance]>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        match list_then_watch(client.clone(), &prefix, &tx, &mut backoff).await {
            Ok(()) => tracing::debug!(service, "re-listing after compaction"),
            Err(e) => {
                tracing::warn!(
                    service,
                    known = tx.borrow().len(),
                    "etcd watch failed, keeping the last known instances; retrying in {backoff:?}: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn list_then_watch(
    mut client: Client,
    prefix: &str,
    tx: &watch::Sender<Arc<[Instance]>>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut known: BTreeMap<String, Instance> = BTreeMap::new();
    for kv in resp.kvs() {
        let key = kv.key_str().unwrap_or("<non-UTF-8 key>").to_owned();
        if let Some(i) = parse_instance(&key, kv.value()) {
            known.insert(key, i);
        }
    }
    publish(tx, &known);
    *backoff = Duration::from_millis(100);
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.map_err(|e| e.to_string())?,
            _ = tx.closed() => return Ok(()),
        };
        let Some(resp) = msg else {
            return Err("watch stream ended".into());
        };
        if resp.compact_revision() > 0 || resp.canceled() {
            return Ok(());
        }
        let mut changed = false;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let key = kv.key_str().unwrap_or("<non-UTF-8 key>").to_owned();
            match event.event_type() {
                EventType::Put => match parse_instance(&key, kv.value()) {
                    Some(i) => changed |= known.insert(key, i.clone()).as_ref() != Some(&i),
                    None => changed |= known.remove(&key).is_some(),
                },
                EventType::Delete => changed |= known.remove(&key).is_some(),
            }
        }
        if changed {
            publish(tx, &known);
        }
    }
}

fn publish(tx: &watch::Sender<Arc<[Instance]>>, known: &BTreeMap<String, Instance>) {
    let set: Arc<[Instance]> = known.values().cloned().collect();
    tx.send_if_modified(|cur| {
        if **cur == *set {
            false
        } else {
            *cur = set;
            true
        }
    });
}
