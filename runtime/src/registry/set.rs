//! [`InstanceSet`]: the live set of one service as registries publish it, built so that one
//! change costs the registry and every watcher work proportional to the change, not to the
//! size of the set.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::Instance;

/// A bucket grows the set's bucket count (doubling) once it averages more than this.
const PER_BUCKET: usize = 16;
/// The most buckets a set uses.
const MAX_BUCKETS: usize = 1 << 16;

type Bucket = Arc<Vec<Arc<Instance>>>;

/// The live instances of one service, keyed by [`Instance::id`].
///
/// A persistent (copy-on-write) set: cloning it is one reference count. Instances are hashed
/// by id into a number of buckets that doubles as the set grows (16 instances per bucket on
/// average); changing one instance copies its bucket, plus the array of bucket pointers (N/16
/// pointers, a memcpy) when a watcher still holds the previous version, and touches no other
/// instance. Two versions of a set share the buckets neither changed, and
/// [`InstanceSet::changes_from`] compares the bucket pointers and only the buckets that
/// differ. At 10,000 instances, a change and a watcher's update each take microseconds.
///
/// Iteration order is the buckets' (by a hash of the id), then the id's; it is the same for
/// the same set, but not sorted: use [`InstanceSet::sorted`] for that.
///
/// ```
/// use steadfast::registry::{Change, Instance, InstanceSet};
/// let mut set = InstanceSet::new();
/// set.insert(Instance::new("user-svc", "u1", "http://127.0.0.1:50051"));
/// let before = set.clone(); // one reference count
/// set.insert(Instance::new("user-svc", "u2", "http://127.0.0.1:50052"));
/// assert_eq!(set.len(), 2);
/// assert_eq!(set.get("u2").unwrap().addr, "http://127.0.0.1:50052");
/// let changes = set.changes_from(&before);
/// assert!(matches!(changes[..], [Change::Added(i)] if i.id == "u2"));
/// ```
#[derive(Clone, Default)]
pub struct InstanceSet {
    /// A power of two of buckets (none while the set is empty and has never held one).
    buckets: Arc<Vec<Bucket>>,
    len: usize,
}

/// One difference between two versions of an [`InstanceSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// Listed now, not before.
    Added(&'a Instance),
    /// Listed before, not now.
    Removed(&'a Instance),
    /// Listed in both, with different fields (its address, its draining mark, ...).
    Updated {
        /// As listed before.
        old: &'a Instance,
        /// As listed now.
        new: &'a Instance,
    },
}

/// FNV-1a: instance ids are short, and a set's bucket of an id must be the same in every
/// process and version. Also the hasher of discovery's id index.
#[derive(Clone, Copy)]
pub(crate) struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` hasher builder for [`FnvHasher`].
pub(crate) type Fnv = std::hash::BuildHasherDefault<FnvHasher>;

fn hash(id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = FnvHasher::default();
    h.write(id.as_bytes());
    h.finish()
}

fn find(bucket: &[Arc<Instance>], id: &str) -> Result<usize, usize> {
    bucket.binary_search_by(|i| i.id.as_str().cmp(id))
}

impl InstanceSet {
    /// An empty set.
    pub fn new() -> Self {
        InstanceSet::default()
    }

    /// How many instances it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket_of(&self, id: &str) -> usize {
        (hash(id) as usize) & (self.buckets.len() - 1)
    }

    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&Instance> {
        if self.buckets.is_empty() {
            return None;
        }
        let bucket = &self.buckets[self.bucket_of(id)];
        find(bucket, id).ok().map(|k| &*bucket[k])
    }

    /// Whether it holds an instance with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Every instance, in the set's order (see the type's documentation).
    pub fn iter(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.buckets.iter().flat_map(|b| b.iter().map(|i| &**i))
    }

    /// Every instance, sorted by id.
    pub fn sorted(&self) -> Vec<&Instance> {
        let mut all: Vec<&Instance> = self.iter().collect();
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Every id, sorted.
    pub fn ids(&self) -> Vec<&str> {
        self.sorted().into_iter().map(|i| i.id.as_str()).collect()
    }

    /// Adds `instance`, or replaces the one with its id. Whether the set changed (an equal
    /// instance changes nothing, and shares nothing new). O(size of one bucket).
    pub fn insert(&mut self, instance: Instance) -> bool {
        if self.buckets.is_empty() {
            self.buckets = Arc::new(vec![Bucket::default()]);
        }
        let b = self.bucket_of(&instance.id);
        match find(&self.buckets[b], &instance.id) {
            Ok(k) if *self.buckets[b][k] == instance => return false,
            Ok(k) => {
                Arc::make_mut(&mut Arc::make_mut(&mut self.buckets)[b])[k] = Arc::new(instance);
            }
            Err(k) => {
                Arc::make_mut(&mut Arc::make_mut(&mut self.buckets)[b])
                    .insert(k, Arc::new(instance));
                self.len += 1;
                if self.len > PER_BUCKET * self.buckets.len() && self.buckets.len() < MAX_BUCKETS {
                    self.rehash(self.buckets.len() * 2);
                }
            }
        }
        true
    }

    /// Removes the instance with this id, returning it. O(size of one bucket).
    pub fn remove(&mut self, id: &str) -> Option<Arc<Instance>> {
        if self.buckets.is_empty() {
            return None;
        }
        let b = self.bucket_of(id);
        let k = find(&self.buckets[b], id).ok()?;
        self.len -= 1;
        Some(Arc::make_mut(&mut Arc::make_mut(&mut self.buckets)[b]).remove(k))
    }

    /// Spreads the instances over `n` buckets (a power of two). O(N), once per doubling.
    fn rehash(&mut self, n: usize) {
        let mut buckets: Vec<Vec<Arc<Instance>>> = vec![Vec::new(); n];
        for i in self.buckets.iter().flat_map(|b| b.iter()) {
            buckets[(hash(&i.id) as usize) & (n - 1)].push(i.clone());
        }
        self.buckets = Arc::new(
            buckets
                .into_iter()
                .map(|mut b| {
                    b.sort_unstable_by(|x, y| x.id.cmp(&y.id));
                    Arc::new(b)
                })
                .collect(),
        );
    }

    /// What changed from `older` to this set: additions, removals and updates, by id.
    ///
    /// When this set was derived from `older` by [`insert`](Self::insert)s and
    /// [`remove`](Self::remove)s, it compares N/16 bucket pointers and, instance by
    /// instance, only the buckets that changed. Otherwise (two sets built apart, or a bucket
    /// doubling in between, once per doubling of the set) it compares every instance.
    pub fn changes_from<'a>(&'a self, older: &'a InstanceSet) -> Vec<Change<'a>> {
        let mut out = Vec::new();
        if Arc::ptr_eq(&self.buckets, &older.buckets) {
            return out;
        }
        if self.buckets.len() == older.buckets.len() {
            for (new, old) in self.buckets.iter().zip(older.buckets.iter()) {
                if !Arc::ptr_eq(new, old) {
                    merge(old, new, &mut out);
                }
            }
            return out;
        }
        let mut before: HashMap<&str, &Instance> = older.iter().map(|i| (&*i.id, i)).collect();
        for new in self.iter() {
            match before.remove(new.id.as_str()) {
                None => out.push(Change::Added(new)),
                Some(old) if old != new => out.push(Change::Updated { old, new }),
                Some(_) => {}
            }
        }
        out.extend(before.into_values().map(Change::Removed));
        out
    }
}

/// The changes between two buckets sorted by id.
fn merge<'a>(old: &'a [Arc<Instance>], new: &'a [Arc<Instance>], out: &mut Vec<Change<'a>>) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.id == n.id => {
                if !Arc::ptr_eq(o, n) && o != n {
                    out.push(Change::Updated { old: o, new: n });
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.id < n.id => {
                out.push(Change::Removed(o));
                i += 1;
            }
            (Some(o), None) => {
                out.push(Change::Removed(o));
                i += 1;
            }
            (_, Some(n)) => {
                out.push(Change::Added(n));
                j += 1;
            }
            (None, None) => unreachable!("the loop runs while one side has more"),
        }
    }
}

impl FromIterator<Instance> for InstanceSet {
    /// The set of these instances (a later one replaces an earlier one with the same id).
    fn from_iter<T: IntoIterator<Item = Instance>>(iter: T) -> Self {
        let mut set = InstanceSet::new();
        for i in iter {
            set.insert(i);
        }
        set
    }
}

impl PartialEq for InstanceSet {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.changes_from(other).is_empty()
    }
}

impl Eq for InstanceSet {}

impl fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.sorted()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, port: u16) -> Instance {
        let mut i = Instance::new("svc", id, format!("http://127.0.0.1:{port}"));
        i.registered_at = "2026-11-30T00:00:00Z".into();
        i
    }

    #[test]
    fn inserts_replaces_and_removes_by_id() {
        let mut s = InstanceSet::new();
        assert!(s.insert(inst("b", 2)));
        assert!(s.insert(inst("a", 1)));
        assert!(!s.insert(s.get("a").unwrap().clone()), "an equal instance");
        assert!(s.insert(inst("a", 9)));
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a").unwrap().addr, "http://127.0.0.1:9");
        assert_eq!(s.ids(), ["a", "b"]);
        assert_eq!(s.remove("a").unwrap().id, "a");
        assert!(s.remove("a").is_none());
        assert_eq!(s.ids(), ["b"]);
        assert!(!s.contains("a"));
    }

    #[test]
    fn a_change_at_ten_thousand_touches_one_bucket_and_the_diff_finds_only_it() {
        let big: InstanceSet = (0..10_000).map(|i| inst(&format!("e{i}"), 1)).collect();
        assert_eq!(big.len(), 10_000);
        assert!(big.buckets.len() >= 10_000 / PER_BUCKET);
        let mut next = big.clone();
        next.insert(inst("new", 2));
        next.remove("e17");
        let mut moved = next.get("e42").unwrap().clone();
        moved.addr = "http://127.0.0.1:3".into();
        next.insert(moved);
        let shared = big
            .buckets
            .iter()
            .zip(next.buckets.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= big.buckets.len() - 3, "{shared} buckets shared");
        let mut changes: Vec<String> = next
            .changes_from(&big)
            .iter()
            .map(|c| match c {
                Change::Added(i) => format!("+{}", i.id),
                Change::Removed(i) => format!("-{}", i.id),
                Change::Updated { old, new } => format!("{}:{}->{}", old.id, old.addr, new.addr),
            })
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            ["+new", "-e17", "e42:http://127.0.0.1:1->http://127.0.0.1:3"]
        );
        assert!(big.changes_from(&big.clone()).is_empty());
    }

    #[test]
    fn sets_built_apart_compare_by_content() {
        let a: InstanceSet = (0..100).map(|i| inst(&format!("e{i}"), 1)).collect();
        let b: InstanceSet = (0..100).rev().map(|i| inst(&format!("e{i}"), 1)).collect();
        assert!(a == b, "the same instances in another order");
        let small: InstanceSet = (0..3).map(|i| inst(&format!("e{i}"), 1)).collect();
        // Different bucket counts: every instance compared.
        let changes = a.changes_from(&small);
        assert_eq!(changes.len(), 97);
        assert!(changes.iter().all(|c| matches!(c, Change::Added(_))));
        assert_eq!(small.changes_from(&a).len(), 97);
    }
}
