//! Retry throttling: the gRFC A6 token bucket, shared by every client of one downstream.

use std::sync::atomic::{AtomicU32, Ordering};

use steadfast_spec::ThrottleSpec;

use crate::Error;

/// Token values are stored in thousandths, the precision A6 gives `token_ratio`.
const SCALE: u32 = 1000;

/// Retry throttling as gRFC A6 defines it, lock-free.
///
/// The bucket starts full with `max_tokens`. A failed attempt with a retryable code, or a
/// pushback that says "do not retry", costs one token; a success adds `token_ratio`. While
/// the count is at or below `max_tokens / 2`, no retries are made. During a sustained outage
/// the ratio of attempts to calls therefore falls toward 1 instead of multiplying load.
///
/// ```
/// use steadfast::retry::RetryThrottle;
///
/// let bucket = RetryThrottle::new(10, 0.1)?;
/// for _ in 0..4 {
///     assert!(bucket.on_failure(), "still above half: retry allowed");
/// }
/// assert!(!bucket.on_failure(), "5 failures: 5 tokens left, at half: throttled");
/// for _ in 0..10 {
///     bucket.on_success();
/// }
/// assert!(bucket.allows_retry());
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Debug)]
pub struct RetryThrottle {
    tokens: AtomicU32,
    max: u32,
    ratio: u32,
}

impl RetryThrottle {
    /// A bucket with `max_tokens` (1..=1000) and `token_ratio` (0.001..=`max_tokens`; three
    /// decimals are kept). An invalid value is an error naming `throttle.max_tokens` or
    /// `throttle.token_ratio`.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<Self, Error> {
        Self::from_spec(ThrottleSpec {
            max_tokens,
            token_ratio,
        })
        .map_err(Error::from_fields)
    }

    /// A bucket from a spec that passes `validate`.
    pub(crate) fn from_spec(spec: ThrottleSpec) -> Result<Self, Vec<steadfast_spec::FieldError>> {
        spec.validate()?;
        Ok(Self::from_parts(spec.max_tokens, spec.token_ratio_milli()))
    }

    /// Hidden constructor for values validated by the macro: `ratio_milli` is thousandths.
    #[doc(hidden)]
    pub const fn from_parts(max_tokens: u32, ratio_milli: u32) -> Self {
        RetryThrottle {
            tokens: AtomicU32::new(max_tokens * SCALE),
            max: max_tokens * SCALE,
            ratio: ratio_milli,
        }
    }

    /// A full bucket with the same configuration.
    pub fn clone_config(&self) -> RetryThrottle {
        RetryThrottle::from_parts(self.max / SCALE, self.ratio)
    }

    /// Records a retryable failure (or "do not retry" pushback). Returns whether a retry is
    /// still allowed afterwards.
    pub fn on_failure(&self) -> bool {
        let prev = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(SCALE))
            })
            .unwrap_or_else(|t| t);
        prev.saturating_sub(SCALE) > self.max / 2
    }

    /// Records a successful call.
    pub fn on_success(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < self.max).then(|| (t + self.ratio).min(self.max))
            });
    }

    /// Whether retries are currently allowed (tokens above half of the maximum).
    pub fn allows_retry(&self) -> bool {
        self.tokens.load(Ordering::Acquire) > self.max / 2
    }

    /// The current token count.
    pub fn tokens(&self) -> f64 {
        f64::from(self.tokens.load(Ordering::Acquire)) / f64::from(SCALE)
    }

    /// The configured maximum.
    pub fn max_tokens(&self) -> u32 {
        self.max / SCALE
    }

    /// The configured ratio.
    pub fn token_ratio(&self) -> f64 {
        f64::from(self.ratio) / f64::from(SCALE)
    }
}

impl Default for RetryThrottle {
    /// `max_tokens` 10, `token_ratio` 0.1 (the spec's defaults).
    fn default() -> Self {
        let spec = ThrottleSpec::DEFAULT;
        Self::from_parts(spec.max_tokens, spec.token_ratio_milli())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_follows_a6_arithmetic() {
        let b = RetryThrottle::default();
        assert_eq!(b.tokens(), 10.0);
        // 10 -> 9, 8, 7, 6: still > 5.
        for _ in 0..4 {
            assert!(b.on_failure());
        }
        // 6 -> 5: at half, throttled.
        assert!(!b.on_failure());
        assert!(!b.allows_retry());
        // Floors at zero.
        for _ in 0..20 {
            assert!(!b.on_failure());
        }
        assert_eq!(b.tokens(), 0.0);
        // 51 successes at 0.1: 5.1 > 5, retries come back.
        for _ in 0..50 {
            b.on_success();
        }
        assert!(!b.allows_retry(), "exactly 5.0 is still throttled");
        b.on_success();
        assert!(b.allows_retry());
        // Caps at max.
        for _ in 0..1000 {
            b.on_success();
        }
        assert_eq!(b.tokens(), 10.0);
    }

    #[test]
    fn ratio_keeps_three_decimals_and_validates() {
        let b = RetryThrottle::new(3, 0.0015).unwrap();
        assert_eq!(b.token_ratio(), 0.002);
        assert!(RetryThrottle::new(0, 0.1).is_err());
        assert!(RetryThrottle::new(1001, 0.1).is_err());
        assert!(RetryThrottle::new(10, 0.0).is_err());
        assert!(RetryThrottle::new(10, f64::NAN).is_err());
        match RetryThrottle::new(0, 0.1).unwrap_err() {
            Error::Config { field, .. } => assert_eq!(field, "throttle.max_tokens"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let b = RetryThrottle::default();
        assert_eq!(b.max_tokens(), ThrottleSpec::DEFAULT.max_tokens);
        assert_eq!(b.token_ratio(), ThrottleSpec::DEFAULT.token_ratio);
    }

    #[test]
    fn concurrent_failures_never_lose_a_token() {
        let b = std::sync::Arc::new(RetryThrottle::new(1000, 0.5).unwrap());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        b.on_failure();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(b.tokens(), 400.0);
    }
}
