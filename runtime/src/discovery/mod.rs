//! Client-side discovery: a balanced pool over the live instances of a service, following a
//! [`Registry`] watch, with outlier detection and panic mode.
//!
//! - Instances added to the registry become endpoints (connected lazily); removed ones are
//!   dropped. Connections to instances that stay are kept across updates.
//! - Calls go round-robin over endpoints that are not ejected; a retry goes to another
//!   endpoint than the one that just failed, when another exists; a breaker's half-open probe
//!   goes to an endpoint in good standing.
//! - [`OutlierDetection`] (gRFC A50 and Envoy) decides ejections from each attempt's
//!   outcome as [`crate::outcome`] classifies it: a connection failure ejects at once, five
//!   failures in a row while another endpoint answers eject at once; the success-rate and
//!   failure-percentage rules run every interval; a failure every replica shares ejects no
//!   one; our own timeouts count as failures but are not connection failures; statuses
//!   relayed from a deeper hop count for nothing. Ejections grow with repeats and shrink
//!   back once the endpoint is healthy.
//! - An attempt that never reached a server (connection refused) is sent again at once to
//!   another endpoint, not counted as an attempt (see [`crate::outcome`]).
//! - Grace: an instance the registry stops listing without having announced it is
//!   draining (its lease was lost: etcd expires every lease at once when it resumes after
//!   a freeze, and the keys come back milliseconds later; or its process can no longer
//!   reach etcd) stays an endpoint for a grace period (twice the lease TTL by default)
//!   while its connection works: it is dropped at its first connection failure or
//!   ejection (at once if it is ejected already), at the end of the grace period, or at
//!   once if the registry lists its id at another address. So neither
//!   a whole set nor part of it vanishing at once fails calls that would succeed. An
//!   instance that deregisters gracefully is first listed as
//!   [`draining`](crate::registry::Instance::draining) and leaves the pool at once.
//! - Panic mode (Envoy's `healthy_panic_threshold`): when fewer than the threshold share of
//!   endpoints (default 50 %) is in good standing, calls are balanced over all of them,
//!   ejected or not, instead of piling onto the few that are left.

mod outlier;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

pub use crate::spec::outlier::{FailurePercentageEjection, OutlierDetection, SuccessRateEjection};

use crate::Error;
use crate::connection::Connection;
use crate::outcome::{AttemptOutcome, EndpointEffect};
use crate::registry::set::Fnv;
use crate::registry::{Change, Instance, InstanceSet, Instances, Registry};

/// One endpoint of the pool.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: Arc<str>,
    pub(crate) addr: Arc<str>,
    /// Its connection: its own, or one shared with other pools
    /// ([`ClientConfig::share_connections`](crate::client::ClientConfig::share_connections)).
    pub(crate) channel: Arc<Connection>,
    /// Ejected while the pool's clock is below this (ms); 0 = never ejected.
    ejected_until_ms: AtomicU64,
    /// A50's ejection multiplier: up by one per ejection, down by one per healthy interval.
    multiplier: AtomicU32,
    successes: AtomicU64,
    failures: AtomicU64,
    local_in_a_row: AtomicU32,
    failures_in_a_row: AtomicU32,
    /// Attempts sent to this endpoint (for tests, benchmarks and dashboards).
    pub(crate) attempts: AtomicU64,
    /// While the registry no longer lists it: until when it is kept (pool clock, ms); 0
    /// while it is listed.
    unlisted_until_ms: AtomicU64,
}

impl Slot {
    fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Acquire) > now_ms
    }
}

/// Connects (lazily) to a discovered address, with the client's connection settings and
/// TLS; may hand out a connection shared with other clients.
pub(crate) type Connect = Arc<dyn Fn(&http::Uri) -> Result<Arc<Connection>, Error> + Send + Sync>;

/// What a pool needs from its client: how to connect, and the balancing rules.
#[derive(Clone)]
pub(crate) struct PoolConfig {
    pub(crate) connect: Connect,
    pub(crate) outlier_detection: OutlierDetection,
    /// Envoy's healthy panic threshold, in percent.
    pub(crate) panic_threshold: u32,
    /// How long to keep the last set when the registry lists none (default: twice the
    /// registry's lease TTL).
    pub(crate) grace: Option<Duration>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("outlier_detection", &self.outlier_detection)
            .field("panic_threshold", &self.panic_threshold)
            .finish_non_exhaustive()
    }
}

/// Slots per chunk of [`Slots`].
const CHUNK: usize = 64;

/// The endpoints, as a persistent vector in chunks: a new version shares every chunk it did
/// not change, so adding or removing one endpoint copies N / 64 pointers and one or two
/// chunks, and never touches the other endpoints.
#[derive(Clone, Debug, Default)]
struct Slots {
    chunks: Arc<Vec<Arc<Vec<Arc<Slot>>>>>,
    len: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> &Arc<Slot> {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Slot>> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    fn push(&mut self, slot: Arc<Slot>) {
        let chunks = Arc::make_mut(&mut self.chunks);
        match chunks.last_mut() {
            Some(c) if c.len() < CHUNK => Arc::make_mut(c).push(slot),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(slot);
                chunks.push(Arc::new(c));
            }
        }
        self.len += 1;
    }

    /// Removes the slot at `i` and moves the last one into its place; returns the one moved.
    fn swap_remove(&mut self, i: usize) -> Option<Arc<Slot>> {
        let chunks = Arc::make_mut(&mut self.chunks);
        let last = {
            let tail = Arc::make_mut(chunks.last_mut()?);
            let last = tail.pop();
            if tail.is_empty() {
                chunks.pop();
            }
            last?
        };
        self.len -= 1;
        if i == self.len {
            return None;
        }
        Arc::make_mut(&mut chunks[i / CHUNK])[i % CHUNK] = last.clone();
        Some(last)
    }
}

/// The slots, and those in good standing, as of `until_ms` at the latest.
#[derive(Debug, Default)]
struct View {
    all: Slots,
    /// Indices into `all` of the endpoints in good standing; `None` when all are.
    healthy: Option<Box<[u32]>>,
    /// When the earliest ejection in force ends (pool clock, ms): the view is stale then.
    until_ms: u64,
}

/// What the pool's updates work on, under one lock.
#[derive(Debug, Default)]
struct Table {
    slots: Slots,
    /// Endpoint id -> its index in `slots`.
    by_id: HashMap<Arc<str>, usize, Fnv>,
    /// The registry's set as last applied: the next one is compared with it.
    applied: InstanceSet,
    /// The endpoints kept although the registry no longer lists them.
    unlisted: Vec<Arc<Slot>>,
    /// The end of the latest ejection decided (pool clock, ms): none is in force after it.
    ejections_until_ms: u64,
}

impl Table {
    /// Removes the endpoint at `i`.
    fn remove_at(&mut self, i: usize) -> Arc<Slot> {
        let gone = self.slots.get(i).clone();
        self.by_id.remove(&gone.id);
        if let Some(moved) = self.slots.swap_remove(i) {
            self.by_id.insert(moved.id.clone(), i);
        }
        if gone.unlisted_until_ms.load(Ordering::Acquire) != 0 {
            self.unlisted.retain(|s| !Arc::ptr_eq(s, &gone));
        }
        gone
    }

    /// The index of `slot`, if it is still in the pool.
    fn index_of(&self, slot: &Slot) -> Option<usize> {
        let k = *self.by_id.get(&slot.id)?;
        std::ptr::eq(&**self.slots.get(k), slot).then_some(k)
    }
}

/// The live endpoints of one service.
#[derive(Debug)]
pub(crate) struct Pool {
    service: Arc<str>,
    table: Mutex<Table>,
    /// What a pick needs, kept so that picking is O(1): published after every change of the
    /// endpoints, on an ejection, and when the earliest ejection in force ends.
    view: RwLock<Arc<View>>,
    next: AtomicUsize,
    base: Instant,
    config: PoolConfig,
    /// Starts as `config.outlier_detection`; a new service config may replace it.
    od: RwLock<OutlierDetection>,
    grace: Duration,
    /// Dropped with the pool: ends the task that follows the registry, and so its watch.
    _stop: oneshot::Sender<()>,
}

impl Pool {
    /// Follows `service` in `registry`.
    pub(crate) async fn start(
        service: &str,
        registry: &Arc<dyn Registry>,
        config: PoolConfig,
    ) -> Result<Arc<Pool>, Error> {
        let mut rx = registry.watch(service).await?;
        let grace = config
            .grace
            .or_else(|| registry.lease_ttl().map(|ttl| ttl * 2))
            .unwrap_or(Duration::ZERO);
        let (stop, stopped) = oneshot::channel();
        let pool = Arc::new(Pool {
            service: service.into(),
            table: Mutex::default(),
            view: RwLock::new(Arc::new(View {
                until_ms: u64::MAX,
                ..View::default()
            })),
            next: AtomicUsize::new(0),
            base: Instant::now(),
            od: RwLock::new(config.outlier_detection),
            config,
            grace,
            _stop: stop,
        });
        let first = rx.borrow_and_update().clone();
        pool.update(&first);
        tokio::spawn(follow(Arc::downgrade(&pool), rx, stopped));
        tokio::spawn(sweep_every_interval(Arc::downgrade(&pool)));
        Ok(pool)
    }

    fn od(&self) -> OutlierDetection {
        *self.od.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the outlier detection settings (a new service config); ejections in force
    /// run out as they were decided.
    pub(crate) fn set_outlier_detection(&self, od: OutlierDetection) {
        *self.od.write().unwrap_or_else(|p| p.into_inner()) = od;
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> Slots {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all
            .clone()
    }

    /// Applies the registry's set: only what changed since the set last applied, so an
    /// update costs time proportional to the change. An endpoint the set no longer has is
    /// kept for the grace period (unless it was draining, or its id is now listed at another
    /// address).
    fn update(&self, set: &InstanceSet) {
        let now = self.now_ms();
        let mut t = self.table();
        let applied = std::mem::take(&mut t.applied);
        let (mut added, mut removed) = (0, 0);
        let mut failed = Vec::new();
        for change in set.changes_from(&applied) {
            match change {
                Change::Added(i) | Change::Updated { new: i, .. } => {
                    let (a, r) = self.list(&mut t, i);
                    added += a;
                    removed += r;
                    if a == 0 && !i.draining && !t.by_id.contains_key(i.id.as_str()) {
                        failed.push(i.id.as_str());
                    }
                }
                Change::Removed(i) => removed += self.unlist(&mut t, i, now),
            }
        }
        t.applied = set.clone();
        // An instance that could not become an endpoint (a bad address, a refused
        // connection set-up) is tried again at the next update, as if new.
        for id in failed {
            t.applied.remove(id);
        }
        if added + removed > 0 {
            tracing::info!(
                service = %self.service,
                endpoints = t.slots.len(),
                added,
                removed,
                "discovered endpoints changed"
            );
        }
        self.publish_view(&t);
    }

    /// Applies one listed instance; returns how many endpoints were added and removed.
    fn list(&self, t: &mut Table, i: &Instance) -> (usize, usize) {
        let mut removed = 0;
        if let Some(k) = t.by_id.get(i.id.as_str()).copied() {
            let s = t.slots.get(k).clone();
            if i.draining {
                t.remove_at(k);
                return (0, 1);
            }
            if *s.addr == *i.addr {
                // Listed again (its grace period, if any, ends), or only its metadata changed.
                if s.unlisted_until_ms.swap(0, Ordering::AcqRel) != 0 {
                    t.unlisted.retain(|u| !Arc::ptr_eq(u, &s));
                }
                return (0, 0);
            }
            // Listed again at another address: the old one goes at once.
            t.remove_at(k);
            removed = 1;
        } else if i.draining {
            return (0, 0);
        }
        let uri = match i.addr.parse::<http::Uri>() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(service = %self.service, id = %i.id, addr = %i.addr, "skipping instance: {e}");
                return (0, removed);
            }
        };
        match (self.config.connect)(&uri) {
            Ok(channel) => {
                let slot = Arc::new(Slot {
                    id: i.id.as_str().into(),
                    addr: i.addr.as_str().into(),
                    channel,
                    ejected_until_ms: AtomicU64::new(0),
                    multiplier: AtomicU32::new(0),
                    successes: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    local_in_a_row: AtomicU32::new(0),
                    failures_in_a_row: AtomicU32::new(0),
                    attempts: AtomicU64::new(0),
                    unlisted_until_ms: AtomicU64::new(0),
                });
                t.by_id.insert(slot.id.clone(), t.slots.len());
                t.slots.push(slot);
                (1, removed)
            }
            Err(e) => {
                tracing::warn!(service = %self.service, id = %i.id, "skipping instance: {e}");
                (0, removed)
            }
        }
    }

    /// Applies one instance the registry no longer lists; returns how many endpoints were
    /// removed. One that did not drain is kept while the grace lasts and it works (an
    /// ejected endpoint does not work, and would hold an ejection slot another endpoint may
    /// need).
    fn unlist(&self, t: &mut Table, i: &Instance, now: u64) -> usize {
        let Some(k) = t.by_id.get(i.id.as_str()).copied() else {
            return 0;
        };
        let s = t.slots.get(k).clone();
        if self.grace.is_zero() || s.is_ejected(now) {
            t.remove_at(k);
            return 1;
        }
        if s.unlisted_until_ms.load(Ordering::Acquire) == 0 {
            let until = now + self.grace.as_millis() as u64;
            s.unlisted_until_ms.store(until.max(1), Ordering::Release);
            tracing::warn!(
                service = %self.service, id = %s.id, addr = %s.addr,
                grace_ms = self.grace.as_millis() as u64,
                "the registry no longer lists this instance and it did not drain; \
                 keeping it while its connection works"
            );
            t.unlisted.push(s);
        }
        0
    }

    /// When the first grace period of an unlisted endpoint ends, if the pool holds one.
    fn stale_deadline(&self) -> Option<Instant> {
        self.table()
            .unlisted
            .iter()
            .map(|s| s.unlisted_until_ms.load(Ordering::Acquire))
            .filter(|ms| *ms != 0)
            .min()
            .map(|ms| self.base + Duration::from_millis(ms))
    }

    /// Drops the unlisted endpoints whose grace period is over.
    fn expire_stale(&self) {
        let now = self.now_ms();
        let mut t = self.table();
        let over: Vec<Arc<Slot>> = t
            .unlisted
            .iter()
            .filter(|s| s.unlisted_until_ms.load(Ordering::Acquire) <= now)
            .cloned()
            .collect();
        if over.is_empty() {
            return;
        }
        for s in &over {
            if let Some(k) = t.index_of(s) {
                t.remove_at(k);
            }
        }
        tracing::warn!(
            service = %self.service, left = t.slots.len(),
            "grace period over; dropping the instances the registry no longer lists"
        );
        self.publish_view(&t);
    }

    /// Drops `slot`, which the registry no longer lists (its connection failed).
    fn drop_stale(&self, slot: &Slot) {
        self.drop_unlisted(&mut self.table(), slot, "its connection failed");
    }

    /// Drops `slot` if the registry no longer lists it (decided under the table lock: one
    /// listed again since the caller looked stays), saying `why`. Whether it was unlisted.
    fn drop_unlisted(&self, t: &mut Table, slot: &Slot, why: &str) -> bool {
        if slot.unlisted_until_ms.load(Ordering::Acquire) == 0 {
            return false;
        }
        if let Some(k) = t.index_of(slot) {
            t.remove_at(k);
            tracing::warn!(
                service = %self.service, id = %slot.id, addr = %slot.addr, left = t.slots.len(),
                "dropping an instance the registry no longer lists: {why}"
            );
            self.publish_view(t);
        }
        true
    }

    /// The live endpoints' ids, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.snapshot().iter().map(|s| s.id.to_string()).collect();
        ids.sort_unstable();
        ids
    }

    /// The ids of the endpoints ejected now.
    pub(crate) fn ejected_ids(&self) -> Vec<String> {
        let now = self.now_ms();
        self.snapshot()
            .iter()
            .filter(|s| s.is_ejected(now))
            .map(|s| s.id.to_string())
            .collect()
    }

    /// Attempts sent so far to the endpoint `id`, if it is in the pool.
    pub(crate) fn attempts_to(&self, id: &str) -> Option<u64> {
        self.snapshot()
            .iter()
            .find(|s| &*s.id == id)
            .map(|s| s.attempts.load(Ordering::Relaxed))
    }

    /// Publishes the view of `t` now. O(1) while no ejection is in force; while one is, the
    /// endpoints in good standing are listed anew (O(N), on ejections and their ends only,
    /// and on updates made during one).
    fn publish_view(&self, t: &Table) {
        let now = self.now_ms();
        let mut healthy = None;
        let mut until_ms = u64::MAX;
        if t.ejections_until_ms > now {
            let mut ok = Vec::with_capacity(t.slots.len());
            for (k, s) in t.slots.iter().enumerate() {
                let until = s.ejected_until_ms.load(Ordering::Acquire);
                if until > now {
                    until_ms = until_ms.min(until);
                } else {
                    ok.push(k as u32);
                }
            }
            if ok.len() < t.slots.len() {
                healthy = Some(ok.into_boxed_slice());
            }
        }
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View {
            all: t.slots.clone(),
            healthy,
            until_ms,
        });
    }

    /// Publishes the view anew (an ejection began or ended).
    fn refresh_view(&self) {
        let t = self.table();
        self.publish_view(&t);
    }

    /// The view, published anew first if an ejection has ended since it was. A pick never
    /// waits for an update in progress (which publishes a fresh view when it is done), and
    /// of the picks that find the view stale at once, only the first rebuilds it.
    fn view(&self, now: u64) -> Arc<View> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        if now < view.until_ms {
            return view;
        }
        let t = match self.table.try_lock() {
            Ok(t) => t,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return view,
        };
        let current = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        if now < current.until_ms {
            return current;
        }
        self.publish_view(&t);
        drop(t);
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Picks the endpoint for one attempt: round-robin over endpoints in good standing (over
    /// all of them in panic mode, except for probes), other than `avoid` when possible.
    /// O(1): the endpoints in good standing are kept in the pool's view.
    pub(crate) fn pick(&self, avoid: Option<&str>, probe: bool) -> Option<Arc<Slot>> {
        let view = self.view(self.now_ms());
        let n = view.all.len();
        if n == 0 {
            return None;
        }
        let healthy = view.healthy.as_deref().filter(|h| !h.is_empty());
        let good = view.healthy.as_ref().map_or(n, |h| h.len());
        let panic = good * 100 < self.config.panic_threshold as usize * n;
        let at = |k: usize| match healthy {
            Some(h) if probe || !panic => view.all.get(h[k % h.len()] as usize),
            _ => view.all.get(k % n),
        };
        let len = match healthy {
            Some(h) if probe || !panic => h.len(),
            _ => n,
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut slot = at(start);
        if len > 1 && avoid == Some(&*slot.id) {
            slot = at(start + 1);
        }
        slot.attempts.fetch_add(1, Ordering::Relaxed);
        Some(slot.clone())
    }

    /// Reports one attempt's outcome on `slot`.
    pub(crate) fn report(&self, slot: &Slot, outcome: AttemptOutcome) {
        let effect = outcome.endpoint_effect();
        match effect {
            EndpointEffect::Ignore => return,
            EndpointEffect::Success => {
                slot.successes.fetch_add(1, Ordering::Relaxed);
                slot.local_in_a_row.store(0, Ordering::Relaxed);
                slot.failures_in_a_row.store(0, Ordering::Relaxed);
                return;
            }
            EndpointEffect::Failure | EndpointEffect::LocalFailure => {
                slot.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if effect == EndpointEffect::LocalFailure
            && slot.unlisted_until_ms.load(Ordering::Acquire) != 0
        {
            // The registry no longer lists it and it cannot be reached: it is really gone.
            self.drop_stale(slot);
            return;
        }
        let od = self.od();
        let local = if effect == EndpointEffect::LocalFailure {
            slot.local_in_a_row.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            0
        };
        let any = slot.failures_in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
        let local_due = od
            .consecutive_local_origin_failure
            .is_some_and(|n| local >= n);
        let any_due = od.consecutive_failure.is_some_and(|n| any >= n);
        if !(local_due || any_due) {
            return;
        }
        let now = self.now_ms();
        if slot.is_ejected(now) {
            return;
        }
        let slots = self.snapshot();
        let ejected = slots.iter().filter(|s| s.is_ejected(now)).count();
        if !od.may_eject(ejected, slots.len()) {
            return;
        }
        // Failures that every endpoint shares (a common dependency is down) eject nobody:
        // only eject while another endpoint in good standing answered its last call.
        let others_answer = || {
            slots.iter().any(|s| {
                !std::ptr::eq(&**s, slot)
                    && !s.is_ejected(now)
                    && s.failures_in_a_row.load(Ordering::Relaxed) == 0
            })
        };
        let why = if local_due {
            "connection failed"
        } else if others_answer() {
            "consecutive failures"
        } else {
            return;
        };
        slot.local_in_a_row.store(0, Ordering::Relaxed);
        slot.failures_in_a_row.store(0, Ordering::Relaxed);
        self.eject(slot, now, why);
    }

    fn eject(&self, slot: &Slot, now: u64, why: &str) {
        let mut t = self.table();
        // An unlisted endpoint is kept only while it works, and it does not: gone, rather
        // than holding an ejection slot another endpoint may need.
        if self.drop_unlisted(&mut t, slot, why) {
            return;
        }
        let multiplier = slot
            .multiplier
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let d = self.od().ejection_time(multiplier);
        let until = now + d.as_millis() as u64;
        slot.ejected_until_ms.store(until, Ordering::Release);
        t.ejections_until_ms = t.ejections_until_ms.max(until);
        self.publish_view(&t);
        drop(t);
        tracing::warn!(
            service = %self.service, id = %slot.id, addr = %slot.addr,
            ejected_for_ms = d.as_millis() as u64,
            "ejecting endpoint: {why}"
        );
    }

    /// The interval sweep: runs the A50 rules over the interval's counts, ejects the
    /// outliers, and lowers the multiplier of every endpoint that is not ejected.
    fn sweep(&self) {
        let now = self.now_ms();
        let slots = self.snapshot();
        let counts: Vec<outlier::Counts> = slots
            .iter()
            .map(|s| outlier::Counts {
                successes: s.successes.swap(0, Ordering::AcqRel),
                failures: s.failures.swap(0, Ordering::AcqRel),
                ejected: s.is_ejected(now),
            })
            .collect();
        let out = outlier::sweep(&self.od(), &counts, || fastrand::u32(0..100));
        let interval_ms = self.od().interval.as_millis() as u64;
        for (i, s) in slots.iter().enumerate() {
            if out.contains(&i) {
                let c = counts[i];
                self.eject(
                    s,
                    now,
                    &format!(
                        "outlier: {} of {} calls failed in the last interval",
                        c.failures,
                        c.successes + c.failures
                    ),
                );
            } else if s.ejected_until_ms.load(Ordering::Acquire) + interval_ms <= now {
                // Healthy for a whole interval since its last ejection ended.
                let _ = s
                    .multiplier
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| m.checked_sub(1));
            }
        }
    }

    /// The service name.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }
}

/// Applies every change of the registry's set, and the end of a grace period, until the
/// pool is dropped (which drops `rx` at once, and with it the registry's watch).
async fn follow(pool: Weak<Pool>, mut rx: Instances, mut stopped: oneshot::Receiver<()>) {
    loop {
        let Some(deadline) = pool.upgrade().map(|p| p.stale_deadline()) else {
            return;
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(pool) = pool.upgrade() else { return };
                let set = rx.borrow_and_update().clone();
                pool.update(&set);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let Some(pool) = pool.upgrade() else { return };
                pool.expire_stale();
            }
            _ = &mut stopped => return,
        }
    }
}

/// Sweeps every `interval` of the pool's outlier detection, read again after each sweep
/// (a new service config may change it).
async fn sweep_every_interval(pool: Weak<Pool>) {
    loop {
        let Some(interval) = pool.upgrade().map(|p| p.od().interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep();
    }
}

#[cfg(test)]
mod tests;

/// A registry whose one watch channel the caller publishes on (the bench, and the tests).
#[derive(Debug)]
struct OneWatch(tokio::sync::watch::Sender<InstanceSet>);

#[async_trait::async_trait]
impl Registry for OneWatch {
    async fn register(&self, _: &Instance) -> Result<(), Error> {
        Ok(())
    }
    async fn deregister(&self, _: &str, _: &str) -> Result<(), Error> {
        Ok(())
    }
    async fn watch(&self, _: &str) -> Result<Instances, Error> {
        Ok(self.0.subscribe())
    }
}

/// What the bench measures of a pool of `n` endpoints: how long one registry update takes
/// (one endpoint added to the set the registry changed in place; the median of 21), and one
/// pick with `ejected_pct` percent of the endpoints ejected, averaged over `picks`. For
/// `steadfast-examples`' bench; not public API.
#[doc(hidden)]
pub async fn measure_pool(n: usize, ejected_pct: usize, picks: u32) -> (Duration, Duration) {
    let instance = |i: usize| {
        Instance::new(
            "bench",
            format!("e{i}"),
            format!("http://127.0.0.1:{}", 1 + i % 60_000),
        )
    };
    let set: InstanceSet = (0..n).map(instance).collect();
    let registry: Arc<dyn Registry> =
        Arc::new(OneWatch(tokio::sync::watch::channel(set.clone()).0));
    let config = PoolConfig {
        connect: Arc::new(|uri| Ok(Arc::new(Connection::plain(uri)))),
        outlier_detection: OutlierDetection::default(),
        panic_threshold: 50,
        grace: Some(Duration::ZERO),
    };
    let Ok(pool) = Pool::start("bench", &registry, config).await else {
        return (Duration::ZERO, Duration::ZERO);
    };
    // As a registry publishes one more instance: the set it changed in place.
    let mut more = set.clone();
    let mut updates = Vec::new();
    for k in 0..21 {
        more.insert(instance(n + k));
        let started = std::time::Instant::now();
        pool.update(&more);
        updates.push(started.elapsed());
    }
    updates.sort_unstable();
    let update = updates[updates.len() / 2];

    let until = pool.now_ms() + 3_600_000;
    for s in pool.snapshot().iter().take(n * ejected_pct / 100) {
        s.ejected_until_ms.store(until, Ordering::Release);
    }
    pool.table().ejections_until_ms = until;
    pool.refresh_view();
    let started = std::time::Instant::now();
    for _ in 0..picks {
        std::hint::black_box(pool.pick(None, false));
    }
    (update, started.elapsed() / picks.max(1))
}
