//! The rolling window of a breaker: request and failure counts in time slices.
//!
//! The success path must be cheap and must not collapse under contention, so:
//! - request counts are sharded by thread (each shard on its own cache line), and each cell
//!   holds `slice << 32 | count`, so a cell from an old slice restarts itself on the next
//!   write; no separate reset races with writers;
//! - a shard is updated with a plain load and store, not a read-modify-write. Two threads that
//!   share a shard may rarely lose an increment; the counts are statistics, and a lost
//!   success only makes the breaker a little quicker to trip;
//! - the current slice comes from an atomic kept up to date by a tokio interval task (which
//!   honours `tokio::time::pause()`), so recording a success reads no clock. Without a tokio
//!   runtime at construction, successes read the clock instead.
//!
//! Failures are rare and take the exact path: read the clock, bump the slice, count with an
//! atomic add, then sum the window.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// Slices per window.
pub(super) const SLICES: u64 = 10;
/// Request-count shards.
const SHARDS: usize = 16;

#[repr(align(128))]
struct Shard {
    cells: [AtomicU64; SLICES as usize],
}

/// Counts of one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls recorded (successes and failures).
    pub requests: u32,
    /// Failures recorded.
    pub failures: u32,
}

pub(super) struct Window {
    base: Instant,
    slice_ms: u64,
    /// The current slice, maintained by the ticker (and pushed forward by failures).
    current: AtomicU64,
    /// Whether a ticker task is alive. It dies with its runtime; the next clock read on a
    /// runtime starts a new one, and until then successes read the clock themselves.
    ticking: AtomicBool,
    me: Weak<Window>,
    shards: Box<[Shard]>,
    failures: [AtomicU64; SLICES as usize],
}

const fn pack(slice: u64, count: u64) -> u64 {
    (slice << 32) | (count & 0xffff_ffff)
}

#[inline]
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

impl Window {
    /// A window of `window` length; starts its ticker on the current tokio runtime, if any.
    pub(super) fn new(window: Duration) -> Arc<Window> {
        let slice_ms = (window.as_millis() as u64 / SLICES).max(1);
        let w = Arc::new_cyclic(|me| Window {
            base: Instant::now(),
            slice_ms,
            current: AtomicU64::new(0),
            ticking: AtomicBool::new(false),
            me: me.clone(),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    cells: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        w.ensure_ticker();
        w
    }

    /// Starts a ticker on the current runtime when none is alive.
    fn ensure_ticker(&self) {
        if !self.ticking.load(Ordering::Acquire)
            && tokio::runtime::Handle::try_current().is_ok()
            && !self.ticking.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(tick(self.me.clone(), Duration::from_millis(self.slice_ms)));
        }
    }

    /// The exact current slice, from the clock.
    pub(super) fn slice_now(&self) -> u64 {
        self.ensure_ticker();
        let t = self.base.elapsed().as_millis() as u64 / self.slice_ms;
        self.current.fetch_max(t, Ordering::AcqRel);
        t
    }

    #[inline]
    fn slice_fast(&self) -> u64 {
        if self.ticking.load(Ordering::Relaxed) {
            self.current.load(Ordering::Relaxed)
        } else {
            self.slice_now()
        }
    }

    /// Counts a success: no clock read, no read-modify-write.
    #[inline]
    pub(super) fn success(&self) {
        let t = self.slice_fast();
        self.bump_requests(t);
    }

    /// Counts a failure and returns the window's counts afterwards.
    pub(super) fn failure(&self) -> WindowCounts {
        let t = self.slice_now();
        self.bump_requests(t);
        let cell = &self.failures[(t % SLICES) as usize];
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            Some(if v >> 32 == t { v + 1 } else { pack(t, 1) })
        });
        self.counts_at(t)
    }

    #[inline]
    fn bump_requests(&self, t: u64) {
        let cell = &self.shards[shard_index()].cells[(t % SLICES) as usize];
        let v = cell.load(Ordering::Relaxed);
        let next = if v >> 32 == t { v + 1 } else { pack(t, 1) };
        cell.store(next, Ordering::Relaxed);
    }

    /// The counts of the window ending now.
    pub(super) fn counts(&self) -> WindowCounts {
        self.counts_at(self.slice_now())
    }

    fn counts_at(&self, t: u64) -> WindowCounts {
        let live = |v: u64| {
            let slice = v >> 32;
            (v != 0 && slice <= t && t - slice < SLICES).then_some((v & 0xffff_ffff) as u32)
        };
        let mut c = WindowCounts::default();
        for shard in self.shards.iter() {
            for cell in &shard.cells {
                c.requests += live(cell.load(Ordering::Acquire)).unwrap_or(0);
            }
        }
        for cell in &self.failures {
            c.failures += live(cell.load(Ordering::Acquire)).unwrap_or(0);
        }
        c
    }

    /// Forgets everything (when the breaker closes again).
    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            for cell in &shard.cells {
                cell.store(0, Ordering::Release);
            }
        }
        for cell in &self.failures {
            cell.store(0, Ordering::Release);
        }
    }
}

/// Marks the ticker dead when its task is dropped (its runtime shut down).
struct Alive(Weak<Window>);

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(w) = self.0.upgrade() {
            w.ticking.store(false, Ordering::Release);
        }
    }
}

/// The ticker task. The liveness guard is created before the future, so it also fires
/// when the task is dropped without ever being polled.
fn tick(window: Weak<Window>, every: Duration) -> impl std::future::Future<Output = ()> {
    let alive = Alive(window.clone());
    async move {
        let _alive = alive;
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            match window.upgrade() {
                Some(w) => {
                    w.slice_now();
                }
                None => return,
            }
        }
    }
}
