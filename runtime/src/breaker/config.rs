//! Breaker configuration: the trip rule, the open period and half-open probing.

use std::time::Duration;

use steadfast_spec::BreakerSpec;
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
pub const DEFAULT_FAILURE_CODES: CodeSet =
    CodeSet::from_spec(steadfast_spec::CodeSet::DEFAULT_FAILURES);

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
    spec: BreakerSpec,
}

impl Default for BreakerConfig {
    /// `min_failures` 4, `failure_ratio` 0.6, window 10 s, open 30 s (no growth),
    /// 10 half-open probes, 3 successes to close, [`DEFAULT_FAILURE_CODES`].
    fn default() -> Self {
        BreakerConfig {
            spec: BreakerSpec::DEFAULT,
        }
    }
}

impl BreakerConfig {
    /// Starts a builder from the defaults.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            spec: BreakerSpec::DEFAULT,
            half_open_successes: None,
        }
    }

    /// Values checked at compile time by `#[resilient_client]`, with the same
    /// `BreakerSpec::validate` the builder runs. Not for direct use: this does not validate.
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
            spec: BreakerSpec {
                min_failures,
                failure_ratio,
                window,
                open_timeout,
                max_open_timeout,
                half_open_max_calls,
                half_open_successes,
                failure_codes: steadfast_spec::CodeSet::from_bits(failure_bits),
            },
        }
    }

    /// Failures needed in the window before the ratio is considered.
    pub fn min_failures(&self) -> u32 {
        self.spec.min_failures
    }
    /// The failure ratio that must be exceeded.
    pub fn failure_ratio(&self) -> f64 {
        self.spec.failure_ratio
    }
    /// The rolling window.
    pub fn window(&self) -> Duration {
        self.spec.window
    }
    /// How long the breaker stays open after a trip (the first one, with growth).
    pub fn open_timeout(&self) -> Duration {
        self.spec.open_timeout
    }
    /// The cap of exponential growth of the open period on repeated trips, if enabled.
    pub fn max_open_timeout(&self) -> Option<Duration> {
        self.spec.max_open_timeout
    }
    /// Probes allowed in flight at once while half-open.
    pub fn half_open_max_calls(&self) -> u32 {
        self.spec.half_open_max_calls
    }
    /// Successful probes that close the breaker.
    pub fn half_open_successes(&self) -> u32 {
        self.spec.half_open_successes
    }
    /// The codes that count as failures.
    pub fn failure_codes(&self) -> CodeSet {
        CodeSet::from_spec(self.spec.failure_codes)
    }

    /// Whether `code` counts as a failure of the downstream.
    pub fn is_failure(&self, code: Code) -> bool {
        self.failure_codes().contains(code)
    }
}

/// Builder for [`BreakerConfig`]; [`build`](Self::build) validates.
#[derive(Clone, Debug)]
pub struct BreakerConfigBuilder {
    spec: BreakerSpec,
    /// Set explicitly; otherwise derived from `half_open_max_calls` as the macro does.
    half_open_successes: Option<u32>,
}

impl BreakerConfigBuilder {
    /// Failures needed in the window (1..=10000).
    pub fn min_failures(mut self, n: u32) -> Self {
        self.spec.min_failures = n;
        self
    }
    /// Failure ratio to exceed, in `[0, 1)`.
    pub fn failure_ratio(mut self, r: f64) -> Self {
        self.spec.failure_ratio = r;
        self
    }
    /// The rolling window, 1 s to 10 min.
    pub fn window(mut self, d: Duration) -> Self {
        self.spec.window = d;
        self
    }
    /// The open period after a trip, 1 s to 10 min.
    pub fn open_timeout(mut self, d: Duration) -> Self {
        self.spec.open_timeout = d;
        self
    }
    /// Grow the open period exponentially on repeated trips, up to `max` (<= 10 min).
    pub fn max_open_timeout(mut self, max: Option<Duration>) -> Self {
        self.spec.max_open_timeout = max;
        self
    }
    /// Probes in flight at once while half-open (1..=1000).
    pub fn half_open_max_calls(mut self, n: u32) -> Self {
        self.spec.half_open_max_calls = n;
        self
    }
    /// Successful probes needed to close (1..=half_open_max_calls). Without it: 3, or
    /// `half_open_max_calls` when that is smaller.
    pub fn half_open_successes(mut self, n: u32) -> Self {
        self.half_open_successes = Some(n);
        self
    }
    /// The codes that count as failures (must not be empty, must not hold `Ok`).
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.spec.failure_codes = codes.into_iter().collect::<CodeSet>().to_spec();
        self
    }

    /// Validates and returns the config, or an error naming the first invalid field.
    pub fn build(self) -> Result<BreakerConfig, Error> {
        let mut spec = self.spec;
        spec.half_open_successes =
            self.half_open_successes
                .unwrap_or(BreakerSpec::default_half_open_successes(
                    spec.half_open_max_calls,
                ));
        spec.validate().map_err(Error::from_fields)?;
        Ok(BreakerConfig { spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the spec's, the one copy the macro uses too.
    #[test]
    fn defaults_are_the_spec_defaults() {
        let c = BreakerConfig::default();
        let spec = BreakerSpec::default();
        assert_eq!(c.min_failures(), spec.min_failures);
        assert_eq!(c.failure_ratio(), spec.failure_ratio);
        assert_eq!(c.window(), spec.window);
        assert_eq!(c.open_timeout(), spec.open_timeout);
        assert_eq!(c.max_open_timeout(), spec.max_open_timeout);
        assert_eq!(c.half_open_max_calls(), spec.half_open_max_calls);
        assert_eq!(c.half_open_successes(), spec.half_open_successes);
        assert_eq!(c.failure_codes().bits(), spec.failure_codes.bits());
        assert_eq!(c.failure_codes(), DEFAULT_FAILURE_CODES);
        assert_eq!(BreakerConfig::builder().build().unwrap(), c);
    }

    #[test]
    fn half_open_successes_follow_max_calls_unless_given() {
        let b = BreakerConfig::builder;
        assert_eq!(
            b().half_open_max_calls(2)
                .build()
                .unwrap()
                .half_open_successes(),
            2
        );
        assert!(
            b().half_open_max_calls(2)
                .half_open_successes(3)
                .build()
                .is_err()
        );
        assert!(
            b().failure_codes([Code::Ok, Code::Unavailable])
                .build()
                .is_err()
        );
    }
}
