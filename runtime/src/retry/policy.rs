//! The retry policy: how many attempts, which codes, how long to back off.

use std::time::Duration;

use tonic::Code;

use crate::Error;
use crate::code::{CodeSet, code_name};

/// The retry policy of one method, with gRFC A6 ("gRPC client retries") semantics.
///
/// Build it with [`RetryPolicy::builder`], which validates every field, or take the
/// [`Default`]: 3 attempts, 100 ms initial backoff, 1 s max backoff, multiplier 2,
/// no per-attempt timeout, retrying `Unavailable` only.
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::RetryPolicy;
/// use tonic::Code;
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(4)
///     .initial_backoff(Duration::from_millis(50))
///     .retry_on([Code::Unavailable, Code::ResourceExhausted])
///     .build()?;
/// assert_eq!(policy.max_attempts(), 4);
///
/// // Codes that a retry cannot fix are refused, naming the field.
/// let err = RetryPolicy::builder().retry_on([Code::NotFound]).build().unwrap_err();
/// assert!(err.to_string().contains("retryable_codes"));
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    per_attempt_timeout: Option<Duration>,
    retryable: CodeSet,
}

/// The largest `max_attempts` gRFC A6 allows; service config values above it are clamped.
pub const MAX_ATTEMPTS_LIMIT: u32 = 5;

/// The longest per-attempt timeout accepted (1 day).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            per_attempt_timeout: None,
            retryable: CodeSet::DEFAULT_RETRYABLE,
        }
    }
}

impl RetryPolicy {
    /// Starts a builder from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: RetryPolicy::default(),
        }
    }

    /// Constructs a policy from values the `#[resilient_client]` macro validated at compile
    /// time. Not for direct use: the builder validates, this does not.
    #[doc(hidden)]
    pub const fn __from_macro(
        max_attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        multiplier: f64,
        per_attempt_timeout: Option<Duration>,
        retryable_bits: u32,
    ) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
            multiplier,
            per_attempt_timeout,
            retryable: CodeSet::from_bits(retryable_bits),
        }
    }

    /// Attempts in all, the first call included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// The backoff before the first retry (before jitter).
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }
    /// The cap on the backoff (before jitter).
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }
    /// The growth factor of the backoff per retry.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }
    /// The timeout of each attempt, if any. An attempt is also bounded by the overall deadline.
    pub fn per_attempt_timeout(&self) -> Option<Duration> {
        self.per_attempt_timeout
    }
    /// The codes that are retried.
    pub fn retryable_codes(&self) -> CodeSet {
        self.retryable
    }

    /// The backoff before retry `n` (1-based) without jitter:
    /// `min(initial_backoff * multiplier^(n-1), max_backoff)`.
    pub fn base_backoff(&self, n: u32) -> Duration {
        let exp = self.multiplier.powi(n.saturating_sub(1).min(1_000) as i32);
        let secs = self.initial_backoff.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max_backoff.as_secs_f64() {
            self.max_backoff
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The backoff before retry `n` with A6 jitter: `base_backoff(n) * U(0.8, 1.2)`, where
    /// `unit` is a uniform sample from `[0, 1)`.
    pub fn jittered_backoff(&self, n: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.base_backoff(n).mul_f64(0.8 + 0.4 * unit)
    }
}

/// Builder for [`RetryPolicy`]; [`build`](RetryPolicyBuilder::build) validates.
#[derive(Clone, Debug)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Attempts in all, the first call included: 2..=5.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n;
        self
    }
    /// The backoff before the first retry; must be > 0.
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.policy.initial_backoff = d;
        self
    }
    /// The cap on the backoff; must be > 0.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.policy.max_backoff = d;
        self
    }
    /// The growth factor; must be finite and > 0.
    pub fn multiplier(mut self, m: f64) -> Self {
        self.policy.multiplier = m;
        self
    }
    /// The timeout of each attempt; must be > 0.
    pub fn per_attempt_timeout(mut self, d: Option<Duration>) -> Self {
        self.policy.per_attempt_timeout = d;
        self
    }
    /// The codes to retry. Must be non-empty and must not contain a never-retryable code.
    pub fn retry_on(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.policy.retryable = codes.into_iter().collect();
        self
    }

    /// Validates and returns the policy, or an error naming the first invalid field.
    pub fn build(self) -> Result<RetryPolicy, Error> {
        let p = self.policy;
        if !(2..=MAX_ATTEMPTS_LIMIT).contains(&p.max_attempts) {
            return Err(Error::config(
                "max_attempts",
                format!(
                    "{} is outside 2..=5 (gRFC A6 counts the first call; use `no_retry` for 1)",
                    p.max_attempts
                ),
            ));
        }
        if p.initial_backoff.is_zero() {
            return Err(Error::config(
                "initial_backoff",
                "must be greater than zero",
            ));
        }
        if p.max_backoff.is_zero() {
            return Err(Error::config("max_backoff", "must be greater than zero"));
        }
        if !(p.multiplier.is_finite() && p.multiplier > 0.0) {
            return Err(Error::config(
                "backoff_multiplier",
                format!("{} must be a finite number greater than zero", p.multiplier),
            ));
        }
        if p.per_attempt_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "per_attempt_timeout",
                "must be greater than zero",
            ));
        }
        if p.per_attempt_timeout.is_some_and(|d| d > MAX_TIMEOUT) {
            return Err(Error::config(
                "per_attempt_timeout",
                "must be at most 1 day",
            ));
        }
        validate_codes(p.retryable)?;
        Ok(p)
    }
}

pub(crate) fn validate_codes(codes: CodeSet) -> Result<(), Error> {
    if codes.is_empty() {
        return Err(Error::config(
            "retryable_codes",
            "is empty; list at least one code, e.g. UNAVAILABLE",
        ));
    }
    let bad = codes.intersection(CodeSet::NEVER_RETRYABLE);
    if let Some(code) = bad.iter().next() {
        return Err(Error::config(
            "retryable_codes",
            format!(
                "{} is never retried: the same request cannot succeed; remove it",
                code_name(code)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_backoff(1), Duration::from_millis(100));
        assert_eq!(p.base_backoff(2), Duration::from_millis(200));
        assert_eq!(p.base_backoff(4), Duration::from_millis(800));
        assert_eq!(p.base_backoff(5), Duration::from_secs(1));
        assert_eq!(p.base_backoff(500), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_a6_bounds_over_many_samples() {
        let p = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        for i in 0..100_000 {
            let n = 1 + (i % 6);
            let base = p.base_backoff(n).as_secs_f64();
            let got = p.jittered_backoff(n, rng.f64()).as_secs_f64() / base;
            assert!(
                (0.8 - 1e-9..=1.2 + 1e-9).contains(&got),
                "ratio {got} for retry {n}"
            );
            lo = lo.min(got);
            hi = hi.max(got);
        }
        // The samples cover the whole band, not a corner of it.
        assert!(
            lo < 0.81 && hi > 1.19,
            "jitter band [{lo}, {hi}] is too narrow"
        );
    }

    #[test]
    fn builder_names_the_bad_field() {
        let field = |r: Result<RetryPolicy, Error>| match r.unwrap_err() {
            Error::Config { field, .. } => field,
            other => panic!("{other}"),
        };
        let b = RetryPolicy::builder;
        assert_eq!(field(b().max_attempts(6).build()), "max_attempts");
        assert_eq!(field(b().multiplier(0.0).build()), "backoff_multiplier");
        assert_eq!(
            field(b().multiplier(f64::NAN).build()),
            "backoff_multiplier"
        );
        assert_eq!(
            field(b().initial_backoff(Duration::ZERO).build()),
            "initial_backoff"
        );
        assert_eq!(
            field(b().retry_on([Code::InvalidArgument]).build()),
            "retryable_codes"
        );
        assert_eq!(field(b().retry_on([]).build()), "retryable_codes");
        assert!(b().build().is_ok());
    }
}
