//! The error of one field.

use std::fmt;

use crate::Code;

/// One invalid field of a spec: which field, and a sentence that names the value and says what
/// to write instead.
///
/// The message does not repeat the field name, so each front end can put it in its own words:
/// the macro prints `key: message` at the key's token, the builders `invalid config
/// `field`: message`, service config the JSON path.
///
/// ```
/// use steadfast_spec::{BreakerSpec, Code, CodeSet};
///
/// let spec = BreakerSpec { failure_codes: CodeSet::EMPTY.with(Code::Ok), ..BreakerSpec::default() };
/// let errors = spec.validate().unwrap_err();
/// assert_eq!(errors[0].field, "breaker.failure_codes");
/// assert_eq!(errors[0].code, Some(Code::Ok));
/// assert_eq!(errors[0].to_string(), "breaker.failure_codes: `Ok` is a success, not a failure; remove it");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as the builders name it: `max_attempts`, `breaker.open_timeout`.
    pub field: &'static str,
    /// What is wrong with the value, and what to write instead.
    pub message: String,
    /// For a field that is a list of codes: the entry at fault, if one is.
    pub code: Option<Code>,
}

impl FieldError {
    /// An error about the whole field.
    ///
    /// ```
    /// let e = steadfast_spec::FieldError::new("max_attempts", "9 is outside 2..=5");
    /// assert_eq!(e.to_string(), "max_attempts: 9 is outside 2..=5");
    /// ```
    pub fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
            code: None,
        }
    }

    /// An error about one entry of a list of codes.
    ///
    /// ```
    /// use steadfast_spec::{Code, FieldError};
    /// let e = FieldError::entry("retryable_codes", Code::NotFound, "`NotFound` is never retried");
    /// assert_eq!(e.code, Some(Code::NotFound));
    /// ```
    pub fn entry(field: &'static str, code: Code, message: impl Into<String>) -> FieldError {
        FieldError {
            code: Some(code),
            ..FieldError::new(field, message)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Collects field errors in field order.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// Adds an error on `field` unless `ok`.
    pub(crate) fn check(
        &mut self,
        ok: bool,
        field: &'static str,
        message: impl FnOnce() -> String,
    ) {
        if !ok {
            self.push(FieldError::new(field, message()));
        }
    }

    pub(crate) fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}
