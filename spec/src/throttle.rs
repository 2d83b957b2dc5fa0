//! The retry throttle model (gRFC A6 `retryThrottling`).

use crate::FieldError;
use crate::error::Errors;

/// Retry throttling as gRFC A6 defines it: a bucket of `max_tokens` that loses one token per
/// failed attempt and gains `token_ratio` per success; retries stop while it is at or below
/// half.
///
/// [`Default`]: `max_tokens` 10, `token_ratio` 0.1. `token_ratio` keeps three decimals, the
/// precision A6 gives it.
///
/// ```
/// use steadfast_spec::ThrottleSpec;
///
/// let spec = ThrottleSpec { max_tokens: 20, token_ratio: 0.25 };
/// assert_eq!(spec.validate(), Ok(()));
/// assert_eq!(spec.token_ratio_milli(), 250);
/// let bad = ThrottleSpec { max_tokens: 0, ..ThrottleSpec::default() };
/// assert_eq!(bad.validate().unwrap_err()[0].field, "throttle.max_tokens");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleSpec {
    /// The size of the bucket: 1..=1000 (field `throttle.max_tokens`).
    pub max_tokens: u32,
    /// What a success adds: 0.001..=`max_tokens` after rounding to three decimals
    /// (`throttle.token_ratio`).
    pub token_ratio: f64,
}

impl ThrottleSpec {
    /// The defaults, as a constant.
    ///
    /// ```
    /// use steadfast_spec::ThrottleSpec;
    /// assert_eq!(ThrottleSpec::DEFAULT, ThrottleSpec { max_tokens: 10, token_ratio: 0.1 });
    /// ```
    pub const DEFAULT: ThrottleSpec = ThrottleSpec {
        max_tokens: 10,
        token_ratio: 0.1,
    };

    /// The largest `max_tokens`.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::ThrottleSpec::MAX_TOKENS, 1000);
    /// ```
    pub const MAX_TOKENS: u32 = 1000;

    /// `token_ratio` in thousandths, rounded: the unit the bucket counts in.
    ///
    /// ```
    /// use steadfast_spec::ThrottleSpec;
    /// assert_eq!(ThrottleSpec { max_tokens: 3, token_ratio: 0.0015 }.token_ratio_milli(), 2);
    /// ```
    pub fn token_ratio_milli(&self) -> u32 {
        let milli = (self.token_ratio * 1000.0).round();
        if milli.is_finite() && milli >= 0.0 {
            // Saturates above u32::MAX, which validation refuses anyway.
            milli as u32
        } else {
            0
        }
    }

    /// Checks both fields; returns all the errors.
    ///
    /// ```
    /// use steadfast_spec::ThrottleSpec;
    ///
    /// let errors = ThrottleSpec { max_tokens: 2, token_ratio: 2.5 }.validate().unwrap_err();
    /// assert_eq!(errors[0].field, "throttle.token_ratio");
    /// assert_eq!(errors[0].message, "2.5 is outside 0.001..=2 (max_tokens; three decimals are kept); write e.g. 0.1");
    /// ```
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        let max = self.max_tokens;
        let max_ok = (1..=Self::MAX_TOKENS).contains(&max);
        errors.check(max_ok, "throttle.max_tokens", || {
            format!("{max} is outside 1..=1000; write e.g. 10")
        });
        let ratio = self.token_ratio;
        let milli = (ratio * 1000.0).round();
        let upper = if max_ok { max } else { Self::MAX_TOKENS };
        errors.check(
            ratio.is_finite() && milli >= 1.0 && milli <= f64::from(upper) * 1000.0,
            "throttle.token_ratio",
            || {
                format!(
                    "{ratio} is outside 0.001..={upper} (max_tokens; three decimals are kept); write e.g. 0.1"
                )
            },
        );
        errors.finish()
    }
}

impl Default for ThrottleSpec {
    fn default() -> Self {
        ThrottleSpec::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(max_tokens: u32, token_ratio: f64) -> Vec<&'static str> {
        ThrottleSpec {
            max_tokens,
            token_ratio,
        }
        .validate()
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.field)
        .collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ThrottleSpec::default(), ThrottleSpec::DEFAULT);
        assert_eq!(ThrottleSpec::DEFAULT.validate(), Ok(()));
        assert_eq!(ThrottleSpec::DEFAULT.token_ratio_milli(), 100);
    }

    #[test]
    fn max_tokens_edges() {
        assert_eq!(fields(0, 0.1), ["throttle.max_tokens"]);
        assert!(fields(1, 0.1).is_empty());
        assert!(fields(1000, 0.1).is_empty());
        assert_eq!(fields(1001, 0.1), ["throttle.max_tokens"]);
    }

    #[test]
    fn token_ratio_edges() {
        assert!(fields(10, 0.001).is_empty());
        // Rounds to 0.001: kept.
        assert!(fields(10, 0.0005).is_empty());
        // Rounds to 0: refused.
        assert_eq!(fields(10, 0.00049), ["throttle.token_ratio"]);
        assert_eq!(fields(10, 0.0), ["throttle.token_ratio"]);
        assert_eq!(fields(10, -0.1), ["throttle.token_ratio"]);
        assert_eq!(fields(10, f64::NAN), ["throttle.token_ratio"]);
        assert_eq!(fields(10, f64::INFINITY), ["throttle.token_ratio"]);
        assert!(fields(10, 10.0).is_empty());
        assert!(fields(10, 10.0004).is_empty());
        assert_eq!(fields(10, 10.001), ["throttle.token_ratio"]);
        // With an invalid max_tokens, the ratio is held to the largest max_tokens only.
        assert_eq!(fields(0, 0.1), ["throttle.max_tokens"]);
        assert_eq!(
            fields(0, 1000.5),
            ["throttle.max_tokens", "throttle.token_ratio"]
        );
    }

    #[test]
    fn ratio_keeps_three_decimals() {
        let milli = |token_ratio| {
            ThrottleSpec {
                max_tokens: 10,
                token_ratio,
            }
            .token_ratio_milli()
        };
        assert_eq!(milli(0.0015), 2);
        assert_eq!(milli(0.25), 250);
        assert_eq!(milli(f64::NAN), 0);
        assert_eq!(milli(-1.0), 0);
    }
}
