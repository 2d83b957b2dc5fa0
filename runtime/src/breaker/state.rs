//! The breaker's state machine: one atomic word for state and half-open accounting, a
//! bucketed rolling window of atomic counters, and a mutex taken only on transitions.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::BreakerConfig;
use super::window::Window;
pub use super::window::WindowCounts;

/// The three states of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted in the rolling window.
    Closed,
    /// Calls are rejected at once until the open period ends.
    Open,
    /// A limited number of probes test whether the downstream recovered.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// The state word: bits 0..2 state, 2..18 probes in flight, 18..32 probe successes,
// 32..64 generation (bumped by every transition).
const STATE_MASK: u64 = 0b11;
const IN_FLIGHT_SHIFT: u32 = 2;
const IN_FLIGHT_MASK: u64 = 0xffff << IN_FLIGHT_SHIFT;
const SUCCESS_SHIFT: u32 = 18;
const SUCCESS_MASK: u64 = 0x3fff << SUCCESS_SHIFT;
const GEN_SHIFT: u32 = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn new(gen_: u32, state: BreakerState) -> Word {
        let s = match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        Word(u64::from(gen_) << GEN_SHIFT | s)
    }
    fn state(self) -> BreakerState {
        match self.0 & STATE_MASK {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
    fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }
    fn in_flight(self) -> u32 {
        ((self.0 & IN_FLIGHT_MASK) >> IN_FLIGHT_SHIFT) as u32
    }
    fn successes(self) -> u32 {
        ((self.0 & SUCCESS_MASK) >> SUCCESS_SHIFT) as u32
    }
    fn with_in_flight(self, n: u32) -> Word {
        Word(self.0 & !IN_FLIGHT_MASK | (u64::from(n) << IN_FLIGHT_SHIFT) & IN_FLIGHT_MASK)
    }
    fn with_successes(self, n: u32) -> Word {
        Word(self.0 & !SUCCESS_MASK | (u64::from(n) << SUCCESS_SHIFT) & SUCCESS_MASK)
    }
}

/// What a finished call tells the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The downstream answered (any code not classified as a failure).
    Success,
    /// The downstream failed (a failure code, or our own timeout).
    Failure,
}

/// A state change, as passed to the breaker's observers.
#[derive(Clone, Copy, Debug)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// The window counts at the time (for trips: what tripped it).
    pub counts: WindowCounts,
    /// For `to == Open`: how long it stays open.
    pub open_for: Option<Duration>,
}

/// Something that happened to a breaker, as passed to its observer.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum BreakerEvent<'a> {
    /// The breaker was made (closed).
    Created,
    /// The breaker changed state.
    Transition(&'a Transition),
    /// A call was rejected (open, or half-open with every probe slot taken).
    Rejected,
}

/// Watches a breaker's events (metrics, logs, health): called with the breaker's name.
/// Set it with [`CircuitBreaker::observed`] or
/// [`BreakerRegistry::with_observer`](super::BreakerRegistry::with_observer).
pub type BreakerObserver = Arc<dyn Fn(&str, BreakerEvent<'_>) + Send + Sync>;

struct Slow {
    backoff: Box<dyn Iterator<Item = Duration> + Send>,
}

/// A circuit breaker for one downstream service, shared by all its callers.
///
/// Admission in the closed state is one atomic load; recording a result is one clock read and
/// one or two atomic adds. Nothing on that path locks or allocates. Only state transitions take
/// a mutex.
///
/// ```
/// use steadfast::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let breaker = CircuitBreaker::new("user-svc", BreakerConfig::default());
/// for _ in 0..4 {
///     breaker.try_acquire().unwrap().failure();
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(breaker.try_acquire().is_err());
/// # }
/// ```
pub struct CircuitBreaker {
    name: Arc<str>,
    /// Set when the breaker lives in an `Arc` made by [`CircuitBreaker::shared`]: lets the
    /// open period end by timer, with no call needed.
    me: Weak<CircuitBreaker>,
    config: BreakerConfig,
    word: AtomicU64,
    open_until_ms: AtomicU64,
    base: Instant,
    window: Arc<Window>,
    slow: Mutex<Slow>,
    observer: Option<BreakerObserver>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("counts", &self.counts())
            .field("config", &self.config)
            .finish()
    }
}

/// Why a call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The state that rejected it (open, or half-open with all probe slots taken).
    pub state: BreakerState,
    /// How long until the breaker will next admit a probe, if known.
    pub retry_after: Option<Duration>,
}

/// What a caller holds between admission and result: which generation admitted it and
/// whether it is a half-open probe.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    generation: u32,
    probe: bool,
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the downstream service).
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        Self::build(name.into(), config, None, Weak::new())
    }

    /// A closed breaker in an `Arc`, whose open period ends by timer: `state()` and the
    /// metrics read `half_open` once `open_timeout` has passed, even with no call.
    pub fn shared(name: impl Into<Arc<str>>, config: BreakerConfig) -> Arc<Self> {
        let name = name.into();
        Arc::new_cyclic(|me| Self::build(name, config, None, me.clone()))
    }

    /// [`shared`](Self::shared), with `observer` told of every transition and rejection.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
    /// use steadfast::breaker::{BreakerConfig, BreakerEvent, CircuitBreaker};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let rejections = Arc::new(AtomicU32::new(0));
    /// let seen = rejections.clone();
    /// let breaker = CircuitBreaker::observed("user-svc", BreakerConfig::default(), Arc::new(move |_, e| {
    ///     if let BreakerEvent::Rejected = e { seen.fetch_add(1, Ordering::Relaxed); }
    /// }));
    /// for _ in 0..4 { breaker.try_acquire().unwrap().failure(); }
    /// assert!(breaker.try_acquire().is_err());
    /// assert_eq!(rejections.load(Ordering::Relaxed), 1);
    /// # }
    /// ```
    pub fn observed(
        name: impl Into<Arc<str>>,
        config: BreakerConfig,
        observer: BreakerObserver,
    ) -> Arc<Self> {
        let name = name.into();
        observer(&name, BreakerEvent::Created);
        Arc::new_cyclic(|me| Self::build(name, config, Some(observer), me.clone()))
    }

    fn build(
        name: Arc<str>,
        config: BreakerConfig,
        observer: Option<BreakerObserver>,
        me: Weak<CircuitBreaker>,
    ) -> Self {
        CircuitBreaker {
            name,
            me,
            word: AtomicU64::new(Word::new(0, BreakerState::Closed).0),
            open_until_ms: AtomicU64::new(0),
            base: Instant::now(),
            window: Window::new(config.window()),
            slow: Mutex::new(Slow {
                backoff: backoff(&config),
            }),
            config,
            observer,
        }
    }

    /// The downstream service this breaker guards.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state. An open period that has ended reads `HalfOpen` (the breaker moves
    /// there on this read if no call or timer has yet).
    pub fn state(&self) -> BreakerState {
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == BreakerState::Open
            && self.now_ms() >= self.open_until_ms.load(Ordering::Acquire)
        {
            self.transition(word, BreakerState::HalfOpen);
            return Word(self.word.load(Ordering::Acquire)).state();
        }
        word.state()
    }

    /// Moves an open breaker whose open period has ended to half-open.
    fn advance(&self) {
        let _ = self.state();
    }

    /// The counts of the rolling window now.
    pub fn counts(&self) -> WindowCounts {
        self.window.counts()
    }

    /// Asks to make a call. On success, report the result through the [`Permit`]; dropping
    /// it unreported (a cancelled call) records nothing and frees a half-open probe slot.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        match self.acquire() {
            Ok(ticket) => Ok(Permit {
                breaker: self,
                ticket: Some(ticket),
            }),
            Err(rejected) => {
                self.rejected();
                Err(rejected)
            }
        }
    }

    /// Tells the observer of a rejection.
    #[inline(never)]
    pub(crate) fn rejected(&self) {
        if let Some(observer) = &self.observer {
            observer(&self.name, BreakerEvent::Rejected);
        }
    }

    /// The closed-state fast path inline; everything else out of line.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Ticket, Rejected> {
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() == BreakerState::Closed {
            return Ok(Ticket {
                generation: word.generation(),
                probe: false,
            });
        }
        self.acquire_slow()
    }

    #[inline(never)]
    fn acquire_slow(&self) -> Result<Ticket, Rejected> {
        loop {
            let word = Word(self.word.load(Ordering::Acquire));
            match word.state() {
                BreakerState::Closed => {
                    return Ok(Ticket {
                        generation: word.generation(),
                        probe: false,
                    });
                }
                BreakerState::Open => {
                    let now = self.now_ms();
                    let until = self.open_until_ms.load(Ordering::Acquire);
                    if now < until {
                        return Err(Rejected {
                            state: BreakerState::Open,
                            retry_after: Some(Duration::from_millis(until - now)),
                        });
                    }
                    self.transition(word, BreakerState::HalfOpen);
                }
                BreakerState::HalfOpen => {
                    if word.in_flight() >= self.config.half_open_max_calls() {
                        return Err(Rejected {
                            state: BreakerState::HalfOpen,
                            retry_after: None,
                        });
                    }
                    let next = word.with_in_flight(word.in_flight() + 1);
                    if self.cas(word, next) {
                        return Ok(Ticket {
                            generation: word.generation(),
                            probe: true,
                        });
                    }
                }
            }
        }
    }

    #[inline]
    pub(crate) fn record(&self, ticket: Ticket, outcome: Outcome) {
        if !ticket.probe && outcome == Outcome::Success {
            let word = Word(self.word.load(Ordering::Acquire));
            if word.state() == BreakerState::Closed && word.generation() == ticket.generation {
                return self.window.success();
            }
        }
        self.record_slow(ticket, outcome)
    }

    #[inline(never)]
    fn record_slow(&self, ticket: Ticket, outcome: Outcome) {
        if ticket.probe {
            return self.record_probe(ticket, outcome);
        }
        let word = Word(self.word.load(Ordering::Acquire));
        if word.state() != BreakerState::Closed || word.generation() != ticket.generation {
            // Admitted in an earlier period (before a trip, or before the last close): its
            // result says nothing about this one.
            return;
        }
        match outcome {
            Outcome::Success => self.window.success(),
            Outcome::Failure => {
                let counts = self.window.failure();
                if self.trips(counts) {
                    self.transition(word, BreakerState::Open);
                }
            }
        }
    }

    #[inline]
    pub(crate) fn cancel(&self, ticket: Ticket) {
        if ticket.probe {
            self.cancel_probe(ticket);
        }
    }

    #[inline(never)]
    fn cancel_probe(&self, ticket: Ticket) {
        self.update_probe(ticket, |w| {
            Some(w.with_in_flight(w.in_flight().saturating_sub(1)))
        });
    }

    fn record_probe(&self, ticket: Ticket, outcome: Outcome) {
        match outcome {
            Outcome::Failure => {
                let word = Word(self.word.load(Ordering::Acquire));
                if word.generation() == ticket.generation && word.state() == BreakerState::HalfOpen
                {
                    self.transition(word, BreakerState::Open);
                }
            }
            Outcome::Success => {
                let needed = self.config.half_open_successes();
                let after = self.update_probe(ticket, |w| {
                    Some(
                        w.with_in_flight(w.in_flight().saturating_sub(1))
                            .with_successes(w.successes() + 1),
                    )
                });
                if let Some(after) = after
                    && after.successes() >= needed
                {
                    self.transition(after, BreakerState::Closed);
                }
            }
        }
    }

    /// Applies `f` to the word while it is still in the ticket's half-open generation.
    fn update_probe(&self, ticket: Ticket, f: impl Fn(Word) -> Option<Word>) -> Option<Word> {
        loop {
            let word = Word(self.word.load(Ordering::Acquire));
            if word.generation() != ticket.generation || word.state() != BreakerState::HalfOpen {
                return None;
            }
            let next = f(word)?;
            if self.cas(word, next) {
                return Some(next);
            }
        }
    }

    fn cas(&self, from: Word, to: Word) -> bool {
        self.word
            .compare_exchange(from.0, to.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn trips(&self, c: WindowCounts) -> bool {
        c.failures >= self.config.min_failures()
            && f64::from(c.failures) / f64::from(c.requests.max(1)) > self.config.failure_ratio()
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Moves from `from` (which must still be current, in the same generation) to `to`.
    /// Serialised by the mutex; the hot path never gets here.
    fn transition(&self, from: Word, to: BreakerState) {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        let mut current = Word(self.word.load(Ordering::Acquire));
        if current.generation() != from.generation() || current.state() != from.state() {
            return; // someone else moved it already
        }
        let counts = self.counts();
        let mut open_for = None;
        match to {
            BreakerState::Open => {
                let d = slow.backoff.next().unwrap_or(self.config.open_timeout());
                self.open_until_ms
                    .store(self.now_ms() + d.as_millis() as u64, Ordering::Release);
                open_for = Some(d);
                self.end_open_period_after(d);
            }
            BreakerState::Closed => {
                slow.backoff = backoff(&self.config);
                self.window.clear();
            }
            BreakerState::HalfOpen => {}
        }
        let next = Word::new(from.generation().wrapping_add(1), to);
        // Probe counters may move under us (they change without the mutex): retry on them.
        while let Err(actual) =
            self.word
                .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
        {
            current = Word(actual);
            if current.generation() != from.generation() || current.state() != from.state() {
                return;
            }
        }
        drop(slow);
        let transition = Transition {
            from: from.state(),
            to,
            counts,
            open_for,
        };
        tracing::warn!(
            service = %self.name,
            from = from.state().as_str(),
            to = to.as_str(),
            requests = counts.requests,
            failures = counts.failures,
            open_for_ms = open_for.map(|d| d.as_millis() as u64),
            "circuit breaker {} -> {}", from.state(), to
        );
        if let Some(observer) = &self.observer {
            observer(&self.name, BreakerEvent::Transition(&transition));
        }
    }
}

impl CircuitBreaker {
    /// Moves to half-open by timer once the open period `d` has passed, so that the state,
    /// the metrics and health read the truth without traffic.
    fn end_open_period_after(&self, d: Duration) {
        let Some(me) = self.me.upgrade() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(&me);
        rt.spawn(async move {
            tokio::time::sleep(d).await;
            if let Some(breaker) = me.upgrade() {
                breaker.advance();
            }
        });
    }
}

fn backoff(config: &BreakerConfig) -> Box<dyn Iterator<Item = Duration> + Send> {
    match config.max_open_timeout() {
        // failsafe's exponential backoff: open_timeout, doubling, capped.
        Some(max) => Box::new(failsafe::backoff::exponential(config.open_timeout(), max)),
        None => Box::new(failsafe::backoff::constant(config.open_timeout())),
    }
}

/// Permission to make one call; report its result with [`success`](Permit::success),
/// [`failure`](Permit::failure) or [`record`](Permit::record). Dropping it unreported counts
/// as a cancelled call: nothing is recorded and a half-open probe slot is freed.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Option<Ticket>,
}

impl Permit<'_> {
    /// Records a success.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success)
    }
    /// Records a failure.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure)
    }
    /// Records `outcome`.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome);
        }
    }
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.probe)
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancel(ticket);
        }
    }
}

/// A [`Permit`] that owns a handle to its breaker, for futures that must be `'static`.
#[derive(Debug)]
pub(crate) struct OwnedPermit {
    breaker: Arc<CircuitBreaker>,
    ticket: Option<Ticket>,
}

impl OwnedPermit {
    pub(crate) fn acquire(breaker: &Arc<CircuitBreaker>) -> Result<OwnedPermit, Rejected> {
        breaker.acquire().map(|ticket| OwnedPermit {
            breaker: breaker.clone(),
            ticket: Some(ticket),
        })
    }
    pub(crate) fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome);
        }
    }
    pub(crate) fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.probe)
    }
    pub(crate) fn config(&self) -> &BreakerConfig {
        self.breaker.config()
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancel(ticket);
        }
    }
}
