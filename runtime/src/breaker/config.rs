//! Breaker configuration: the trip rule, the open period and half-open probing.

use std::time::Duration;

use tonic::Code;

use crate::Error;
use crate::code::CodeSet;

/// The codes that count as failures of the downstream by default: Unavailable,
/// DeadlineExceeded (our own per-attempt timeouts included), Internal, Unknown,
/// ResourceExhausted and DataLoss.
///
/// Every other code means the downstream answered, so it counts as a success: InvalidArgument,
/// NotFound, AlreadyExists, PermissionDenied, Unauthenticated, FailedPrecondition, OutOfRange,
/// Unimplemented, Aborted and Cancelled. A call the caller cancels (its future dropped) counts
/// as nothing.
pub const DEFAULT_FAILURE_CODES: CodeSet = CodeSet::EMPTY
    .with(Code::Unavailable)
    .with(Code::DeadlineExceeded)
    .with(Code::Internal)
    .with(Code::Unknown)
    .with(Code::ResourceExhausted)
    .with(Code::DataLoss);

const MIN_OPEN: Duration = Duration::from_secs(1);
const MAX_OPEN: Duration = Duration::from_secs(600);

/// How a [`CircuitBreaker`](super::CircuitBreaker) decides to open, and how it recovers.
///
/// The trip rule follows common Go practice: within the rolling `window`, the breaker opens
/// when `failures >= min_failures` and `failures / requests > failure_ratio`. It then rejects
/// calls for `open_timeout` (growing exponentially up to `max_open_timeout` on repeated trips
/// when that is set), lets at most `half_open_max_calls` probes through at once, and closes
/// after `half_open_successes` successful probes. Any failed probe reopens it.
///
/// ```
/// use std::time::Duration;
/// use steadfast::breaker::BreakerConfig;
///
/// let config = BreakerConfig::builder()
///     .min_failures(5)
///     .failure_ratio(0.5)
///     .open_timeout(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(config.min_failures(), 5);
///
/// let err = BreakerConfig::builder().open_timeout(Duration::from_millis(10)).build().unwrap_err();
/// assert!(err.to_string().contains("open_timeout"));
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    pub(crate) min_failures: u32,
    pub(crate) failure_ratio: f64,
    pub(crate) window: Duration,
    pub(crate) open_timeout: Duration,
    pub(crate) max_open_timeout: Option<Duration>,
    pub(crate) half_open_max_calls: u32,
    pub(crate) half_open_successes: u32,
    pub(crate) failure_codes: CodeSet,
}

impl Default for BreakerConfig {
    /// `min_failures` 4, `failure_ratio` 0.6, window 10 s, open 30 s (no growth),
    /// 10 half-open probes, 3 successes to close, [`DEFAULT_FAILURE_CODES`].
    fn default() -> Self {
        BreakerConfig {
            min_failures: 4,
            failure_ratio: 0.6,
            window: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            max_open_timeout: None,
            half_open_max_calls: 10,
            half_open_successes: 3,
            failure_codes: DEFAULT_FAILURE_CODES,
        }
    }
}

impl BreakerConfig {
    /// Starts a builder from the defaults.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder(BreakerConfig::default())
    }

    /// Values checked at compile time by `#[resilient_client]`.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn __from_macro(
        min_failures: u32,
        failure_ratio: f64,
        window: Duration,
        open_timeout: Duration,
        max_open_timeout: Option<Duration>,
        half_open_max_calls: u32,
        half_open_successes: u32,
        failure_bits: u32,
    ) -> BreakerConfig {
        BreakerConfig {
            min_failures,
            failure_ratio,
            window,
            open_timeout,
            max_open_timeout,
            half_open_max_calls,
            half_open_successes,
            failure_codes: CodeSet::from_bits(failure_bits),
        }
    }

    /// Failures needed in the window before the ratio is considered.
    pub fn min_failures(&self) -> u32 {
        self.min_failures
    }
    /// The failure ratio that must be exceeded.
    pub fn failure_ratio(&self) -> f64 {
        self.failure_ratio
    }
    /// The rolling window.
    pub fn window(&self) -> Duration {
        self.window
    }
    /// How long the breaker stays open after a trip (the first one, with growth).
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }
    /// The cap of exponential growth of the open period on repeated trips, if enabled.
    pub fn max_open_timeout(&self) -> Option<Duration> {
        self.max_open_timeout
    }
    /// Probes allowed in flight at once while half-open.
    pub fn half_open_max_calls(&self) -> u32 {
        self.half_open_max_calls
    }
    /// Successful probes that close the breaker.
    pub fn half_open_successes(&self) -> u32 {
        self.half_open_successes
    }
    /// The codes that count as failures.
    pub fn failure_codes(&self) -> CodeSet {
        self.failure_codes
    }

    /// Whether `code` counts as a failure of the downstream.
    pub fn is_failure(&self, code: Code) -> bool {
        self.failure_codes.contains(code)
    }
}

/// Builder for [`BreakerConfig`]; [`build`](Self::build) validates.
#[derive(Clone, Debug)]
pub struct BreakerConfigBuilder(BreakerConfig);

impl BreakerConfigBuilder {
    /// Failures needed in the window (1..=10000).
    pub fn min_failures(mut self, n: u32) -> Self {
        self.0.min_failures = n;
        self
    }
    /// Failure ratio to exceed, in `[0, 1)`.
    pub fn failure_ratio(mut self, r: f64) -> Self {
        self.0.failure_ratio = r;
        self
    }
    /// The rolling window, 1 s to 10 min.
    pub fn window(mut self, d: Duration) -> Self {
        self.0.window = d;
        self
    }
    /// The open period after a trip, 1 s to 10 min.
    pub fn open_timeout(mut self, d: Duration) -> Self {
        self.0.open_timeout = d;
        self
    }
    /// Grow the open period exponentially on repeated trips, up to `max` (<= 10 min).
    pub fn max_open_timeout(mut self, max: Option<Duration>) -> Self {
        self.0.max_open_timeout = max;
        self
    }
    /// Probes in flight at once while half-open (1..=1000).
    pub fn half_open_max_calls(mut self, n: u32) -> Self {
        self.0.half_open_max_calls = n;
        self
    }
    /// Successful probes needed to close (1..=half_open_max_calls).
    pub fn half_open_successes(mut self, n: u32) -> Self {
        self.0.half_open_successes = n;
        self
    }
    /// The codes that count as failures (must not be empty).
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.0.failure_codes = codes.into_iter().collect();
        self
    }

    /// Validates and returns the config, or an error naming the first invalid field.
    pub fn build(self) -> Result<BreakerConfig, Error> {
        let c = self.0;
        let within = |d: Duration| (MIN_OPEN..=MAX_OPEN).contains(&d);
        if !(1..=10_000).contains(&c.min_failures) {
            return Err(Error::config(
                "breaker.min_failures",
                "must be in 1..=10000",
            ));
        }
        if !(c.failure_ratio.is_finite() && (0.0..1.0).contains(&c.failure_ratio)) {
            return Err(Error::config(
                "breaker.failure_ratio",
                format!("{} must be in [0, 1), e.g. 0.6", c.failure_ratio),
            ));
        }
        if !within(c.window) {
            return Err(Error::config(
                "breaker.window",
                "must be between 1s and 10m",
            ));
        }
        if !within(c.open_timeout) {
            return Err(Error::config(
                "breaker.open_timeout",
                format!("{:?} is outside 1s..=10m", c.open_timeout),
            ));
        }
        if let Some(max) = c.max_open_timeout
            && !(within(max) && max >= c.open_timeout)
        {
            return Err(Error::config(
                "breaker.max_open_timeout",
                "must be between open_timeout and 10m",
            ));
        }
        if !(1..=1000).contains(&c.half_open_max_calls) {
            return Err(Error::config(
                "breaker.half_open_max_calls",
                "must be in 1..=1000",
            ));
        }
        if !(1..=c.half_open_max_calls).contains(&c.half_open_successes) {
            return Err(Error::config(
                "breaker.half_open_successes",
                "must be in 1..=half_open_max_calls",
            ));
        }
        if c.failure_codes.is_empty() {
            return Err(Error::config(
                "breaker.failure_codes",
                "is empty; list the codes that mean the downstream is failing",
            ));
        }
        Ok(c)
    }
}
