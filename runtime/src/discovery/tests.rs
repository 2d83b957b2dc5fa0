//! The pool's bookkeeping, with the clock paused.

use std::time::Duration;

use super::*;
use crate::registry::MemoryRegistry;

async fn pool(n: usize, od: OutlierDetection) -> Arc<Pool> {
    pool_on(&MemoryRegistry::new(), n, od, None).await
}

async fn pool_on(
    registry: &MemoryRegistry,
    n: usize,
    od: OutlierDetection,
    grace: Option<Duration>,
) -> Arc<Pool> {
    let registry = registry.clone();
    for i in 0..n {
        // Connected lazily and never called: only the bookkeeping runs.
        let instance = Instance::new(
            "svc",
            format!("e{i}"),
            format!("http://127.0.0.1:{}", 1 + i),
        );
        registry.register(&instance).await.unwrap();
    }
    let registry: Arc<dyn Registry> = Arc::new(registry);
    let config = PoolConfig {
        connect: Arc::new(|uri| Ok(Arc::new(Connection::plain(uri)))),
        outlier_detection: od,
        panic_threshold: 50,
        grace,
    };
    Pool::start("svc", &registry, config).await.unwrap()
}

fn slot(pool: &Pool, id: &str) -> Arc<Slot> {
    pool.snapshot()
        .iter()
        .find(|s| &*s.id == id)
        .unwrap()
        .clone()
}

#[tokio::test(start_paused = true)]
async fn ejections_grow_with_repeats_and_the_multiplier_decays_once_healthy() {
    let od = OutlierDetection {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        ..OutlierDetection::default()
    };
    let pool = pool(3, od).await;
    let e0 = slot(&pool, "e0");
    // A refused connection ejects at once, for the base time.
    pool.report(&e0, AttemptOutcome::NotSent);
    assert_eq!(pool.ejected_ids(), ["e0"]);
    tokio::time::sleep(Duration::from_millis(29_900)).await;
    assert_eq!(pool.ejected_ids(), ["e0"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pool.ejected_ids().is_empty(), "back after 30 s");
    // Failing again at once: twice the base.
    pool.report(&e0, AttemptOutcome::NotSent);
    assert_eq!(e0.multiplier.load(Ordering::Relaxed), 2);
    tokio::time::sleep(Duration::from_millis(59_900)).await;
    assert_eq!(pool.ejected_ids(), ["e0"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pool.ejected_ids().is_empty(), "back after 60 s");
    // Healthy for whole intervals after the ejection: the multiplier drops one per
    // interval, back to zero, and the next ejection is short again.
    for _ in 0..3 {
        pool.report(&e0, AttemptOutcome::Success);
        tokio::time::sleep(od.interval).await;
    }
    assert_eq!(e0.multiplier.load(Ordering::Relaxed), 0);
    pool.report(&e0, AttemptOutcome::NotSent);
    tokio::time::sleep(Duration::from_millis(30_100)).await;
    assert!(
        pool.ejected_ids().is_empty(),
        "a base-length ejection again"
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_relayed_failures_never_eject_at_once() {
    let pool = pool(3, OutlierDetection::default()).await;
    let e0 = slot(&pool, "e0");
    for _ in 0..4 {
        pool.report(&e0, AttemptOutcome::Timeout);
    }
    for _ in 0..100 {
        pool.report(&e0, AttemptOutcome::PassedThrough(tonic::Code::Unavailable));
    }
    assert!(pool.ejected_ids().is_empty());
    assert_eq!(
        e0.failures.load(Ordering::Relaxed),
        4,
        "relayed failures count for nothing"
    );
    // The fifth failure in a row, while the others answer, ejects it.
    pool.report(&slot(&pool, "e1"), AttemptOutcome::Success);
    pool.report(&e0, AttemptOutcome::Timeout);
    assert_eq!(pool.ejected_ids(), ["e0"]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_every_endpoint_shares_ejects_nobody_at_once() {
    let pool = pool(3, OutlierDetection::default()).await;
    for _ in 0..20 {
        for id in ["e0", "e1", "e2"] {
            pool.report(
                &slot(&pool, id),
                AttemptOutcome::Remote(tonic::Code::Unavailable),
            );
        }
    }
    assert!(pool.ejected_ids().is_empty());
    // The interval sweep agrees: everybody above the threshold is a shared failure.
    tokio::time::sleep(OutlierDetection::default().interval).await;
    assert!(pool.ejected_ids().is_empty());
}

#[tokio::test(start_paused = true)]
async fn panic_mode_spreads_calls_but_probes_go_to_endpoints_in_good_standing() {
    let od = OutlierDetection {
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    };
    let pool = pool(3, od).await;
    pool.report(&slot(&pool, "e0"), AttemptOutcome::NotSent);
    pool.report(&slot(&pool, "e1"), AttemptOutcome::NotSent);
    assert_eq!(pool.ejected_ids().len(), 2);
    let picks = |probe: bool| {
        let mut ids: Vec<String> = (0..30)
            .map(|_| pool.pick(None, probe).unwrap().id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    // 1 of 3 in good standing is under the 50 % threshold: every endpoint gets calls.
    assert_eq!(picks(false), ["e0", "e1", "e2"]);
    assert_eq!(picks(true), ["e2"]);
    // A retry avoids the endpoint that just failed.
    for _ in 0..10 {
        assert_ne!(&*pool.pick(Some("e2"), false).unwrap().id, "e2");
    }
}

/// Lets the pool's follow task apply what the registry published.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_instance_vanishing_at_once_keeps_the_last_set_for_the_grace_period() {
    let registry = MemoryRegistry::new();
    let grace = Duration::from_secs(20);
    let pool = pool_on(&registry, 3, OutlierDetection::default(), Some(grace)).await;
    assert_eq!(pool.ids().len(), 3);
    // The lease goes: every key at once, as etcd expiring leases on resume.
    registry.shutdown().await.unwrap();
    settle().await;
    assert_eq!(pool.ids().len(), 3, "still calling the last set");
    assert!(pool.pick(None, false).is_some());
    tokio::time::sleep(grace - Duration::from_millis(100)).await;
    assert_eq!(pool.ids().len(), 3);
    // The services put their keys back: the registry's set applies again.
    let again = registry.session();
    again
        .register(&Instance::new("svc", "e1", "http://127.0.0.1:2"))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        pool.ids(),
        ["e0", "e1", "e2"],
        "e1 is listed again; e0 and e2 are kept while their grace lasts"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(pool.ids(), ["e1"], "their grace is over");
    tokio::time::sleep(grace * 2).await;
    assert_eq!(pool.ids(), ["e1"], "no stale expiry left over");
    // Gone again, and this time for good: empty once the grace period is over.
    again.shutdown().await.unwrap();
    settle().await;
    assert_eq!(pool.ids(), ["e1"]);
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    settle().await;
    assert!(pool.ids().is_empty());
    assert!(pool.pick(None, false).is_none());
}

#[tokio::test(start_paused = true)]
async fn during_the_grace_period_an_instance_whose_connection_fails_is_dropped() {
    let registry = MemoryRegistry::new();
    let pool = pool_on(
        &registry,
        2,
        OutlierDetection::default(),
        Some(Duration::from_secs(20)),
    )
    .await;
    registry.shutdown().await.unwrap();
    settle().await;
    pool.report(&slot(&pool, "e0"), AttemptOutcome::Timeout);
    assert_eq!(pool.ids().len(), 2, "a timeout is no connection failure");
    pool.report(&slot(&pool, "e0"), AttemptOutcome::NotSent);
    assert_eq!(pool.ids(), ["e1"]);
    pool.report(&slot(&pool, "e1"), AttemptOutcome::Transport);
    assert!(pool.ids().is_empty(), "real connection failures empty it");
}

#[tokio::test(start_paused = true)]
async fn without_grace_an_empty_set_applies_at_once() {
    let registry = MemoryRegistry::new();
    let pool = pool_on(
        &registry,
        2,
        OutlierDetection::default(),
        Some(Duration::ZERO),
    )
    .await;
    registry.shutdown().await.unwrap();
    settle().await;
    assert!(pool.ids().is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_drops_its_watch_at_once() {
    let (tx, _) = tokio::sync::watch::channel(InstanceSet::new());
    let registry = Arc::new(OneWatch(tx));
    let config = PoolConfig {
        connect: Arc::new(|uri| Ok(Arc::new(Connection::plain(uri)))),
        outlier_detection: OutlierDetection::default(),
        panic_threshold: 50,
        grace: None,
    };
    let dyn_registry: Arc<dyn Registry> = registry.clone();
    let pool = Pool::start("svc", &dyn_registry, config).await.unwrap();
    settle().await;
    assert_eq!(registry.0.receiver_count(), 1);
    drop(pool);
    settle().await;
    // The follow task ended without waiting for the next change.
    assert_eq!(registry.0.receiver_count(), 0);
}

/// A pool on a registry whose one watch channel the test publishes on.
async fn pool_on_watch(tx: &tokio::sync::watch::Sender<InstanceSet>, grace: Duration) -> Arc<Pool> {
    let registry: Arc<dyn Registry> = Arc::new(OneWatch(tx.clone()));
    let config = PoolConfig {
        connect: Arc::new(|uri| Ok(Arc::new(Connection::plain(uri)))),
        outlier_detection: OutlierDetection::default(),
        panic_threshold: 50,
        grace: Some(grace),
    };
    Pool::start("svc", &registry, config).await.unwrap()
}

fn set(list: &[(&str, u16, bool)]) -> InstanceSet {
    list.iter()
        .map(|(id, port, draining)| {
            let mut i = Instance::new("svc", *id, format!("http://127.0.0.1:{port}"));
            i.draining = *draining;
            i
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_vanishes_without_draining_is_kept_while_its_connection_works() {
    let (tx, _) =
        tokio::sync::watch::channel(set(&[("a", 1, false), ("b", 2, false), ("c", 3, false)]));
    let grace = Duration::from_secs(20);
    let pool = pool_on_watch(&tx, grace).await;
    assert_eq!(pool.ids(), ["a", "b", "c"]);
    // b's lease is lost (etcd expired it; its process could not renew it): b still answers.
    tx.send_replace(set(&[("a", 1, false), ("c", 3, false)]));
    settle().await;
    assert_eq!(pool.ids(), ["a", "b", "c"], "b is kept, and still picked");
    let picked: std::collections::HashSet<String> = (0..3)
        .filter_map(|_| pool.pick(None, false))
        .map(|s| s.id.to_string())
        .collect();
    assert!(picked.contains("b"));
    // Answers from it are no reason to drop it; a timeout is no connection failure either.
    pool.report(&slot(&pool, "b"), AttemptOutcome::Remote(tonic::Code::Ok));
    pool.report(&slot(&pool, "b"), AttemptOutcome::Timeout);
    assert_eq!(pool.ids().len(), 3);
    // Its connection fails: gone at once.
    pool.report(&slot(&pool, "b"), AttemptOutcome::Transport);
    assert_eq!(pool.ids(), ["a", "c"]);

    // c vanishes too, and nobody calls it: dropped when the grace period ends.
    tx.send_replace(set(&[("a", 1, false)]));
    settle().await;
    assert_eq!(pool.ids(), ["a", "c"]);
    tokio::time::sleep(grace - Duration::from_millis(100)).await;
    assert_eq!(pool.ids(), ["a", "c"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(pool.ids(), ["a"]);

    // Listed again within its grace period: kept, with its connection, and no longer stale.
    tx.send_replace(set(&[("a", 1, false), ("d", 4, false)]));
    settle().await;
    tx.send_replace(set(&[("a", 1, false)]));
    settle().await;
    let d = slot(&pool, "d");
    tx.send_replace(set(&[("a", 1, false), ("d", 4, false)]));
    settle().await;
    assert!(Arc::ptr_eq(&d, &slot(&pool, "d")), "the same endpoint");
    tokio::time::sleep(grace * 2).await;
    settle().await;
    assert_eq!(pool.ids(), ["a", "d"]);
}

#[tokio::test(start_paused = true)]
async fn a_draining_instance_leaves_at_once_and_so_does_one_listed_at_a_new_address() {
    let (tx, _) =
        tokio::sync::watch::channel(set(&[("a", 1, false), ("b", 2, false), ("c", 3, false)]));
    let pool = pool_on_watch(&tx, Duration::from_secs(20)).await;
    // b deregisters gracefully: first listed as draining, then gone.
    tx.send_replace(set(&[("a", 1, false), ("b", 2, true), ("c", 3, false)]));
    settle().await;
    assert_eq!(pool.ids(), ["a", "c"]);
    for _ in 0..4 {
        assert_ne!(&*pool.pick(None, false).unwrap().id, "b");
    }
    tx.send_replace(set(&[("a", 1, false), ("c", 3, false)]));
    settle().await;
    assert_eq!(pool.ids(), ["a", "c"]);
    // c restarts at another port under the same id: the old address goes at once.
    tx.send_replace(set(&[("a", 1, false), ("c", 33, false)]));
    settle().await;
    assert_eq!(pool.ids(), ["a", "c"]);
    assert_eq!(&*slot(&pool, "c").addr, "http://127.0.0.1:33");
}

#[tokio::test(start_paused = true)]
async fn an_ejected_instance_that_vanishes_goes_at_once_and_frees_its_ejection() {
    let (tx, _) =
        tokio::sync::watch::channel(set(&[("a", 1, false), ("b", 2, false), ("c", 3, false)]));
    let pool = pool_on_watch(&tx, Duration::from_secs(20)).await;
    // b crashed: its connection is refused, it is ejected, then its lease expires.
    pool.report(&slot(&pool, "b"), AttemptOutcome::NotSent);
    assert_eq!(pool.ejected_ids(), ["b"]);
    tx.send_replace(set(&[("a", 1, false), ("c", 3, false)]));
    settle().await;
    assert_eq!(
        pool.ids(),
        ["a", "c"],
        "not kept: its connection does not work"
    );
    // So another bad endpoint can be ejected (at most one of two).
    pool.report(&slot(&pool, "a"), AttemptOutcome::NotSent);
    assert_eq!(pool.ejected_ids(), ["a"]);
    // An unlisted endpoint that turns bad later is dropped rather than ejected.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(pool.ejected_ids().is_empty());
    tx.send_replace(set(&[("a", 1, false)]));
    settle().await;
    assert_eq!(pool.ids(), ["a", "c"]);
    pool.report(&slot(&pool, "a"), AttemptOutcome::Remote(tonic::Code::Ok));
    for _ in 0..5 {
        pool.report(
            &slot(&pool, "c"),
            AttemptOutcome::Remote(tonic::Code::Unavailable),
        );
    }
    assert_eq!(pool.ids(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn updates_applied_as_changes_keep_every_index_right() {
    let (tx, _) = tokio::sync::watch::channel(InstanceSet::new());
    let pool = pool_on_watch(&tx, Duration::ZERO).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut want: std::collections::BTreeMap<String, u16> = std::collections::BTreeMap::new();
    for round in 0..300 {
        // A few changes per round, as a registry publishes them: adds, removals, moves,
        // drains; the set is changed in place, so the pool sees only the change.
        tx.send_modify(|set| {
            for _ in 0..rng.usize(1..6) {
                let id = format!("e{}", rng.usize(0..400));
                match rng.u8(0..4) {
                    0 | 1 => {
                        let port = rng.u16(1..60_000);
                        set.insert(Instance::new(
                            "svc",
                            &id,
                            format!("http://127.0.0.1:{port}"),
                        ));
                        want.insert(id, port);
                    }
                    2 => {
                        set.remove(&id);
                        want.remove(&id);
                    }
                    _ => {
                        if let Some(i) = set.get(&id) {
                            let mut i = i.clone();
                            i.draining = true;
                            set.insert(i);
                            want.remove(&id);
                        }
                    }
                }
            }
        });
        settle().await;
        let t = pool.table();
        assert_eq!(t.slots.len(), want.len(), "round {round}");
        assert_eq!(t.by_id.len(), want.len(), "round {round}");
        for (k, s) in t.slots.iter().enumerate() {
            assert_eq!(t.by_id[&s.id], k, "round {round}: index of {}", s.id);
            let port = want[&*s.id];
            assert_eq!(*s.addr, format!("http://127.0.0.1:{port}"), "round {round}");
        }
        drop(t);
        let picked = (0..want.len())
            .filter_map(|_| pool.pick(None, false))
            .count();
        assert_eq!(picked, want.len());
    }
    assert!(
        want.len() > 50,
        "the test reached a sizeable set: {}",
        want.len()
    );
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_could_not_become_an_endpoint_is_tried_again_at_the_next_update() {
    let (tx, _) = tokio::sync::watch::channel(set(&[("a", 1, false), ("b", 2, false)]));
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = refused.clone();
    let registry: Arc<dyn Registry> = Arc::new(OneWatch(tx.clone()));
    let config = PoolConfig {
        connect: Arc::new(move |uri| {
            if uri.port_u16() == Some(2) && !once.swap(true, Ordering::SeqCst) {
                return Err(Error::config("test", "refused once"));
            }
            Ok(Arc::new(Connection::plain(uri)))
        }),
        outlier_detection: OutlierDetection::default(),
        panic_threshold: 50,
        grace: Some(Duration::ZERO),
    };
    let pool = Pool::start("svc", &registry, config).await.unwrap();
    assert_eq!(pool.ids(), ["a"], "b's connection could not be set up");
    // Any later change of the set: b is tried again, as if new.
    tx.send_modify(|s| {
        s.insert(Instance::new("svc", "c", "http://127.0.0.1:3"));
    });
    settle().await;
    assert_eq!(pool.ids(), ["a", "b", "c"]);
    assert!(refused.load(Ordering::SeqCst));
}
