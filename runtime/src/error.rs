//! The crate-wide error type.

use std::fmt;

/// Everything that can go wrong while configuring or starting steadfast components.
///
/// Failures of individual calls are not `Error`s: they are [`tonic::Status`] values, so that
/// they cross gRPC boundaries unchanged.
///
/// ```
/// use steadfast::retry::RetryPolicy;
///
/// let err = RetryPolicy::builder().max_attempts(1).build().unwrap_err();
/// assert!(matches!(err, steadfast::Error::Config { field: "max_attempts", .. }));
/// assert!(err.to_string().contains("max_attempts"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid. `field` names the offending field.
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// The configuration field, as written by the user (`retry.max_attempts`).
        field: &'static str,
        /// What is wrong, and what to write instead.
        reason: String,
    },
    /// A configuration document (service config JSON) could not be parsed.
    #[error("invalid service config: {0}")]
    ServiceConfig(String),
    /// Connecting to a downstream endpoint failed in a way that retrying will not fix.
    #[error("cannot connect to `{service}` at {endpoint}: {reason}")]
    Connect {
        /// The downstream service name.
        service: String,
        /// The endpoint address.
        endpoint: String,
        /// The cause, from the transport.
        reason: String,
    },
    /// Reading TLS material failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn config(field: &'static str, reason: impl fmt::Display) -> Self {
        Error::Config {
            field,
            reason: reason.to_string(),
        }
    }

    /// The first error of a spec's `validate` (the builders report one field at a time).
    pub(crate) fn from_fields(errors: Vec<steadfast_spec::FieldError>) -> Self {
        match errors.into_iter().next() {
            Some(e) => Error::config(e.field, e.message),
            None => Error::config("config", "is invalid"),
        }
    }
}
