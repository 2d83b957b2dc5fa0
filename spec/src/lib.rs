//! The policy models of [steadfast](https://docs.rs/steadfast), written down once.
//!
//! `#[resilient_client]` checks its attribute at compile time, and the runtime checks its
//! builders and gRPC service config at run time; both build the types of this crate and call
//! the same `validate`, so a value is accepted or refused the same way everywhere, with the
//! same message. The crate depends on nothing.
//!
//! - [`duration`]: the one duration grammar (`"250ms"`, `"1.5s"`), parsed exactly.
//! - [`code`]: gRPC status codes, their names, [`CodeSet`], the never-retryable codes, the
//!   default retry and failure codes, spelling suggestions.
//! - [`RetrySpec`], [`ThrottleSpec`], [`BreakerSpec`]: plain data, `Default` = the documented
//!   defaults, `validate()` returning every [`FieldError`] at once.
//!
//! ```
//! use std::time::Duration;
//! use steadfast_spec::{RetrySpec, duration};
//!
//! let spec = RetrySpec {
//!     max_attempts: 4,
//!     per_attempt_timeout: Some(duration::parse("2h")?),
//!     ..RetrySpec::default()
//! };
//! assert_eq!(spec.validate(), Ok(()));
//!
//! let spec = RetrySpec { max_attempts: 9, per_attempt_timeout: Some(duration::parse("25h")?), ..spec };
//! let errors = spec.validate().unwrap_err();
//! assert_eq!(errors[0].field, "max_attempts");
//! assert_eq!(errors[1].field, "per_attempt_timeout");
//! assert_eq!(errors[1].message, "25h is longer than 1 day; write at most \"24h\"");
//! # Ok::<(), String>(())
//! ```

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod breaker;
pub mod code;
pub mod duration;
mod error;
mod hedge;
mod retry;
mod throttle;

pub use crate::breaker::BreakerSpec;
pub use crate::code::{Code, CodeSet};
pub use crate::error::FieldError;
pub use crate::hedge::HedgeSpec;
pub use crate::retry::RetrySpec;
pub use crate::throttle::ThrottleSpec;
