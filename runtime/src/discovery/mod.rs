//! Client-side discovery: a balanced pool over the live instances of a service, following a
//! [`Registry`] watch, with passive ejection of failing endpoints.
//!
//! - Instances added to the registry become endpoints (connected lazily); removed ones are
//!   dropped. Connections to instances that stay are kept across updates.
//! - Calls go round-robin over endpoints that are not ejected.
//! - Passive ejection: a transport failure (connection refused or reset) ejects the endpoint
//!   at once; three `UNAVAILABLE` answers in a row eject it too. An ejection lasts 5 s,
//!   doubling on each repeat up to 60 s; a success resets the count. Clients therefore stop
//!   sending to a killed instance long before its registration expires.
//! - A retry goes to a different endpoint than the one that just failed, when another exists.
//! - When every endpoint is ejected, calls still go out (to the one whose ejection ends
//!   first) rather than failing without trying.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
use crate::client::ClientConfig;
use crate::registry::{Instance, Instances, Registry};

const EJECT_BASE: Duration = Duration::from_secs(5);
const EJECT_MAX: Duration = Duration::from_secs(60);
const UNAVAILABLE_IN_A_ROW: u32 = 3;

/// One endpoint of the pool.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: Arc<str>,
    addr: String,
    pub(crate) channel: tonic::transport::Channel,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    unavailable_in_a_row: AtomicU32,
    /// Attempts sent to this endpoint (for benchmarks and dashboards).
    pub(crate) attempts: AtomicU64,
}

/// The live endpoints of one service.
#[derive(Debug)]
pub(crate) struct Pool {
    service: Arc<str>,
    slots: RwLock<Arc<[Arc<Slot>]>>,
    next: AtomicUsize,
    base: Instant,
    config: ClientConfig,
}

impl Pool {
    /// Follows `service` in `registry`.
    pub(crate) async fn start(
        service: &str,
        registry: &Arc<dyn Registry>,
        config: ClientConfig,
    ) -> Result<Arc<Pool>, Error> {
        let mut rx = registry.watch(service).await?;
        let pool = Arc::new(Pool {
            service: service.into(),
            slots: RwLock::new(Arc::from(Vec::new())),
            next: AtomicUsize::new(0),
            base: Instant::now(),
            config,
        });
        pool.update(&rx.borrow_and_update());
        tokio::spawn(follow(Arc::downgrade(&pool), rx));
        Ok(pool)
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn update(&self, instances: &[Instance]) {
        let old = self.slots.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut next = Vec::with_capacity(instances.len());
        for i in instances {
            if let Some(s) = old.iter().find(|s| *s.id == *i.id && s.addr == i.addr) {
                next.push(s.clone());
                continue;
            }
            let uri = match i.addr.parse::<http::Uri>() {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(service = %self.service, id = %i.id, addr = %i.addr, "skipping instance: {e}");
                    continue;
                }
            };
            match self.config.tonic_endpoint(&uri) {
                Ok(ep) => next.push(Arc::new(Slot {
                    id: i.id.as_str().into(),
                    addr: i.addr.clone(),
                    channel: ep.connect_lazy(),
                    ejected_until_ms: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    unavailable_in_a_row: AtomicU32::new(0),
                    attempts: AtomicU64::new(0),
                })),
                Err(e) => {
                    tracing::warn!(service = %self.service, id = %i.id, "skipping instance: {e}")
                }
            }
        }
        tracing::info!(
            service = %self.service,
            endpoints = next.len(),
            ids = ?next.iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
            "discovered endpoints changed"
        );
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) = next.into();
    }

    /// The live endpoints' ids.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.id.to_string())
            .collect()
    }

    /// Attempts sent so far to the endpoint `id`, if it is in the pool.
    pub(crate) fn attempts_to(&self, id: &str) -> Option<u64> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| &*s.id == id)
            .map(|s| s.attempts.load(Ordering::Relaxed))
    }

    /// Picks the endpoint for one attempt: round-robin over endpoints not ejected, other
    /// than `avoid` when possible.
    pub(crate) fn pick(&self, avoid: Option<&str>) -> Option<Arc<Slot>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner()).clone();
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let now = self.now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let live = |s: &Slot| s.ejected_until_ms.load(Ordering::Acquire) <= now;
        let order = (0..n).map(|k| &slots[(start + k) % n]);
        order
            .clone()
            .find(|s| live(s) && avoid != Some(&*s.id))
            .or_else(|| order.clone().find(|s| live(s)))
            .or_else(|| {
                // Everything is ejected: try the one whose ejection ends first.
                slots
                    .iter()
                    .filter(|s| avoid != Some(&*s.id) || n == 1)
                    .min_by_key(|s| s.ejected_until_ms.load(Ordering::Acquire))
            })
            .cloned()
            .inspect(|s| {
                s.attempts.fetch_add(1, Ordering::Relaxed);
            })
    }

    /// Reports one attempt's outcome on `slot`.
    pub(crate) fn report(&self, slot: &Slot, outcome: Health) {
        match outcome {
            Health::Ok => {
                slot.unavailable_in_a_row.store(0, Ordering::Release);
                if slot.ejected_until_ms.load(Ordering::Acquire) <= self.now_ms() {
                    slot.ejections.store(0, Ordering::Release);
                }
            }
            Health::Unavailable => {
                let n = slot.unavailable_in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= UNAVAILABLE_IN_A_ROW {
                    self.eject(slot, "repeated UNAVAILABLE");
                }
            }
            Health::TransportFailure => self.eject(slot, "connection failed"),
        }
    }

    fn eject(&self, slot: &Slot, why: &str) {
        let now = self.now_ms();
        if slot.ejected_until_ms.load(Ordering::Acquire) > now {
            return; // already out
        }
        let k = slot.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let d = EJECT_BASE.saturating_mul(1 << k).min(EJECT_MAX);
        slot.ejected_until_ms
            .store(now + d.as_millis() as u64, Ordering::Release);
        slot.unavailable_in_a_row.store(0, Ordering::Release);
        tracing::warn!(
            service = %self.service, id = %slot.id, addr = %slot.addr,
            ejected_for_ms = d.as_millis() as u64,
            "ejecting endpoint: {why}"
        );
    }

    /// The service name.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }
}

/// What one attempt says about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Ok,
    Unavailable,
    TransportFailure,
}

async fn follow(pool: Weak<Pool>, mut rx: Instances) {
    while rx.changed().await.is_ok() {
        let Some(pool) = pool.upgrade() else { return };
        let set = rx.borrow_and_update().clone();
        pool.update(&set);
    }
}
