//! The retry policy: how many attempts, which codes, how long to back off.

use std::time::Duration;

use steadfast_spec::RetrySpec;
use tonic::Code;

use crate::Error;
use crate::code::CodeSet;

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
    spec: RetrySpec,
}

/// The largest `max_attempts` gRFC A6 allows; service config values above it are clamped.
pub const MAX_ATTEMPTS_LIMIT: u32 = RetrySpec::MAX_ATTEMPTS;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            spec: RetrySpec::DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// Starts a builder from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            spec: RetrySpec::DEFAULT,
        }
    }

    /// A policy from a spec that passed `validate`. Service config goes through here.
    pub(crate) fn from_spec(
        spec: RetrySpec,
    ) -> Result<RetryPolicy, Vec<steadfast_spec::FieldError>> {
        spec.validate()?;
        Ok(RetryPolicy { spec })
    }

    /// Constructs a policy from values the `#[resilient_client]` macro validated at compile
    /// time with the same `RetrySpec::validate` the builder runs. Not for direct use: this
    /// does not validate.
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
            spec: RetrySpec {
                max_attempts,
                initial_backoff,
                max_backoff,
                multiplier,
                per_attempt_timeout,
                retryable_codes: CodeSet::from_bits(retryable_bits).to_spec(),
            },
        }
    }

    /// Attempts in all, the first call included.
    pub fn max_attempts(&self) -> u32 {
        self.spec.max_attempts
    }
    /// The backoff before the first retry (before jitter).
    pub fn initial_backoff(&self) -> Duration {
        self.spec.initial_backoff
    }
    /// The cap on the backoff (before jitter).
    pub fn max_backoff(&self) -> Duration {
        self.spec.max_backoff
    }
    /// The growth factor of the backoff per retry.
    pub fn multiplier(&self) -> f64 {
        self.spec.multiplier
    }
    /// The timeout of each attempt, if any. An attempt is also bounded by the overall deadline.
    pub fn per_attempt_timeout(&self) -> Option<Duration> {
        self.spec.per_attempt_timeout
    }
    /// The codes that are retried.
    pub fn retryable_codes(&self) -> CodeSet {
        CodeSet::from_spec(self.spec.retryable_codes)
    }

    /// The backoff before retry `n` (1-based) without jitter:
    /// `min(initial_backoff * multiplier^(n-1), max_backoff)`.
    pub fn base_backoff(&self, n: u32) -> Duration {
        let exp = self
            .multiplier()
            .powi(n.saturating_sub(1).min(1_000) as i32);
        let secs = self.initial_backoff().as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max_backoff().as_secs_f64() {
            self.max_backoff()
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
    spec: RetrySpec,
}

impl RetryPolicyBuilder {
    /// Attempts in all, the first call included: 2..=5.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.spec.max_attempts = n;
        self
    }
    /// The backoff before the first retry; must be > 0.
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.spec.initial_backoff = d;
        self
    }
    /// The cap on the backoff; must be > 0.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.spec.max_backoff = d;
        self
    }
    /// The growth factor; must be finite and > 0.
    pub fn multiplier(mut self, m: f64) -> Self {
        self.spec.multiplier = m;
        self
    }
    /// The timeout of each attempt; must be > 0 and at most 1 day.
    pub fn per_attempt_timeout(mut self, d: Option<Duration>) -> Self {
        self.spec.per_attempt_timeout = d;
        self
    }
    /// The codes to retry. Must be non-empty and must not contain `Ok` or a never-retryable
    /// code.
    pub fn retry_on(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.spec.retryable_codes = codes.into_iter().collect::<CodeSet>().to_spec();
        self
    }

    /// Validates and returns the policy, or an error naming the first invalid field.
    pub fn build(self) -> Result<RetryPolicy, Error> {
        RetryPolicy::from_spec(self.spec).map_err(Error::from_fields)
    }
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
        assert_eq!(field(b().retry_on([Code::Ok]).build()), "retryable_codes");
        assert_eq!(
            field(
                b().per_attempt_timeout(Some(Duration::from_secs(86_401)))
                    .build()
            ),
            "per_attempt_timeout"
        );
        assert!(
            b().per_attempt_timeout(Some(Duration::from_secs(86_400)))
                .build()
                .is_ok()
        );
        assert!(b().build().is_ok());
    }

    /// The defaults are the spec's, the one copy the macro uses too.
    #[test]
    fn defaults_are_the_spec_defaults() {
        let p = RetryPolicy::default();
        let spec = RetrySpec::default();
        assert_eq!(p.max_attempts(), spec.max_attempts);
        assert_eq!(p.initial_backoff(), spec.initial_backoff);
        assert_eq!(p.max_backoff(), spec.max_backoff);
        assert_eq!(p.multiplier(), spec.multiplier);
        assert_eq!(p.per_attempt_timeout(), spec.per_attempt_timeout);
        assert_eq!(p.retryable_codes().bits(), spec.retryable_codes.bits());
        assert_eq!(RetryPolicy::builder().build().unwrap(), p);
        assert_eq!(p.retryable_codes(), CodeSet::DEFAULT_RETRYABLE);
        assert_eq!(MAX_ATTEMPTS_LIMIT, 5);
    }
}
