//! The keeper: the one task that holds this process's lease and keeps every wanted key put
//! under it, whatever etcd does.
//!
//! Its loop, forever, with backoff (100 ms doubling up to TTL/3, at most 1 s) after a failure:
//! 1. no lease: grant one and open its keepalive stream at once (before any put);
//! 2. put every wanted key that is not put under the lease (and delete keys no longer wanted);
//!    then revoke the leases it replaced, bounded and in the background;
//! 3. keep the lease alive every TTL/3 and check that every key is still there (re-putting a
//!    key deleted by someone else) until a keepalive fails or the set of keys changes.
//!
//! Every etcd request has [`EtcdConfig::request_timeout`] (a quarter of the TTL), so a request
//! stuck on a frozen member is given up and retried, through another member, well before the
//! lease expires. State shared with the registry is behind a `std` mutex that is never held
//! across a request, so `register`, `deregister` and `shutdown` never wait behind an outage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::EtcdConfig;
use super::conn::Conn;
use crate::registry::RegistrationStatus;

/// What the registry wants, shared between its handles and the keeper.
#[derive(Debug, Default)]
pub(super) struct State {
    /// key -> JSON value of every wanted registration.
    pub(super) keys: BTreeMap<String, String>,
    /// Bumped on every change of `keys`.
    pub(super) generation: u64,
    /// The lease the keeper keeps alive now.
    pub(super) lease: Option<i64>,
    /// Leases replaced by a newer one and not yet revoked.
    pub(super) retired: Vec<i64>,
}

/// The keeper's side of the registry, without a reference back to it: the registry's handles
/// own the keeper task, never the other way round.
#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State>,
    /// Signals a change of `State::keys`.
    pub(super) wake: Notify,
    /// Whether every wanted key is known to be in etcd.
    pub(super) status: watch::Sender<RegistrationStatus>,
    /// The generation of `State::keys` last put in place.
    pub(super) done: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            status: watch::channel(RegistrationStatus::Registered).0,
            done: watch::channel(0).0,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_status(&self, status: RegistrationStatus) {
        self.status.send_if_modified(|cur| {
            let changed = *cur != status;
            if changed {
                match &status {
                    RegistrationStatus::Registered => tracing::info!("registered in etcd"),
                    RegistrationStatus::Unregistered(why) => {
                        tracing::warn!("not registered in etcd: {why}")
                    }
                }
                *cur = status;
            }
            changed
        });
    }
}

/// A lease with its keepalive stream open.
struct Held {
    id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    /// When etcd will expire it, as far as we know.
    alive_until: Instant,
}

/// Why the steady state ended.
enum Interrupt {
    /// The wanted keys changed.
    Changed,
    /// These keys are no longer in etcd under our lease.
    Missing(Vec<String>),
    /// The lease cannot be kept alive (or is gone).
    Lost(String),
}

/// Runs `fut` with the request timeout, as one etcd request.
async fn request<T>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from etcd within {t:?}")),
    }
}

/// Revokes `ids`, each bounded by `t`, in the background; a lease not revoked expires after
/// its TTL anyway.
pub(super) fn revoke_in_background(client: &Conn, ids: Vec<i64>, t: Duration) {
    if ids.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = client.clone();
    rt.spawn(async move {
        for id in ids {
            let revoke = async { client.get().await?.lease_revoke(id).await };
            if let Err(e) = request(t, revoke).await {
                tracing::debug!(lease = id, "revoking a replaced etcd lease failed: {e}");
            }
        }
    });
}

/// The keeper task. Runs until aborted (by `shutdown`, or when the registry is dropped).
pub(super) async fn keep(client: Conn, config: EtcdConfig, shared: Arc<Shared>) {
    let t = config.request_timeout();
    let every = config.ttl / 3;
    // At most a second between attempts: registered within a second of etcd coming back.
    let cap = every.clamp(Duration::from_millis(250), Duration::from_secs(1));
    let first = Duration::from_millis(100);
    let mut backoff = first;
    let mut held: Option<Held> = None;
    // key -> value put under `held`.
    let mut put: BTreeMap<String, String> = BTreeMap::new();
    // Since when the wanted keys are not all known to be in etcd.
    let mut failing_since: Option<Instant> = None;
    let mut failures: u32 = 0;
    // The keys last known to be in etcd, and until when their lease lives.
    let mut covered: (BTreeMap<String, String>, Instant) = (BTreeMap::new(), Instant::now());
    loop {
        let (generation, wanted) = {
            let s = shared.state();
            (s.generation, s.keys.clone())
        };
        let outcome = reconcile(&client, &config, &shared, &mut held, &mut put, &wanted).await;
        match outcome {
            Ok(()) => {
                let s = shared.state();
                if s.generation != generation {
                    continue;
                }
                // Under the lock, so a registration added meanwhile is not reported done.
                shared.set_status(RegistrationStatus::Registered);
                shared.done.send_replace(generation);
                drop(s);
                backoff = first;
                failing_since = None;
                failures = 0;
                if let Some(h) = &held {
                    covered = (wanted, h.alive_until);
                }
            }
            Err(why) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                // Still registered while the last lease we kept alive has not expired.
                let alive = covered.1 > Instant::now()
                    && wanted.iter().all(|(k, v)| covered.0.get(k) == Some(v));
                if !alive {
                    shared.set_status(RegistrationStatus::Unregistered(format!(
                        "{why} (retrying for {}s)",
                        since.elapsed().as_secs()
                    )));
                }
                failures = failures.saturating_add(1);
                // The first failure, then one in 30 (about every 30 s at the capped backoff).
                if failures % 30 == 1 {
                    tracing::warn!(
                        failures,
                        "etcd registration: {why}; retrying in {backoff:?}"
                    );
                } else {
                    tracing::debug!(
                        failures,
                        "etcd registration: {why}; retrying in {backoff:?}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.wake.notified() => {}
                }
                backoff = (backoff * 2).min(cap);
                continue;
            }
        }
        let Some(h) = held.as_mut() else {
            // Nothing wanted, no lease: wait for a registration.
            shared.wake.notified().await;
            continue;
        };
        let interrupt = steady(&client, t, every, h, &put, &shared).await;
        covered.1 = h.alive_until;
        match interrupt {
            Interrupt::Changed => {}
            Interrupt::Missing(keys) => {
                covered.1 = Instant::now();
                tracing::warn!(
                    ?keys,
                    "registrations deleted from etcd by someone else; putting them back"
                );
                for k in keys {
                    put.remove(&k);
                }
            }
            Interrupt::Lost(why) => {
                let old = held.take().map(|h| h.id);
                tracing::warn!(lease = ?old, "etcd lease keepalive failed ({why}); moving to a new lease");
                // Its keys stay until they are put under the new lease; then it is revoked.
                shared.state().retired.extend(old);
            }
        }
    }
}

/// Makes etcd hold exactly `wanted` under a live lease (one attempt at each step).
async fn reconcile(
    client: &Conn,
    config: &EtcdConfig,
    shared: &Shared,
    held: &mut Option<Held>,
    put: &mut BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Result<(), String> {
    let t = config.request_timeout();
    if wanted.is_empty() {
        // Nothing to keep: let the lease go (its keys, if any, were deleted one by one).
        for key in put.keys().cloned().collect::<Vec<_>>() {
            request(t, async {
                client.get().await?.delete(key.clone(), None).await
            })
            .await?;
            put.remove(&key);
        }
        let mut s = shared.state();
        let mut ids = std::mem::take(&mut s.retired);
        ids.extend(s.lease.take());
        drop(s);
        *held = None;
        revoke_in_background(client, ids, t);
        return Ok(());
    }
    if held.is_none() {
        put.clear();
        *held = Some(grant(client, config).await?);
        shared.state().lease = held.as_ref().map(|h| h.id);
    }
    let id = held.as_ref().map_or(0, |h| h.id);
    for (key, value) in wanted {
        if put.get(key) != Some(value) {
            let opts = PutOptions::new().with_lease(id);
            request(t, async {
                client
                    .get()
                    .await?
                    .put(key.clone(), value.clone(), Some(opts))
                    .await
            })
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
            put.insert(key.clone(), value.clone());
        }
    }
    let gone: Vec<String> = put
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        request(t, async {
            client.get().await?.delete(key.clone(), None).await
        })
        .await
        .map_err(|e| format!("delete {key}: {e}"))?;
        put.remove(&key);
    }
    let retired = std::mem::take(&mut shared.state().retired);
    revoke_in_background(client, retired, t);
    Ok(())
}

/// Grants a lease and opens its keepalive stream before anything else is done with it.
async fn grant(client: &Conn, config: &EtcdConfig) -> Result<Held, String> {
    let t = config.request_timeout();
    let ttl = config.ttl.as_secs().max(2) as i64;
    let started = Instant::now();
    let id = request(t, async {
        client.get().await?.lease_grant(ttl, None).await
    })
    .await
    .map_err(|e| format!("lease grant: {e}"))?
    .id();
    match request(t, async { client.get().await?.lease_keep_alive(id).await }).await {
        Ok((keeper, stream)) => Ok(Held {
            id,
            keeper,
            stream,
            alive_until: started + config.ttl,
        }),
        Err(e) => {
            revoke_in_background(client, vec![id], t);
            Err(format!("lease keepalive: {e}"))
        }
    }
}

/// Opens a new keepalive stream for the lease of `h` and keeps it alive once, until the
/// lease would have expired: a new stream can reach another member. Attempts are hedged:
/// one more starts every quarter of the request timeout while none has answered, so that a
/// stream the client's balancer puts on a frozen member again costs a quarter of the
/// timeout, not all of it. `Err` when the lease is gone or could not be reached in time.
async fn reopen(client: &Conn, t: Duration, h: &mut Held) -> Result<(), String> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    let id = h.id;
    let attempt = |sent: Instant| {
        let client = client.clone();
        async move {
            let r = request(t, async {
                let (mut keeper, mut stream) = client.get().await?.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                let answer = stream.message().await?;
                Ok::<_, etcd_client::Error>((keeper, stream, answer))
            })
            .await;
            (sent, r)
        }
    };
    let hedge = (t / 4).max(Duration::from_millis(50));
    let mut last = String::from("keepalive unanswered");
    let mut running = FuturesUnordered::new();
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= h.alive_until {
            return Err(last);
        }
        if now >= next {
            running.push(attempt(now));
            next = now + hedge;
        }
        let wake = next.min(h.alive_until);
        tokio::select! {
            Some((sent, r)) = running.next(), if !running.is_empty() => match r {
                Ok((keeper, stream, Some(resp))) if resp.ttl() > 0 => {
                    h.keeper = keeper;
                    h.stream = stream;
                    h.alive_until = sent + Duration::from_secs(resp.ttl() as u64);
                    tracing::debug!(lease = id, "lease kept alive over a new keepalive stream");
                    return Ok(());
                }
                Ok((_, _, Some(_))) => return Err("the lease is gone (revoked or expired)".into()),
                Ok((_, _, None)) => last = "keepalive stream ended".into(),
                Err(e) => last = e,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Keeps `h` alive every `every` and checks that the keys of `put` are still there, until
/// something needs the keeper's attention.
async fn steady(
    client: &Conn,
    t: Duration,
    every: Duration,
    h: &mut Held,
    put: &BTreeMap<String, String>,
    shared: &Shared,
) -> Interrupt {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.wake.notified() => return Interrupt::Changed,
        }
        let sent = Instant::now();
        let answer = request(t, async {
            h.keeper.keep_alive().await?;
            h.stream.message().await
        })
        .await;
        match answer {
            Ok(Some(resp)) if resp.ttl() > 0 => {
                h.alive_until = sent + Duration::from_secs(resp.ttl() as u64);
            }
            Ok(Some(_)) => return Interrupt::Lost("the lease is gone (revoked or expired)".into()),
            // The stream broke or a keepalive went unanswered (a frozen or lost member): the
            // lease itself may be alive, with its keys. Keep it alive over a new stream
            // while it lives; moving to a new lease would let the keys expire meanwhile.
            Ok(None) | Err(_) => {
                if let Err(why) = reopen(client, t, h).await {
                    return Interrupt::Lost(why);
                }
            }
        }
        let mut missing = Vec::new();
        for key in put.keys() {
            let opts = GetOptions::new().with_keys_only();
            match request(t, async {
                client.get().await?.get(key.clone(), Some(opts)).await
            })
            .await
            {
                Ok(resp) if resp.kvs().iter().any(|kv| kv.lease() == h.id) => {}
                Ok(_) => missing.push(key.clone()),
                // A failed read proves nothing; the next keepalive tells.
                Err(e) => tracing::debug!(key, "checking a registration failed: {e}"),
            }
        }
        if !missing.is_empty() {
            return Interrupt::Missing(missing);
        }
    }
}
