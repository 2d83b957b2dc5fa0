//! The retry policy model (gRFC A6).

use std::time::Duration;

use crate::error::Errors;
use crate::{Code, CodeSet, FieldError, duration};

/// The retry policy of one method, with gRFC A6 ("gRPC client retries") semantics.
///
/// [`Default`] is the documented default: 3 attempts, 100 ms initial backoff, 1 s max
/// backoff, multiplier 2, no per-attempt timeout, retrying `Unavailable` only.
///
/// ```
/// use std::time::Duration;
/// use steadfast_spec::{Code, CodeSet, RetrySpec};
///
/// let spec = RetrySpec::default();
/// assert_eq!(spec.max_attempts, 3);
/// assert_eq!(spec.initial_backoff, Duration::from_millis(100));
/// assert_eq!(spec.retryable_codes, CodeSet::EMPTY.with(Code::Unavailable));
/// assert_eq!(spec.validate(), Ok(()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrySpec {
    /// Attempts in all, the first call included: 2..=5 (field `max_attempts`).
    pub max_attempts: u32,
    /// The backoff before the first retry, before jitter; above zero (`initial_backoff`).
    pub initial_backoff: Duration,
    /// The cap on the backoff, before jitter; above zero (`max_backoff`).
    pub max_backoff: Duration,
    /// The growth factor of the backoff per retry; finite and above zero
    /// (`backoff_multiplier`).
    pub multiplier: f64,
    /// The timeout of each attempt, if any; above zero and at most 1 day
    /// (`per_attempt_timeout`).
    pub per_attempt_timeout: Option<Duration>,
    /// The codes that are retried; not empty, no code of [`CodeSet::NEVER_RETRYABLE`] and not
    /// `Ok` (`retryable_codes`).
    pub retryable_codes: CodeSet,
}

impl RetrySpec {
    /// The fewest attempts: a policy with one attempt is no retry policy.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::RetrySpec::MIN_ATTEMPTS, 2);
    /// ```
    pub const MIN_ATTEMPTS: u32 = 2;

    /// The most attempts gRFC A6 allows. Service config clamps larger values to it; the
    /// macro and the builders refuse them.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::RetrySpec::MAX_ATTEMPTS, 5);
    /// ```
    pub const MAX_ATTEMPTS: u32 = 5;

    /// The longest per-attempt timeout: 1 day.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(steadfast_spec::RetrySpec::MAX_PER_ATTEMPT_TIMEOUT, Duration::from_secs(86_400));
    /// ```
    pub const MAX_PER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(86_400);

    /// The defaults, as a constant.
    ///
    /// ```
    /// use steadfast_spec::RetrySpec;
    /// assert_eq!(RetrySpec::DEFAULT, RetrySpec::default());
    /// ```
    pub const DEFAULT: RetrySpec = RetrySpec {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        multiplier: 2.0,
        per_attempt_timeout: None,
        retryable_codes: CodeSet::DEFAULT_RETRYABLE,
    };

    /// Checks every field; returns all the errors, in field order.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast_spec::{Code, CodeSet, RetrySpec};
    ///
    /// let spec = RetrySpec {
    ///     max_attempts: 1,
    ///     retryable_codes: CodeSet::EMPTY.with(Code::Unavailable).with(Code::NotFound),
    ///     ..RetrySpec::default()
    /// };
    /// let errors = spec.validate().unwrap_err();
    /// assert_eq!(errors[0].field, "max_attempts");
    /// assert_eq!(errors[1].field, "retryable_codes");
    /// assert_eq!(errors[1].code, Some(Code::NotFound));
    /// ```
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        let n = self.max_attempts;
        errors.check(
            (Self::MIN_ATTEMPTS..=Self::MAX_ATTEMPTS).contains(&n),
            "max_attempts",
            || {
                format!(
                    "{n} is outside 2..=5 (gRFC A6 counts the first call); write 2 to 5, or turn retries off with `no_retry` for a single attempt"
                )
            },
        );
        errors.check(!self.initial_backoff.is_zero(), "initial_backoff", || {
            positive("100ms")
        });
        errors.check(!self.max_backoff.is_zero(), "max_backoff", || {
            positive("1s")
        });
        let m = self.multiplier;
        errors.check(m.is_finite() && m > 0.0, "backoff_multiplier", || {
            format!("{m} is not a finite number greater than 0; write e.g. 2.0")
        });
        if let Some(d) = self.per_attempt_timeout {
            errors.check(!d.is_zero(), "per_attempt_timeout", || {
                positive("300ms") + ", or leave the per-attempt timeout out"
            });
            errors.check(
                d <= Self::MAX_PER_ATTEMPT_TIMEOUT,
                "per_attempt_timeout",
                || {
                    format!(
                        "{} is longer than 1 day; write at most \"24h\"",
                        duration::format(d)
                    )
                },
            );
        }
        retryable_codes(&mut errors, self.retryable_codes);
        errors.finish()
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec::DEFAULT
    }
}

/// The message for a zero duration that must be positive.
pub(crate) fn positive(example: &str) -> String {
    format!("0s is too short; write a duration greater than zero, e.g. \"{example}\"")
}

fn retryable_codes(errors: &mut Errors, codes: CodeSet) {
    const FIELD: &str = "retryable_codes";
    if codes.is_empty() {
        errors.push(FieldError::new(
            FIELD,
            "no codes are listed; list at least one, e.g. Unavailable",
        ));
    }
    if codes.contains(Code::Ok) {
        errors.push(FieldError::entry(
            FIELD,
            Code::Ok,
            "`Ok` is a success, not a failure: there is nothing to retry; remove it",
        ));
    }
    for code in codes.intersection(CodeSet::NEVER_RETRYABLE).iter() {
        errors.push(FieldError::entry(
            FIELD,
            code,
            format!(
                "`{code}` is never retried: sending the same request again cannot succeed; remove it"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(spec: RetrySpec) -> Vec<&'static str> {
        spec.validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn ok(spec: RetrySpec) -> bool {
        spec.validate().is_ok()
    }

    const D: RetrySpec = RetrySpec::DEFAULT;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        assert_eq!(D.max_attempts, 3);
        assert_eq!(D.initial_backoff, Duration::from_millis(100));
        assert_eq!(D.max_backoff, Duration::from_secs(1));
        assert_eq!(D.multiplier, 2.0);
        assert_eq!(D.per_attempt_timeout, None);
        assert_eq!(D.retryable_codes, CodeSet::EMPTY.with(Code::Unavailable));
        assert!(ok(D));
    }

    #[test]
    fn max_attempts_edges() {
        let with = |max_attempts| RetrySpec { max_attempts, ..D };
        assert_eq!(fields(with(0)), ["max_attempts"]);
        assert_eq!(fields(with(1)), ["max_attempts"]);
        assert!(ok(with(2)));
        assert!(ok(with(5)));
        assert_eq!(fields(with(6)), ["max_attempts"]);
        assert_eq!(fields(with(u32::MAX)), ["max_attempts"]);
        let e = &with(6).validate().unwrap_err()[0];
        assert!(e.message.starts_with("6 is outside 2..=5"), "{e}");
        assert!(e.message.contains("no_retry"), "{e}");
    }

    #[test]
    fn backoffs_must_be_positive() {
        let tiny = Duration::from_nanos(1);
        assert_eq!(
            fields(RetrySpec {
                initial_backoff: Duration::ZERO,
                ..D
            }),
            ["initial_backoff"]
        );
        assert!(ok(RetrySpec {
            initial_backoff: tiny,
            ..D
        }));
        assert_eq!(
            fields(RetrySpec {
                max_backoff: Duration::ZERO,
                ..D
            }),
            ["max_backoff"]
        );
        assert!(ok(RetrySpec {
            max_backoff: tiny,
            ..D
        }));
        let e = &RetrySpec {
            max_backoff: Duration::ZERO,
            ..D
        }
        .validate()
        .unwrap_err()[0];
        assert_eq!(
            e.message,
            "0s is too short; write a duration greater than zero, e.g. \"1s\""
        );
    }

    #[test]
    fn multiplier_is_finite_and_positive() {
        let with = |multiplier| RetrySpec { multiplier, ..D };
        for bad in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(fields(with(bad)), ["backoff_multiplier"], "{bad}");
        }
        assert!(ok(with(f64::MIN_POSITIVE)));
        assert!(ok(with(0.5)));
        assert!(ok(with(f64::MAX)));
        let e = &with(0.0).validate().unwrap_err()[0];
        assert_eq!(
            e.message,
            "0 is not a finite number greater than 0; write e.g. 2.0"
        );
    }

    #[test]
    fn per_attempt_timeout_is_positive_and_at_most_a_day() {
        let with = |d| RetrySpec {
            per_attempt_timeout: Some(d),
            ..D
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(fields(with(Duration::ZERO)), ["per_attempt_timeout"]);
        assert!(ok(with(Duration::from_nanos(1))));
        assert!(ok(with(day)));
        assert_eq!(
            fields(with(day + Duration::from_nanos(1))),
            ["per_attempt_timeout"]
        );
        let e = &with(Duration::from_secs(2 * 86_400))
            .validate()
            .unwrap_err()[0];
        assert_eq!(e.message, "48h is longer than 1 day; write at most \"24h\"");
    }

    #[test]
    fn retryable_codes_are_listed_and_retryable() {
        let with = |codes: &[Code]| RetrySpec {
            retryable_codes: codes.iter().copied().collect(),
            ..D
        };
        assert_eq!(fields(with(&[])), ["retryable_codes"]);
        assert_eq!(with(&[]).validate().unwrap_err()[0].code, None);
        let retryable = [
            Code::Cancelled,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
        ];
        assert!(ok(with(&retryable)));
        for code in Code::ALL {
            let errors = with(&[Code::Unavailable, code]).validate();
            let refused = code == Code::Ok || CodeSet::NEVER_RETRYABLE.contains(code);
            assert_eq!(errors.is_err(), refused, "{code}");
            if let Err(errors) = errors {
                assert_eq!(errors.len(), 1);
                assert_eq!(errors[0].code, Some(code));
                assert!(errors[0].message.contains(&format!("`{code}`")));
                assert!(errors[0].message.ends_with("remove it"));
            }
        }
        // Every bad entry is reported, not only the first.
        let errors = with(&[Code::NotFound, Code::Unimplemented])
            .validate()
            .unwrap_err();
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let spec = RetrySpec {
            max_attempts: 9,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            multiplier: -2.0,
            per_attempt_timeout: Some(Duration::ZERO),
            retryable_codes: CodeSet::EMPTY,
        };
        assert_eq!(
            fields(spec),
            [
                "max_attempts",
                "initial_backoff",
                "max_backoff",
                "backoff_multiplier",
                "per_attempt_timeout",
                "retryable_codes"
            ]
        );
    }
}
