//! What the etcd and Nacos watchers share: publishing a set only when it changed, and
//! keeping an instance that drained listed (as draining) a moment after its removal, so a
//! watcher that reads only the latest set still sees that it drained.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Instance;

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
    /// Removes from `known` the ones whose time is over.
    pub(super) fn expire(&mut self, known: &mut BTreeMap<String, Instance>) {
        let now = Instant::now();
        self.0.retain(|(key, at)| {
            let over = *at <= now;
            if over {
                known.remove(key);
            }
            !over
        });
    }
    /// The keys held.
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// Sends `known` as the watched set, unless it is the set already sent.
pub(super) fn publish(tx: &watch::Sender<Arc<[Instance]>>, known: &BTreeMap<String, Instance>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_instance_goes_when_its_time_is_over() {
        let mut known = BTreeMap::new();
        known.insert(
            "a".to_owned(),
            Instance::new("svc", "a", "http://127.0.0.1:1"),
        );
        let mut lingering = Lingering::default();
        lingering.hold("a".into());
        lingering.hold("a".into());
        assert_eq!(lingering.keys().count(), 1, "held once");
        let at = lingering.next().unwrap();
        tokio::time::sleep_until(at - Duration::from_millis(1)).await;
        lingering.expire(&mut known);
        assert!(known.contains_key("a"));
        tokio::time::sleep_until(at).await;
        lingering.expire(&mut known);
        assert!(known.is_empty());
        assert!(lingering.next().is_none());
    }

    #[test]
    fn the_same_set_is_not_sent_twice() {
        let (tx, mut rx) = watch::channel(Arc::<[Instance]>::from(Vec::new()));
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
}
