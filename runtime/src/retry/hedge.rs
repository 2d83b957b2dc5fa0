//! gRFC A6 hedging: several copies of one idempotent call in flight, the first good answer
//! wins and the others are cancelled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::Status;
use tower::ServiceExt;

use steadfast_spec::{FieldError, HedgeSpec};

use super::{CallPolicy, Pushback};
use crate::Context;
use crate::Error;
use crate::breaker;
use crate::code::CodeSet;
use crate::outcome::{AttemptInfo, AttemptOutcome, MAX_TRANSPARENT_RETRIES};

/// gRFC A6's `hedgingPolicy`: up to `max_attempts` copies of a call, the next one sent
/// `hedging_delay` after the previous, or at once when a copy fails with a non-fatal code.
///
/// What happens to a call (A6, and grpc-java where A6 is silent):
/// - the first answer that is not a non-fatal failure ends the call: a success, or a failure
///   with any other code (fatal); the copies still in flight are cancelled;
/// - a non-fatal failure sends the next copy at once, or after the server's pushback
///   (`grpc-retry-pushback-ms`); a "do not retry" pushback sends no more copies;
/// - with a retry throttle, a copy is sent only while the throttle allows retries, and every
///   failed copy counts as a failure (every success as a success);
/// - each copy is sent to another endpoint than the one before when one exists, and carries
///   `grpc-previous-rpc-attempts`; a copy that never reached a server is sent again at once,
///   uncounted;
/// - a copy whose response had started (committed) is the call's answer;
/// - a breaker that fails fast stops further copies, and the copies in flight may still win;
/// - there is no per-attempt timeout: a copy runs until it answers or the call's deadline;
/// - when every copy failed, the call ends with the last failure.
///
/// Only for idempotent methods: a copy may run on the server even when another one wins.
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::HedgingPolicy;
/// use tonic::Code;
///
/// let h = HedgingPolicy::new(3, Duration::from_millis(20), [Code::Unavailable]).unwrap();
/// assert_eq!(h.max_attempts, 3);
/// let err = HedgingPolicy::new(9, Duration::ZERO, []).unwrap_err();
/// assert!(err.to_string().contains("hedge.max_attempts"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct HedgingPolicy {
    /// Copies in all, 2 to 5.
    pub max_attempts: u32,
    /// The wait before sending the next copy; zero sends them all at once.
    pub hedging_delay: Duration,
    /// Codes after which the next copy is sent at once instead of failing the call.
    pub non_fatal_codes: CodeSet,
}

impl HedgingPolicy {
    /// A policy, checked as `#[resilient_client]` and service config check it:
    /// `max_attempts` in 2..=5, `hedging_delay` at most 1 day, `Ok` not among the
    /// non-fatal codes. Errors name the field.
    pub fn new(
        max_attempts: u32,
        hedging_delay: Duration,
        non_fatal: impl IntoIterator<Item = tonic::Code>,
    ) -> Result<HedgingPolicy, Error> {
        let spec = HedgeSpec {
            max_attempts,
            delay: hedging_delay,
            non_fatal_codes: non_fatal.into_iter().collect::<CodeSet>().to_spec(),
        };
        Self::from_spec(spec).map_err(|errors| match errors.into_iter().next() {
            Some(e) => Error::config(e.field, e.message),
            None => Error::config("hedge", "is invalid"),
        })
    }

    /// The policy of a checked spec.
    pub(crate) fn from_spec(spec: HedgeSpec) -> Result<HedgingPolicy, Vec<FieldError>> {
        spec.validate()?;
        Ok(HedgingPolicy {
            max_attempts: spec.max_attempts,
            hedging_delay: spec.delay,
            non_fatal_codes: CodeSet::from_spec(spec.non_fatal_codes),
        })
    }

    /// The policy `#[resilient_client]` checked at compile time.
    #[doc(hidden)]
    pub const fn __from_macro(
        max_attempts: u32,
        hedging_delay: Duration,
        non_fatal_bits: u32,
    ) -> HedgingPolicy {
        HedgingPolicy {
            max_attempts,
            hedging_delay,
            non_fatal_codes: CodeSet::from_bits(non_fatal_bits),
        }
    }
}

impl CallPolicy {
    /// The hedging loop (see [`HedgingPolicy`]).
    pub(super) async fn hedged<S, M, R>(
        &self,
        inner: S,
        request: tonic::Request<M>,
        hedging: HedgingPolicy,
    ) -> Result<tonic::Response<R>, Status>
    where
        S: tower_service::Service<tonic::Request<M>, Response = tonic::Response<R>, Error = Status>
            + Clone,
        M: Clone,
    {
        let (metadata, extensions, message) = request.into_parts();
        let ctx = extensions.get::<Context>();
        let trace_id = ctx.and_then(Context::trace).map(|t| t.trace_id());
        let deadline = ctx.and_then(Context::deadline);
        let mut in_flight = FuturesUnordered::new();
        let mut sent = 0u32;
        let mut transparent = 0u32;
        let mut next_at = Some(Instant::now());
        // The copy sent last: the next one avoids its endpoint.
        let mut last_sent: Option<AttemptInfo> = None;
        let mut last_failure: Option<Status> = None;
        loop {
            // Send the next copy when it is due.
            if let Some(at) = next_at
                && at <= Instant::now()
            {
                next_at = None;
                let throttled =
                    sent > 0 && self.throttle.as_ref().is_some_and(|t| !t.allows_retry());
                if throttled {
                    tracing::debug!(
                        service = %self.service, method = %self.method,
                        "hedging throttled: the downstream is failing too often"
                    );
                } else if sent < hedging.max_attempts {
                    sent += 1;
                    let mut req = tonic::Request::from_parts(
                        metadata.clone(),
                        extensions.clone(),
                        message.clone(),
                    );
                    if sent > 1 {
                        req.metadata_mut()
                            .insert(&*crate::wire::PREVIOUS_ATTEMPTS, (sent - 1).into());
                        self.method_metrics().retry(trace_id);
                    }
                    // Another endpoint than the copy before, when one exists.
                    let avoid: Option<Arc<str>> =
                        last_sent.as_ref().and_then(AttemptInfo::endpoint);
                    let info = AttemptInfo::new(avoid, false);
                    req.extensions_mut().insert(info.clone());
                    last_sent = Some(info.clone());
                    let mut svc = inner.clone();
                    let copy = async move {
                        let result = match svc.ready().await {
                            Ok(ready) => ready.call(req).await,
                            Err(status) => Err(status),
                        };
                        (result, info)
                    };
                    in_flight.push(copy);
                    if sent < hedging.max_attempts {
                        next_at = Some(Instant::now() + hedging.hedging_delay);
                    }
                }
            }
            // Nothing in flight and nothing more to send: the last failure is the answer.
            if in_flight.is_empty() && next_at.is_none() {
                return Err(last_failure.unwrap_or_else(|| {
                    Status::unavailable(format!(
                        "{}/{}: no hedged copy could be sent",
                        self.service, self.method
                    ))
                }));
            }
            let timer = async {
                match next_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some((result, info)) = in_flight.next(), if !in_flight.is_empty() => {
                    let outcome = info.outcome_of(&result);
                    let status = match result {
                        Ok(response) => {
                            if let Some(t) = &self.throttle {
                                t.on_success();
                            }
                            // Dropping the other copies cancels them.
                            return Ok(response);
                        }
                        Err(status) => status,
                    };
                    match outcome {
                        AttemptOutcome::PassedThrough(_) => return Err(status),
                        // Never reached a server: sent again at once, elsewhere, uncounted
                        // (as A6's transparent retry).
                        AttemptOutcome::NotSent if transparent < MAX_TRANSPARENT_RETRIES => {
                            transparent += 1;
                            sent -= 1;
                            next_at = Some(Instant::now());
                            last_failure = Some(status);
                            continue;
                        }
                        _ => {}
                    }
                    // The breaker failed fast: no more copies, but the ones in flight may
                    // still answer (one of them may be the breaker's probe).
                    if breaker::is_open_rejection(&status) {
                        next_at = None;
                        sent = hedging.max_attempts;
                        if last_failure.is_none() {
                            last_failure = Some(status);
                        }
                        continue;
                    }
                    // A copy whose response had started is the call's answer (A6 commit).
                    if info.is_committed() {
                        return Err(status);
                    }
                    // Our own attempt timer is not the server's answer: as non-fatal as can be.
                    let non_fatal = hedging.non_fatal_codes.contains(status.code())
                        || outcome == AttemptOutcome::Timeout
                        || outcome == AttemptOutcome::NotSent;
                    if !non_fatal {
                        return Err(status);
                    }
                    if let Some(t) = &self.throttle {
                        t.on_failure();
                    }
                    match Pushback::from_metadata(status.metadata()) {
                        Pushback::DoNotRetry => next_at = None,
                        Pushback::RetryAfter(d) if sent < hedging.max_attempts => {
                            next_at = match Instant::now().checked_add(d) {
                                Some(at) if deadline.is_none_or(|dl| at < dl) => Some(at),
                                // Past the call's deadline: no more copies.
                                _ => None,
                            };
                        }
                        _ if sent < hedging.max_attempts => next_at = Some(Instant::now()),
                        _ => {}
                    }
                    // A "do not retry" pushback also stops the timer's copies.
                    if next_at.is_none() {
                        sent = hedging.max_attempts;
                    }
                    last_failure = Some(status);
                }
                () = timer => {}
            }
        }
    }
}
