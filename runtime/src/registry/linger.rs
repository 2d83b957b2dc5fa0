//! What the etcd and Nacos watchers share: changing the published set only where it changed
//! (and notifying only when it did), and keeping an instance that drained listed (as
//! draining) a moment after its removal, so a watcher that reads only the latest set still
//! sees that it drained.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Instance, InstanceSet};

/// How long a removed instance that was draining stays listed (as draining).
pub(super) const DRAINED_LINGER: Duration = Duration::from_secs(2);

/// Removed draining instances still listed, by key, with when they go.
#[derive(Debug, Default)]
pub(super) struct Lingering(Vec<(String, Instant)>);

impl Lingering {
    /// When the first one goes, if any.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().map(|(_, at)| *at).min()
    }
    /// Keeps `key` listed for [`DRAINED_LINGER`] from now (once).
    pub(super) fn hold(&mut self, key: String) {
        if !self.holds(&key) {
            self.0.push((key, Instant::now() + DRAINED_LINGER));
        }
    }
    /// Whether `key` is held.
    pub(super) fn holds(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    /// Stops holding `key` (it was listed again, or changed).
    pub(super) fn forget(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }
    /// Stops holding the ones whose time is over, and returns their keys.
    pub(super) fn expire(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut over = Vec::new();
        self.0.retain(|(key, at)| {
            if *at <= now {
                over.push(key.clone());
                false
            } else {
                true
            }
        });
        over
    }
    /// The keys held.
    #[cfg_attr(not(feature = "nacos"), allow(dead_code))]
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// Sets the entry `key` of `known` to `now` (`None` removes it) and changes `set` to match,
/// in time proportional to the change (`known` is keyed by the backend's key, `set` by
/// instance id; backends list one id under one key only). Whether `set` changed.
pub(super) fn apply(
    set: &mut InstanceSet,
    known: &mut BTreeMap<String, Instance>,
    key: String,
    now: Option<Instance>,
) -> bool {
    let old = match &now {
        Some(i) => known.insert(key, i.clone()),
        None => known.remove(&key),
    };
    let mut changed = false;
    if let Some(old) = old {
        let moved = now.as_ref().is_none_or(|n| n.id != old.id);
        if moved && set.get(&old.id) == Some(&old) {
            changed |= set.remove(&old.id).is_some();
        }
    }
    if let Some(i) = now {
        changed |= set.insert(i);
    }
    changed
}

/// Applies the changes `ops` (key, new value or `None`) to `known` and to the watched set,
/// notifying watchers once, and only if the set changed.
pub(super) fn publish_changes(
    tx: &watch::Sender<InstanceSet>,
    known: &mut BTreeMap<String, Instance>,
    ops: Vec<(String, Option<Instance>)>,
) {
    if ops.is_empty() {
        return;
    }
    tx.send_if_modified(|set| {
        let mut changed = false;
        for (key, now) in ops {
            changed |= apply(set, known, key, now);
        }
        changed
    });
}

/// Makes the watched set equal to `known` (a full list: O(N)), notifying watchers only if it
/// changed. Only what differs is inserted or removed, so the set shares the rest with the
/// version watchers hold.
pub(super) fn publish(tx: &watch::Sender<InstanceSet>, known: &BTreeMap<String, Instance>) {
    tx.send_if_modified(|set| {
        let listed: HashSet<&str> = known.values().map(|i| i.id.as_str()).collect();
        let gone: Vec<String> = set
            .iter()
            .filter(|i| !listed.contains(i.id.as_str()))
            .map(|i| i.id.clone())
            .collect();
        let mut changed = false;
        for id in gone {
            changed |= set.remove(&id).is_some();
        }
        for i in known.values() {
            if set.get(&i.id) != Some(i) {
                changed |= set.insert(i.clone());
            }
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_instance_goes_when_its_time_is_over() {
        let mut lingering = Lingering::default();
        lingering.hold("a".into());
        lingering.hold("a".into());
        assert_eq!(lingering.keys().count(), 1, "held once");
        let at = lingering.next().unwrap();
        tokio::time::sleep_until(at - Duration::from_millis(1)).await;
        assert!(lingering.expire().is_empty());
        assert!(lingering.holds("a"));
        tokio::time::sleep_until(at).await;
        assert_eq!(lingering.expire(), ["a"]);
        assert!(lingering.next().is_none());
    }

    #[test]
    fn the_same_set_is_not_sent_twice() {
        let (tx, mut rx) = watch::channel(InstanceSet::new());
        let mut known = BTreeMap::new();
        publish(&tx, &known);
        assert!(!rx.has_changed().unwrap());
        known.insert(
            "a".to_owned(),
            Instance::new("svc", "a", "http://127.0.0.1:1"),
        );
        publish(&tx, &known);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        publish(&tx, &known);
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn changes_by_key_reach_the_set_by_id_and_notify_once() {
        let (tx, mut rx) = watch::channel(InstanceSet::new());
        let mut known = BTreeMap::new();
        let a = Instance::new("svc", "a", "http://127.0.0.1:1");
        let b = Instance::new("svc", "b", "http://127.0.0.1:2");
        publish_changes(
            &tx,
            &mut known,
            vec![
                ("k1".into(), Some(a.clone())),
                ("k2".into(), Some(b.clone())),
            ],
        );
        assert_eq!(rx.borrow_and_update().ids(), ["a", "b"]);
        // The value under k1 now names another id: the old id goes.
        let c = Instance::new("svc", "c", "http://127.0.0.1:3");
        publish_changes(&tx, &mut known, vec![("k1".into(), Some(c))]);
        assert_eq!(rx.borrow_and_update().ids(), ["b", "c"]);
        publish_changes(&tx, &mut known, vec![("k2".into(), Some(b))]);
        assert!(
            !rx.has_changed().unwrap(),
            "the same instance again changes nothing"
        );
        publish_changes(
            &tx,
            &mut known,
            vec![("k2".into(), None), ("k9".into(), None)],
        );
        assert_eq!(rx.borrow_and_update().ids(), ["c"]);
        assert_eq!(known.len(), 1);
    }
}
