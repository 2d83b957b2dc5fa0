//! The circuit breaker model.

use std::time::Duration;

use crate::duration::format;
use crate::error::Errors;
use crate::{Code, CodeSet, FieldError};

/// How a circuit breaker decides to open, and how it recovers.
///
/// Within the rolling `window`, the breaker opens when `failures >= min_failures` and
/// `failures / requests > failure_ratio`. It then rejects calls for `open_timeout` (growing
/// exponentially up to `max_open_timeout` on repeated trips when that is set), lets at most
/// `half_open_max_calls` probes through at once, and closes after `half_open_successes`
/// successful probes.
///
/// [`Default`]: `min_failures` 4, `failure_ratio` 0.6, `window` 10 s, `open_timeout` 30 s
/// without growth, 10 half-open probes, 3 successes to close, failures are
/// [`CodeSet::DEFAULT_FAILURES`].
///
/// ```
/// use std::time::Duration;
/// use steadfast_spec::BreakerSpec;
///
/// let spec = BreakerSpec { open_timeout: Duration::from_secs(5), ..BreakerSpec::default() };
/// assert_eq!(spec.validate(), Ok(()));
/// let bad = BreakerSpec { open_timeout: Duration::from_millis(500), ..spec };
/// let e = &bad.validate().unwrap_err()[0];
/// assert_eq!(e.field, "breaker.open_timeout");
/// assert_eq!(e.message, "500ms is outside 1s..=10m; write e.g. \"30s\"");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSpec {
    /// Failures needed in the window before the ratio is considered: 1..=10000
    /// (field `breaker.min_failures`).
    pub min_failures: u32,
    /// The failure ratio that must be exceeded: in `[0, 1)` (`breaker.failure_ratio`).
    pub failure_ratio: f64,
    /// The rolling window: 1 s to 10 min (`breaker.window`).
    pub window: Duration,
    /// The open period after a trip: 1 s to 10 min (`breaker.open_timeout`).
    pub open_timeout: Duration,
    /// The cap of exponential growth of the open period, if it grows: from `open_timeout` to
    /// 10 min (`breaker.max_open_timeout`).
    pub max_open_timeout: Option<Duration>,
    /// Probes in flight at once while half-open: 1..=1000 (`breaker.half_open_max_calls`).
    pub half_open_max_calls: u32,
    /// Successful probes that close the breaker: 1..=`half_open_max_calls`
    /// (`breaker.half_open_successes`).
    pub half_open_successes: u32,
    /// The codes that count as failures: not empty, not `Ok` (`breaker.failure_codes`).
    pub failure_codes: CodeSet,
}

impl BreakerSpec {
    /// The shortest open period and window.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::BreakerSpec::MIN_PERIOD.as_secs(), 1);
    /// ```
    pub const MIN_PERIOD: Duration = Duration::from_secs(1);

    /// The longest open period and window.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::BreakerSpec::MAX_PERIOD.as_secs(), 600);
    /// ```
    pub const MAX_PERIOD: Duration = Duration::from_secs(600);

    /// The defaults, as a constant.
    ///
    /// ```
    /// use steadfast_spec::BreakerSpec;
    /// assert_eq!(BreakerSpec::DEFAULT, BreakerSpec::default());
    /// assert_eq!(BreakerSpec::DEFAULT.min_failures, 4);
    /// ```
    pub const DEFAULT: BreakerSpec = BreakerSpec {
        min_failures: 4,
        failure_ratio: 0.6,
        window: Duration::from_secs(10),
        open_timeout: Duration::from_secs(30),
        max_open_timeout: None,
        half_open_max_calls: 10,
        half_open_successes: 3,
        failure_codes: CodeSet::DEFAULT_FAILURES,
    };

    /// The `half_open_successes` to use when only `half_open_max_calls` is given: the default
    /// 3, or all the probes when fewer are allowed.
    ///
    /// ```
    /// use steadfast_spec::BreakerSpec;
    /// assert_eq!(BreakerSpec::default_half_open_successes(10), 3);
    /// assert_eq!(BreakerSpec::default_half_open_successes(2), 2);
    /// ```
    pub const fn default_half_open_successes(half_open_max_calls: u32) -> u32 {
        let default = BreakerSpec::DEFAULT.half_open_successes;
        if half_open_max_calls == 0 {
            default
        } else if half_open_max_calls < default {
            half_open_max_calls
        } else {
            default
        }
    }

    /// Checks every field; returns all the errors, in field order.
    ///
    /// ```
    /// use steadfast_spec::BreakerSpec;
    ///
    /// let spec = BreakerSpec { half_open_max_calls: 2, half_open_successes: 5, ..BreakerSpec::default() };
    /// let e = &spec.validate().unwrap_err()[0];
    /// assert_eq!(e.field, "breaker.half_open_successes");
    /// assert_eq!(e.message, "5 is outside 1..=2 (half_open_max_calls); write at most 2");
    /// ```
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        let within = |d: Duration| (Self::MIN_PERIOD..=Self::MAX_PERIOD).contains(&d);
        let n = self.min_failures;
        errors.check((1..=10_000).contains(&n), "breaker.min_failures", || {
            format!("{n} is outside 1..=10000; write e.g. 4")
        });
        let r = self.failure_ratio;
        errors.check(
            r.is_finite() && (0.0..1.0).contains(&r),
            "breaker.failure_ratio",
            || format!("{r} is outside [0, 1); write e.g. 0.6"),
        );
        errors.check(within(self.window), "breaker.window", || {
            format!(
                "{} is outside 1s..=10m; write e.g. \"10s\"",
                format(self.window)
            )
        });
        let open = self.open_timeout;
        errors.check(within(open), "breaker.open_timeout", || {
            format!("{} is outside 1s..=10m; write e.g. \"30s\"", format(open))
        });
        if let Some(max) = self.max_open_timeout {
            const FIELD: &str = "breaker.max_open_timeout";
            if !within(max) {
                errors.push(FieldError::new(
                    FIELD,
                    format!(
                        "{} is outside 1s..=10m; write e.g. \"5m\", or leave it out for a fixed open period",
                        format(max)
                    ),
                ));
            } else if max < open {
                errors.push(FieldError::new(
                    FIELD,
                    format!(
                        "{} is shorter than open_timeout ({}); write at least \"{}\", or leave it out for a fixed open period",
                        format(max),
                        format(open),
                        format(open)
                    ),
                ));
            }
        }
        let calls = self.half_open_max_calls;
        let calls_ok = (1..=1000).contains(&calls);
        errors.check(calls_ok, "breaker.half_open_max_calls", || {
            format!("{calls} is outside 1..=1000; write e.g. 10")
        });
        let successes = self.half_open_successes;
        let most = if calls_ok { calls } else { 1000 };
        errors.check(
            (1..=most).contains(&successes),
            "breaker.half_open_successes",
            || {
                format!(
                    "{successes} is outside 1..={most} (half_open_max_calls); write at most {most}"
                )
            },
        );
        const CODES: &str = "breaker.failure_codes";
        if self.failure_codes.is_empty() {
            errors.push(FieldError::new(
                CODES,
                "no codes are listed; list the codes that mean the downstream is failing, e.g. Unavailable, DeadlineExceeded",
            ));
        }
        if self.failure_codes.contains(Code::Ok) {
            errors.push(FieldError::entry(
                CODES,
                Code::Ok,
                "`Ok` is a success, not a failure; remove it",
            ));
        }
        errors.finish()
    }
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: BreakerSpec = BreakerSpec::DEFAULT;
    const SEC: Duration = Duration::from_secs(1);
    const NANO: Duration = Duration::from_nanos(1);

    fn fields(spec: BreakerSpec) -> Vec<&'static str> {
        spec.validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        assert_eq!(D.min_failures, 4);
        assert_eq!(D.failure_ratio, 0.6);
        assert_eq!(D.window, Duration::from_secs(10));
        assert_eq!(D.open_timeout, Duration::from_secs(30));
        assert_eq!(D.max_open_timeout, None);
        assert_eq!(D.half_open_max_calls, 10);
        assert_eq!(D.half_open_successes, 3);
        assert_eq!(D.failure_codes, CodeSet::DEFAULT_FAILURES);
        assert!(fields(D).is_empty());
    }

    #[test]
    fn min_failures_edges() {
        let with = |min_failures| BreakerSpec { min_failures, ..D };
        assert_eq!(fields(with(0)), ["breaker.min_failures"]);
        assert!(fields(with(1)).is_empty());
        assert!(fields(with(10_000)).is_empty());
        assert_eq!(fields(with(10_001)), ["breaker.min_failures"]);
    }

    #[test]
    fn failure_ratio_edges() {
        let with = |failure_ratio| BreakerSpec { failure_ratio, ..D };
        assert!(fields(with(0.0)).is_empty());
        assert!(fields(with(0.999_999)).is_empty());
        for bad in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(fields(with(bad)), ["breaker.failure_ratio"], "{bad}");
        }
    }

    #[test]
    fn window_and_open_timeout_edges() {
        for (field, with) in [
            (
                "breaker.window",
                (|window| BreakerSpec { window, ..D }) as fn(Duration) -> BreakerSpec,
            ),
            ("breaker.open_timeout", |open_timeout| BreakerSpec {
                open_timeout,
                ..D
            }),
        ] {
            assert_eq!(fields(with(Duration::ZERO)), [field]);
            assert_eq!(fields(with(SEC - NANO)), [field]);
            assert!(fields(with(SEC)).is_empty());
            assert!(fields(with(SEC * 600)).is_empty());
            assert_eq!(fields(with(SEC * 600 + NANO)), [field]);
        }
    }

    #[test]
    fn max_open_timeout_edges() {
        let with = |max| BreakerSpec {
            open_timeout: SEC * 30,
            max_open_timeout: Some(max),
            ..D
        };
        assert!(fields(with(SEC * 30)).is_empty());
        assert!(fields(with(SEC * 600)).is_empty());
        assert_eq!(fields(with(SEC * 30 - NANO)), ["breaker.max_open_timeout"]);
        assert_eq!(fields(with(SEC * 600 + NANO)), ["breaker.max_open_timeout"]);
        assert_eq!(fields(with(Duration::ZERO)), ["breaker.max_open_timeout"]);
        assert_eq!(
            with(SEC * 10).validate().unwrap_err()[0].message,
            "10s is shorter than open_timeout (30s); write at least \"30s\", or leave it out for a fixed open period"
        );
    }

    #[test]
    fn half_open_edges() {
        let with = |half_open_max_calls, half_open_successes| BreakerSpec {
            half_open_max_calls,
            half_open_successes,
            ..D
        };
        assert_eq!(fields(with(0, 1)), ["breaker.half_open_max_calls"]);
        assert!(fields(with(1, 1)).is_empty());
        assert!(fields(with(1000, 1000)).is_empty());
        assert_eq!(fields(with(1001, 3)), ["breaker.half_open_max_calls"]);
        assert_eq!(fields(with(10, 0)), ["breaker.half_open_successes"]);
        assert!(fields(with(10, 10)).is_empty());
        assert_eq!(fields(with(10, 11)), ["breaker.half_open_successes"]);
        // With invalid max calls, successes are held to the largest max calls only.
        assert_eq!(
            fields(with(2000, 1001)),
            ["breaker.half_open_max_calls", "breaker.half_open_successes"]
        );
        assert_eq!(BreakerSpec::default_half_open_successes(0), 3);
        assert_eq!(BreakerSpec::default_half_open_successes(1), 1);
        assert_eq!(BreakerSpec::default_half_open_successes(3), 3);
        assert_eq!(BreakerSpec::default_half_open_successes(1000), 3);
    }

    #[test]
    fn failure_codes_are_listed_and_not_ok() {
        let with = |codes: CodeSet| BreakerSpec {
            failure_codes: codes,
            ..D
        };
        assert_eq!(fields(with(CodeSet::EMPTY)), ["breaker.failure_codes"]);
        let errors = with(CodeSet::DEFAULT_FAILURES.with(Code::Ok))
            .validate()
            .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, Some(Code::Ok));
        assert!(fields(with(CodeSet::EMPTY.with(Code::NotFound))).is_empty());
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let spec = BreakerSpec {
            min_failures: 0,
            failure_ratio: 2.0,
            window: Duration::ZERO,
            open_timeout: Duration::ZERO,
            max_open_timeout: Some(Duration::ZERO),
            half_open_max_calls: 0,
            half_open_successes: 0,
            failure_codes: CodeSet::EMPTY,
        };
        assert_eq!(fields(spec).len(), 8);
    }
}
