//! The etcd v3 backend: one lease per process, a keeper task that never gives up, and
//! watchers that list a service's prefix a page at a time and then watch it.

mod config;
mod conn;
mod lease;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{ConnectOptions, GetOptions};
use tokio::task::JoinHandle;

pub use self::config::EtcdConfig;

use self::conn::{Conn, is_unavailable};
use self::lease::{Shared, revoke_in_background};
use super::{ConfigText, Instance, Instances, RegistrationStatus, Registry};
use crate::Error;

/// The largest registry value a watcher accepts (64 KiB); larger values are skipped with a
/// warning, so that one oversized key cannot hide a service. An [`Instance`] is a few
/// hundred bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

struct Inner {
    client: Conn,
    config: EtcdConfig,
    shared: Arc<Shared>,
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

impl Inner {
    fn stop_keeper(&self) {
        if let Some(h) = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: stop the keeper and revoke the lease (in the background,
    /// bounded; if that cannot run, the lease expires after its TTL).
    fn drop(&mut self) {
        self.stop_keeper();
        let ids = {
            let mut s = self.shared.state();
            let mut ids = std::mem::take(&mut s.retired);
            ids.extend(s.lease.take());
            ids
        };
        revoke_in_background(&self.client, ids, self.config.request_timeout());
    }
}

/// etcd v3 registry: one lease per process, every registration bound to it, keepalive
/// every TTL/3.
///
/// A keeper task registers, and re-registers, forever, from any state: etcd not reachable
/// yet, the lease lost (etcd restarted, revoked by someone else, an outage longer than the
/// TTL), a key deleted by someone else, a member frozen. A new lease is kept alive before
/// anything is put under it, and the one it replaces is revoked only once every key has
/// moved, so a key never disappears on a re-grant. [`Registry::status`] says whether every
/// registration is in place, and why not.
///
/// Watchers list the service's prefix a page at a time, then watch from the listed
/// revision; they keep the last known set while etcd is unreachable, and skip values that
/// are malformed or larger than [`MAX_VALUE_BYTES`]. A graceful `deregister` or `shutdown`
/// first marks its keys [`draining`](Instance::draining), so clients stop sending new calls
/// at once, and watchers keep a deleted draining instance listed (as draining) for 2 s, so
/// that no client misses the mark; an instance that vanishes unmarked (a lost lease) is
/// kept by clients while their connections to it work. Dropping the last handle of the
/// registry revokes its lease and ends its keeper; dropping every receiver of a
/// [`watch`](Registry::watch) ends its etcd watch. Nothing here panics on an etcd failure.
///
/// ```no_run
/// use steadfast::registry::{EtcdConfig, EtcdRegistry, Instance, Registry};
///
/// # async fn run() -> Result<(), steadfast::Error> {
/// let registry = EtcdRegistry::connect(EtcdConfig::parse("127.0.0.1:2379?ttl=5s")?).await?;
/// registry.register(&Instance::new("user-svc", "u1", "http://10.0.0.7:50051")).await?;
/// let users = registry.watch("user-svc").await?;
/// println!("{} instances", users.borrow().len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

impl EtcdRegistry {
    /// Connects to etcd (lazily: an unreachable etcd is no error here; registrations are
    /// retried until it answers).
    pub async fn connect(config: EtcdConfig) -> Result<Self, Error> {
        // HTTP/2 pings find a frozen member's connection dead within about half the TTL.
        let ping = (config.ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.ttl.max(Duration::from_secs(3)))
            .with_keep_alive(ping, ping)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &config.user {
            // etcd's auth tokens expire (5 min by default): get a new one when they do.
            opts = opts
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(ca) = &config.tls_ca {
            let path = ca.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
            let pem = read
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|source| Error::Io {
                    context: format!("reading etcd CA {}", ca.display()),
                    source,
                })?;
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(pem)),
            );
        }
        let client = Conn::new(config.endpoints.clone(), opts);
        // Connect now, so that a refusal (a wrong password, a bad endpoint) is an error here;
        // an etcd that is not up yet is none: the keeper and the watchers connect later.
        match tokio::time::timeout(config.connect_timeout, client.get()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !is_unavailable(&e) => {
                return Err(Error::Connect {
                    service: "etcd".into(),
                    endpoint: config.endpoints.join(","),
                    reason: e.to_string(),
                });
            }
            Ok(Err(e)) => tracing::warn!(
                endpoints = %config.endpoints.join(","),
                "etcd not reachable yet, connecting in the background: {e}"
            ),
            Err(_) => tracing::warn!(
                endpoints = %config.endpoints.join(","),
                "etcd not reachable yet, connecting in the background: no answer within {:?}",
                config.connect_timeout
            ),
        }
        Ok(EtcdRegistry {
            inner: Arc::new(Inner {
                client,
                config,
                shared: Arc::new(Shared::new()),
                keeper: Mutex::new(None),
            }),
        })
    }

    /// Checks that etcd answers (a read of the prefix).
    pub async fn ping(&self) -> Result<(), Error> {
        let client = self.inner.client.clone();
        let prefix = self.inner.config.prefix.clone();
        let read = async move {
            let opts = GetOptions::new().with_count_only();
            client.get().await?.get(prefix, Some(opts)).await
        };
        tokio::time::timeout(Duration::from_secs(2), read)
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

    /// The key of a service's service config.
    pub fn config_key(&self, service: &str) -> String {
        format!("{}/{service}", self.inner.config.config_prefix_str())
    }

    /// The current lease id, if any registration holds one.
    pub async fn lease_id(&self) -> Option<i64> {
        self.inner.shared.state().lease
    }

    /// Stops sending keepalives without revoking the lease, as a frozen process would: the
    /// keys expire after the TTL. For tests of expiry.
    #[doc(hidden)]
    pub fn abort_keepalive(&self) {
        self.inner.stop_keeper();
    }

    fn ensure_keeper(&self) {
        let mut keeper = self.inner.keeper.lock().unwrap_or_else(|p| p.into_inner());
        if keeper.as_ref().is_none_or(|h| h.is_finished()) {
            *keeper = Some(tokio::spawn(lease::keep(
                self.inner.client.clone(),
                self.inner.config.clone(),
                self.inner.shared.clone(),
            )));
        }
    }

    /// Waits until the keeper has put generation `g` of the keys in place, for at most
    /// the TTL; then gives the reason it has not (the keeper goes on trying).
    async fn settled(&self, g: u64, what: &str) -> Result<(), Error> {
        let mut done = self.inner.shared.done.subscribe();
        let wait = tokio::time::timeout(self.inner.config.ttl, done.wait_for(|d| *d >= g)).await;
        match wait {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let why = match &*self.inner.shared.status.borrow() {
                    RegistrationStatus::Unregistered(why) => why.clone(),
                    RegistrationStatus::Registered => "no answer from etcd".into(),
                };
                Err(Error::Connect {
                    service: "etcd".into(),
                    endpoint: self.inner.config.endpoints.join(","),
                    reason: format!("{what} not done yet, retrying in the background: {why}"),
                })
            }
        }
    }
}

/// The value with `"draining": true`, or `None` if it is not an instance's JSON.
fn draining_value(value: &str) -> Option<String> {
    let mut i: Instance = serde_json::from_str(value).ok()?;
    i.draining = true;
    serde_json::to_string(&i).ok()
}

impl EtcdRegistry {
    /// Puts the draining mark on `keys` under `lease`, in one transaction, bounded by the
    /// request timeout: watchers stop sending new calls before the keys go. A failure is
    /// only logged: the keys are removed next anyway.
    async fn mark_draining(&self, lease: i64, keys: &[(String, String)]) {
        use etcd_client::{PutOptions, Txn, TxnOp};
        let ops: Vec<TxnOp> = keys
            .iter()
            .filter_map(|(k, v)| {
                let v = draining_value(v)?;
                Some(TxnOp::put(
                    k.as_str(),
                    v,
                    Some(PutOptions::new().with_lease(lease)),
                ))
            })
            .collect();
        if ops.is_empty() {
            return;
        }
        let t = self.inner.config.request_timeout();
        let txn = async {
            self.inner
                .client
                .get()
                .await?
                .txn(Txn::new().and_then(ops))
                .await
        };
        match tokio::time::timeout(t, txn).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("draining mark not written: {e}"),
            Err(_) => tracing::debug!("draining mark not written within {t:?}"),
        }
    }
}

fn etcd_err(what: &str, e: etcd_client::Error) -> Error {
    Error::Connect {
        service: "etcd".into(),
        endpoint: what.into(),
        reason: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    /// Adds the instance to the registrations the keeper holds, and waits (up to the TTL)
    /// until it is in etcd. On an error the registration stays wanted: the keeper retries
    /// until it succeeds, or until `deregister` or `shutdown`.
    async fn register(&self, instance: &Instance) -> Result<(), Error> {
        instance.validate()?;
        let key = self.key(&instance.service, &instance.id);
        let value = serde_json::to_string(instance).expect("an Instance serialises");
        let g = {
            let mut s = self.inner.shared.state();
            if s.keys.get(&key) != Some(&value) {
                s.keys.insert(key, value);
                s.generation += 1;
                self.inner
                    .shared
                    .status
                    .send_replace(RegistrationStatus::Unregistered("registering".into()));
            }
            s.generation
        };
        self.inner.shared.wake.notify_one();
        self.ensure_keeper();
        self.settled(g, "registration").await
    }

    /// Marks the key draining (so that clients stop sending new calls to it at once), then
    /// deletes it.
    async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        let key = self.key(service, id);
        let (g, mark) = {
            let mut s = self.inner.shared.state();
            let value = s.keys.remove(&key);
            if value.is_some() {
                s.generation += 1;
            }
            (s.generation, value.zip(s.lease))
        };
        if let Some((value, lease)) = mark {
            self.mark_draining(lease, &[(key.clone(), value)]).await;
        }
        self.inner.shared.wake.notify_one();
        // Delete it directly too: the keeper may be stuck behind an outage, and the key may
        // be a stale one of an earlier process with the same id.
        let t = self.inner.config.request_timeout();
        let mut last = String::new();
        for _ in 0..3 {
            let delete = async {
                self.inner
                    .client
                    .get()
                    .await?
                    .delete(key.clone(), None)
                    .await
            };
            match tokio::time::timeout(t, delete).await {
                Ok(Ok(_)) => {
                    let keeper_runs = self
                        .inner
                        .keeper
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .is_some_and(|h| !h.is_finished());
                    return if keeper_runs {
                        self.settled(g, "deregistration").await
                    } else {
                        Ok(())
                    };
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {t:?}"),
            }
        }
        Err(Error::Connect {
            service: "etcd".into(),
            endpoint: self.inner.config.endpoints.join(","),
            reason: format!("delete {key}: {last}"),
        })
    }

    /// Lists the service's prefix (waiting up to the connect timeout for the first list),
    /// then watches it.
    async fn watch(&self, service: &str) -> Result<Instances, Error> {
        let (tx, rx) = tokio::sync::watch::channel(crate::registry::InstanceSet::new());
        let (first, listed) = tokio::sync::oneshot::channel();
        let prefix = format!("{}/{service}/", self.inner.config.prefix);
        tokio::spawn(watch::follow(
            self.inner.client.clone(),
            prefix,
            service.to_owned(),
            tx,
            first,
        ));
        // Return with the set etcd lists now, so that a new client's first call finds it;
        // with etcd unreachable, return at once with none and follow it when it answers.
        let t = self.inner.config.connect_timeout;
        if tokio::time::timeout(t, listed).await.is_err() {
            tracing::warn!(
                service,
                "etcd did not list the instances within {t:?}; following them in the background"
            );
        }
        Ok(rx)
    }

    /// Reads the config key (waiting up to the connect timeout for the first read), then
    /// watches it.
    async fn watch_config(&self, service: &str) -> Result<ConfigText, Error> {
        if service.is_empty() || service.contains('/') {
            return Err(Error::config(
                "service",
                format!("`{service}` must be non-empty, without '/'"),
            ));
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (first, read) = tokio::sync::oneshot::channel();
        tokio::spawn(watch::follow_key(
            self.inner.client.clone(),
            self.config_key(service),
            tx,
            first,
        ));
        // Return with what etcd holds now, so that a new client starts under it; with etcd
        // unreachable, return at once with none and apply it when it comes.
        let t = self.inner.config.connect_timeout;
        if tokio::time::timeout(t, read).await.is_err() {
            tracing::warn!(
                service,
                "the service config in etcd could not be read within {t:?}; following it in the background"
            );
        }
        Ok(rx)
    }

    /// Puts (or deletes) the config key, with no lease, retried up to three times within
    /// the request timeout each.
    async fn put_config(&self, service: &str, json: Option<&str>) -> Result<(), Error> {
        if service.is_empty() || service.contains('/') {
            return Err(Error::config(
                "service",
                format!("`{service}` must be non-empty, without '/'"),
            ));
        }
        if json.is_some_and(|j| j.len() > MAX_VALUE_BYTES) {
            return Err(Error::config(
                "service config",
                format!(
                    "is {} bytes, over the {MAX_VALUE_BYTES}-byte maximum of a registry value",
                    json.map_or(0, str::len)
                ),
            ));
        }
        let key = self.config_key(service);
        let t = self.inner.config.request_timeout();
        let mut last = String::new();
        for _ in 0..3 {
            let write = async {
                let mut kv = self.inner.client.get().await?;
                match json {
                    Some(j) => kv.put(key.clone(), j, None).await.map(drop),
                    None => kv.delete(key.clone(), None).await.map(drop),
                }
            };
            match tokio::time::timeout(t, write).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {t:?}"),
            }
        }
        Err(Error::Connect {
            service: "etcd".into(),
            endpoint: self.inner.config.endpoints.join(","),
            reason: format!("writing {key}: {last}"),
        })
    }

    /// Stops the keeper, marks every key draining, and revokes the lease (each bounded by
    /// the request timeout), so every key of this process vanishes at once.
    async fn shutdown(&self) -> Result<(), Error> {
        self.inner.stop_keeper();
        let (keys, lease) = {
            let s = self.inner.shared.state();
            (s.keys.clone().into_iter().collect::<Vec<_>>(), s.lease)
        };
        if let Some(lease) = lease {
            self.mark_draining(lease, &keys).await;
        }
        let ids = {
            let mut s = self.inner.shared.state();
            s.keys.clear();
            s.generation += 1;
            let mut ids = std::mem::take(&mut s.retired);
            ids.extend(s.lease.take());
            self.inner.shared.done.send_replace(s.generation);
            self.inner
                .shared
                .status
                .send_replace(RegistrationStatus::Registered);
            ids
        };
        let t = self.inner.config.request_timeout();
        let mut result = Ok(());
        for id in ids {
            let revoke = async { self.inner.client.get().await?.lease_revoke(id).await };
            match tokio::time::timeout(t, revoke).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.to_string().contains("not found") => {}
                Ok(Err(e)) => result = Err(etcd_err("lease revoke", e)),
                Err(_) => {
                    result = Err(Error::Connect {
                        service: "etcd".into(),
                        endpoint: "lease revoke".into(),
                        reason: format!("no answer within {t:?}; the lease expires after its TTL"),
                    })
                }
            }
        }
        result
    }

    fn status(&self) -> tokio::sync::watch::Receiver<RegistrationStatus> {
        self.inner.shared.status.subscribe()
    }

    fn lease_ttl(&self) -> Option<Duration> {
        Some(self.inner.config.ttl)
    }
}
