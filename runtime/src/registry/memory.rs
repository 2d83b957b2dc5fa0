use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{ConfigText, Instance, InstanceSet, Instances, Registry};
use crate::Error;

/// The shortest lease TTL a memory registry accepts.
const MIN_TTL: Duration = Duration::from_millis(50);
/// The default lease TTL, as for etcd.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The embedded registry: in-process, no server, with the liveness of etcd.
///
/// Every registry made by [`MemoryRegistry::global`] (and `memory://`) shares one table, so
/// services started in one process find each other. Each such handle holds its own *lease*,
/// like one etcd client: its registrations live while a keepalive task (started on the tokio
/// runtime of the first `register`, renewing every TTL/3) runs. When that task dies with its
/// runtime, or every clone of the handle is dropped without [`Registry::shutdown`], the
/// registrations disappear within the TTL (default 10 s; `memory://?ttl=2s`). A crashed
/// in-process service therefore leaves discovery as a crashed etcd-registered one does.
/// Clones of a handle share its lease.
///
/// ```
/// use steadfast::registry::{Instance, MemoryRegistry, Registry};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
/// let reg = MemoryRegistry::new();
/// let mut users = reg.watch("user-svc").await?;
/// reg.register(&Instance::new("user-svc", "u1", "http://127.0.0.1:50051")).await?;
/// users.changed().await.unwrap();
/// assert!(users.borrow().contains("u1"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryRegistry {
    table: Arc<Table>,
    lease: Arc<Lease>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        MemoryRegistry::new()
    }
}

#[derive(Debug, Default)]
struct Table {
    state: Mutex<State>,
    next_lease: AtomicU64,
    /// Whether a reaper task is alive; it dies with its runtime and is started again by the
    /// next register, renewal or watch.
    reaping: AtomicBool,
    /// Wakes the reaper when a lease is granted or renewed.
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<String, Service>,
    /// Lease id -> when it expires.
    leases: HashMap<u64, Instant>,
    /// Service -> its service config text, stored without a lease.
    configs: HashMap<String, watch::Sender<Option<Arc<str>>>>,
}

#[derive(Debug)]
struct Service {
    /// The live set, changed in place: a change costs watchers work proportional to it.
    tx: watch::Sender<InstanceSet>,
    /// Instance id -> the lease it lives under.
    entries: HashMap<String, u64>,
}

impl Service {
    fn new() -> Self {
        Service {
            tx: watch::channel(InstanceSet::new()).0,
            entries: HashMap::new(),
        }
    }

    fn put(&mut self, instance: Instance, lease: u64) {
        self.entries.insert(instance.id.clone(), lease);
        self.tx.send_if_modified(|set| set.insert(instance));
    }

    fn remove(&mut self, id: &str) -> bool {
        let removed = self.entries.remove(id).is_some();
        if removed {
            self.tx.send_if_modified(|set| set.remove(id).is_some());
        }
        removed
    }

    /// Removes every instance that lives under a lease `gone` says is gone.
    fn remove_leases(&mut self, gone: impl Fn(u64) -> bool) {
        let ids: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, lease)| gone(**lease))
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        for id in &ids {
            self.entries.remove(id);
        }
        self.tx.send_modify(|set| {
            for id in &ids {
                set.remove(id);
            }
        });
    }
}

#[derive(Debug)]
struct Lease {
    id: u64,
    ttl: Duration,
    keeping_alive: AtomicBool,
    /// What this lease registered, to put back if it expired while its owner was frozen.
    registered: Mutex<HashMap<(String, String), Instance>>,
    table: Weak<Table>,
}

impl MemoryRegistry {
    /// A new, empty table, with one lease of the default TTL.
    pub fn new() -> Self {
        Self::on(Arc::new(Table::default()), DEFAULT_TTL)
    }

    /// A handle on the process-wide table with a lease of its own.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<Arc<Table>> = OnceLock::new();
        Self::on(GLOBAL.get_or_init(Arc::default).clone(), DEFAULT_TTL)
    }

    /// Another handle on the same table with a lease of its own: one per simulated process.
    pub fn session(&self) -> Self {
        Self::on(self.table.clone(), self.lease.ttl)
    }

    /// This handle with a new lease of `ttl` (at least 50 ms).
    pub fn with_ttl(self, ttl: Duration) -> Result<Self, Error> {
        if ttl < MIN_TTL {
            return Err(Error::config(
                "registry.memory.ttl",
                format!("ttl is {ttl:?}, under the 50ms minimum; write for example ttl=2s"),
            ));
        }
        Ok(Self::on(self.table.clone(), ttl))
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// Parses the part of `memory://...` after the scheme: empty, or `?ttl=2s`.
    pub(crate) fn from_url_rest(rest: &str) -> Result<Self, Error> {
        let mut reg = MemoryRegistry::global();
        let query = rest
            .strip_prefix('?')
            .or_else(|| rest.split_once("/?").map(|(_, q)| q));
        let Some(query) = query else {
            if rest.is_empty() || rest == "/" {
                return Ok(reg);
            }
            return Err(Error::config(
                "registry",
                format!("`memory://{rest}`: write memory:// or memory://?ttl=2s"),
            ));
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ttl", v)) => {
                    let ttl = crate::duration::parse(v)
                        .map_err(|e| Error::config("registry.memory.ttl", e))?;
                    reg = reg.with_ttl(ttl)?;
                }
                _ => {
                    return Err(Error::config(
                        "registry",
                        format!("unknown memory registry option `{pair}`; the only one is ttl"),
                    ));
                }
            }
        }
        Ok(reg)
    }

    fn on(table: Arc<Table>, ttl: Duration) -> Self {
        let id = table.next_lease.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(Lease {
            id,
            ttl,
            keeping_alive: AtomicBool::new(false),
            registered: Mutex::default(),
            table: Arc::downgrade(&table),
        });
        MemoryRegistry { table, lease }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.table.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_keepalive(&self) {
        if self.lease.keeping_alive.swap(true, Ordering::AcqRel) {
            return;
        }
        let lease = Arc::downgrade(&self.lease);
        let every = self.lease.ttl / 3;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                ticks.tick().await;
                let Some(lease) = lease.upgrade() else { return };
                let Some(table) = lease.table.upgrade() else {
                    return;
                };
                renew(&table, &lease);
            }
        });
    }
}

impl Table {
    /// Starts the reaper on the current runtime unless one is alive.
    fn ensure_reaper(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.reaping.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let table = Arc::downgrade(self);
        tokio::spawn(async move {
            struct Alive(Weak<Table>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    if let Some(t) = self.0.upgrade() {
                        t.reaping.store(false, Ordering::Release);
                    }
                }
            }
            let _alive = Alive(table.clone());
            // The reaper keeps its table alive while it waits: it is one task per table and
            // runtime, and it ends with the runtime.
            let Some(t) = table.upgrade() else { return };
            loop {
                let wake = t.wake.notified();
                let next = t.reap(Instant::now());
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake => {}
                        }
                    }
                    None => wake.await,
                }
            }
        });
    }

    /// Ends every lease that expired by `now`; returns the next expiry.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<u64> = state
            .leases
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            state.leases.remove(id);
            tracing::warn!(
                lease = id,
                "memory registry: lease expired; removing its instances"
            );
        }
        if !expired.is_empty() {
            for svc in state.services.values_mut() {
                svc.remove_leases(|lease| expired.contains(&lease));
            }
        }
        state.leases.values().min().copied()
    }
}

/// Pushes the lease's expiry out by its TTL; re-registers its instances if it had expired
/// (its owner was frozen for longer than the TTL).
fn renew(table: &Arc<Table>, lease: &Lease) {
    let expires = Instant::now() + lease.ttl;
    let lost = {
        let mut state = table.state.lock().unwrap_or_else(|p| p.into_inner());
        state.leases.insert(lease.id, expires).is_none()
    };
    if lost {
        let instances = lease
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect::<Vec<_>>();
        if !instances.is_empty() {
            tracing::warn!(
                lease = lease.id,
                "memory registry: lease had expired; registering again"
            );
        }
        let mut state = table.state.lock().unwrap_or_else(|p| p.into_inner());
        for i in instances {
            put(&mut state, i, lease.id);
        }
    }
    table.wake.notify_one();
    table.ensure_reaper();
}

fn put(state: &mut State, instance: Instance, lease: u64) {
    let svc = state
        .services
        .entry(instance.service.clone())
        .or_insert_with(Service::new);
    svc.put(instance, lease);
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, instance: &Instance) -> Result<(), Error> {
        instance.validate()?;
        {
            let mut reg = self
                .lease
                .registered
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            reg.insert(
                (instance.service.clone(), instance.id.clone()),
                instance.clone(),
            );
        }
        {
            let mut state = self.state();
            let expires = Instant::now() + self.lease.ttl;
            state.leases.entry(self.lease.id).or_insert(expires);
            put(&mut state, instance.clone(), self.lease.id);
        }
        self.table.wake.notify_one();
        self.table.ensure_reaper();
        self.start_keepalive();
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        self.lease
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(service.to_owned(), id.to_owned()));
        let mut state = self.state();
        if let Some(svc) = state.services.get_mut(service) {
            svc.remove(id);
        }
        Ok(())
    }

    async fn watch(&self, service: &str) -> Result<Instances, Error> {
        self.table.ensure_reaper();
        let mut state = self.state();
        Ok(state
            .services
            .entry(service.to_owned())
            .or_insert_with(Service::new)
            .tx
            .subscribe())
    }

    async fn watch_config(&self, service: &str) -> Result<ConfigText, Error> {
        let mut state = self.state();
        Ok(state
            .configs
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe())
    }

    async fn put_config(&self, service: &str, json: Option<&str>) -> Result<(), Error> {
        let text: Option<Arc<str>> = json.map(Arc::from);
        let mut state = self.state();
        state
            .configs
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .send_if_modified(|cur| {
                let changed = *cur != text;
                *cur = text;
                changed
            });
        Ok(())
    }

    /// Revokes this handle's lease: its registrations vanish at once.
    async fn shutdown(&self) -> Result<(), Error> {
        self.lease
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut state = self.state();
        state.leases.remove(&self.lease.id);
        let id = self.lease.id;
        for svc in state.services.values_mut() {
            svc.remove_leases(|lease| lease == id);
        }
        Ok(())
    }
}
