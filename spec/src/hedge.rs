//! The hedging model of gRFC A6 (`hedgingPolicy`).

use std::time::Duration;

use crate::error::Errors;
use crate::{CodeSet, FieldError, duration};

/// A hedging policy: up to `max_attempts` copies of a call, the next one sent `delay` after
/// the previous, or at once when a copy fails with one of `non_fatal_codes`.
///
/// ```
/// use std::time::Duration;
/// use steadfast_spec::{Code, CodeSet, HedgeSpec};
///
/// let spec = HedgeSpec {
///     max_attempts: 3,
///     delay: Duration::from_millis(20),
///     non_fatal_codes: CodeSet::EMPTY.with(Code::Unavailable),
/// };
/// assert_eq!(spec.validate(), Ok(()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HedgeSpec {
    /// Copies in all, the first included: 2..=5 (field `hedge.max_attempts`).
    pub max_attempts: u32,
    /// The wait before the next copy; zero sends them all at once, at most 1 day
    /// (`hedge.delay`).
    pub delay: Duration,
    /// The codes after which the next copy goes at once; never `Ok`
    /// (`hedge.non_fatal_codes`).
    pub non_fatal_codes: CodeSet,
}

impl HedgeSpec {
    /// The defaults: 3 copies, 20 ms apart, the next at once after `Unavailable`.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::HedgeSpec::DEFAULT.max_attempts, 3);
    /// ```
    pub const DEFAULT: HedgeSpec = HedgeSpec {
        max_attempts: 3,
        delay: Duration::from_millis(20),
        non_fatal_codes: CodeSet::EMPTY.with(crate::Code::Unavailable),
    };

    /// The longest delay: 1 day.
    pub const MAX_DELAY: Duration = Duration::from_secs(86_400);

    /// Checks every field; returns all the errors, in field order.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast_spec::HedgeSpec;
    ///
    /// let spec = HedgeSpec { max_attempts: 9, ..HedgeSpec::DEFAULT };
    /// assert_eq!(spec.validate().unwrap_err()[0].field, "hedge.max_attempts");
    /// ```
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        let n = self.max_attempts;
        errors.check((2..=5).contains(&n), "hedge.max_attempts", || {
            format!("{n} is outside 2..=5 (gRFC A6 counts the first copy); write 2 to 5")
        });
        errors.check(self.delay <= Self::MAX_DELAY, "hedge.delay", || {
            format!(
                "{} is longer than 1 day; write at most \"24h\"",
                duration::format(self.delay)
            )
        });
        errors.check(
            !self.non_fatal_codes.contains(crate::Code::Ok),
            "hedge.non_fatal_codes",
            || "`Ok` is a success, not a failure; leave it out".to_owned(),
        );
        errors.finish()
    }
}

impl Default for HedgeSpec {
    fn default() -> Self {
        HedgeSpec::DEFAULT
    }
}
