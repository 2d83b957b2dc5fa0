//! Reads the policy arguments (`retry`, `throttle`, `breaker`) into the models of
//! `steadfast-spec`, runs the same `validate` as the runtime, and puts each field error on the
//! token of its key (or on the attribute, for a defaulted field).

use std::time::Duration;

use proc_macro2::Span;
use steadfast_spec::{
    BreakerSpec, Code, CodeSet, FieldError, HedgeSpec, RetrySpec, ThrottleSpec, duration,
};
use syn::spanned::Spanned;
use syn::{Ident, Lit, LitInt, LitStr};

use super::Errors;
use crate::attr::{BreakerArgs, HedgeArgs, RetryArgs, ThrottleArgs};

/// The checked retry policy, or `None` when something is wrong (and reported).
pub(crate) fn retry(errors: &mut Errors, a: &RetryArgs) -> Option<RetrySpec> {
    let d = RetrySpec::DEFAULT;
    let mut r = Reader::new(errors);
    let spec = RetrySpec {
        max_attempts: r.int(&a.max_attempts, "max_attempts", d.max_attempts),
        initial_backoff: r.duration(&a.initial_backoff, "initial_backoff", d.initial_backoff),
        max_backoff: r.duration(&a.max_backoff, "max_backoff", d.max_backoff),
        multiplier: r.number(&a.multiplier, "multiplier", d.multiplier),
        per_attempt_timeout: r.optional_duration(&a.per_attempt_timeout, "per_attempt_timeout"),
        retryable_codes: r.codes(&a.on, d.retryable_codes),
    };
    r.report(spec.validate(), |e| retry_at(a, e))
        .then_some(spec)
}

/// The attribute key of a retry field, and its token's span if the key was written.
fn retry_at(a: &RetryArgs, e: &FieldError) -> Option<(&'static str, Option<Span>)> {
    Some(match e.field {
        "max_attempts" => ("max_attempts", span(&a.max_attempts)),
        "initial_backoff" => ("initial_backoff", span(&a.initial_backoff)),
        "max_backoff" => ("max_backoff", span(&a.max_backoff)),
        "backoff_multiplier" => ("multiplier", span(&a.multiplier)),
        "per_attempt_timeout" => ("per_attempt_timeout", span(&a.per_attempt_timeout)),
        "retryable_codes" => ("on", code_span(&a.on, e.code)),
        _ => return None,
    })
}

/// The checked hedging policy, or `None` when something is wrong (and reported).
pub(crate) fn hedge(errors: &mut Errors, a: &HedgeArgs) -> Option<HedgeSpec> {
    let d = HedgeSpec::DEFAULT;
    let mut r = Reader::new(errors);
    let spec = HedgeSpec {
        max_attempts: r.int(&a.max_attempts, "max_attempts", d.max_attempts),
        delay: r.duration(&a.delay, "delay", d.delay),
        non_fatal_codes: r.codes(&a.non_fatal, d.non_fatal_codes),
    };
    r.report(spec.validate(), |e| {
        Some(match e.field {
            "hedge.max_attempts" => ("max_attempts", span(&a.max_attempts)),
            "hedge.delay" => ("delay", span(&a.delay)),
            "hedge.non_fatal_codes" => ("non_fatal", code_span(&a.non_fatal, e.code)),
            _ => return None,
        })
    })
    .then_some(spec)
}

/// The checked throttle, or `None` when something is wrong (and reported).
pub(crate) fn throttle(errors: &mut Errors, a: &ThrottleArgs) -> Option<ThrottleSpec> {
    let d = ThrottleSpec::DEFAULT;
    let mut r = Reader::new(errors);
    let spec = ThrottleSpec {
        max_tokens: r.int(&a.max_tokens, "max_tokens", d.max_tokens),
        token_ratio: r.number(&a.token_ratio, "token_ratio", d.token_ratio),
    };
    r.report(spec.validate(), |e| throttle_at(a, e))
        .then_some(spec)
}

/// The attribute key of a throttle field, and its token's span if the key was written.
fn throttle_at(a: &ThrottleArgs, e: &FieldError) -> Option<(&'static str, Option<Span>)> {
    Some(match e.field {
        "throttle.max_tokens" => ("max_tokens", span(&a.max_tokens)),
        "throttle.token_ratio" => ("token_ratio", span(&a.token_ratio)),
        _ => return None,
    })
}

/// The checked breaker. When something is wrong it is reported, and the errors stop the
/// expansion, so the value returned then does not matter.
pub(crate) fn breaker(errors: &mut Errors, a: &BreakerArgs) -> BreakerSpec {
    let d = BreakerSpec::DEFAULT;
    let mut r = Reader::new(errors);
    let half_open_max_calls = r.int(
        &a.half_open_max_calls,
        "half_open_max_calls",
        d.half_open_max_calls,
    );
    let spec = BreakerSpec {
        min_failures: r.int(&a.min_failures, "min_failures", d.min_failures),
        failure_ratio: r.number(&a.failure_ratio, "failure_ratio", d.failure_ratio),
        window: r.duration(&a.window, "window", d.window),
        open_timeout: r.duration(&a.open_timeout, "open_timeout", d.open_timeout),
        max_open_timeout: r.optional_duration(&a.max_open_timeout, "max_open_timeout"),
        half_open_max_calls,
        half_open_successes: r.int(
            &a.half_open_successes,
            "half_open_successes",
            BreakerSpec::default_half_open_successes(half_open_max_calls),
        ),
        failure_codes: r.codes(&a.failures, d.failure_codes),
    };
    r.report(spec.validate(), |e| breaker_at(a, e));
    spec
}

/// The attribute key of a breaker field, and its token's span if the key was written.
fn breaker_at(a: &BreakerArgs, e: &FieldError) -> Option<(&'static str, Option<Span>)> {
    Some(match e.field {
        "breaker.min_failures" => ("min_failures", span(&a.min_failures)),
        "breaker.failure_ratio" => ("failure_ratio", span(&a.failure_ratio)),
        "breaker.window" => ("window", span(&a.window)),
        "breaker.open_timeout" => ("open_timeout", span(&a.open_timeout)),
        "breaker.max_open_timeout" => ("max_open_timeout", span(&a.max_open_timeout)),
        "breaker.half_open_max_calls" => ("half_open_max_calls", span(&a.half_open_max_calls)),
        "breaker.half_open_successes" => ("half_open_successes", span(&a.half_open_successes)),
        "breaker.failure_codes" => ("failures", code_span(&a.failures, e.code)),
        _ => return None,
    })
}

/// Reads literals into spec fields. A literal that cannot be read is reported at once and
/// replaced by a valid stand-in, so `validate` reports only the other fields.
struct Reader<'e> {
    errors: &'e mut Errors,
    ok: bool,
}

impl<'e> Reader<'e> {
    fn new(errors: &'e mut Errors) -> Self {
        Reader { errors, ok: true }
    }

    fn fail(&mut self, span: Span, msg: String) {
        self.errors.at(span, msg);
        self.ok = false;
    }

    fn int(&mut self, lit: &Option<LitInt>, key: &str, default: u32) -> u32 {
        let Some(lit) = lit else { return default };
        lit.base10_parse().unwrap_or_else(|_| {
            self.fail(
                lit.span(),
                format!(
                    "{key}: {} is too large; write e.g. {default}",
                    lit.base10_digits()
                ),
            );
            default
        })
    }

    fn number(&mut self, lit: &Option<Lit>, key: &str, default: f64) -> f64 {
        let Some(lit) = lit else { return default };
        let value = match lit {
            Lit::Float(f) => f.base10_parse().ok(),
            Lit::Int(i) => i.base10_parse().ok(),
            _ => None,
        };
        value.unwrap_or_else(|| {
            self.fail(
                lit.span(),
                format!("{key}: expected a number; write e.g. {key} = {default:?}"),
            );
            default
        })
    }

    fn duration(&mut self, lit: &Option<LitStr>, key: &str, default: Duration) -> Duration {
        let Some(lit) = lit else { return default };
        duration::parse(&lit.value()).unwrap_or_else(|why| {
            self.fail(lit.span(), format!("invalid {key}: {why}"));
            default
        })
    }

    /// An optional duration; `None` when it is absent or unreadable.
    fn optional_duration(&mut self, lit: &Option<LitStr>, key: &str) -> Option<Duration> {
        let lit = lit.as_ref()?;
        duration::parse(&lit.value())
            .map_err(|why| self.fail(lit.span(), format!("invalid {key}: {why}")))
            .ok()
    }

    /// The codes of a list (unknown names reported with a suggestion), or `default` without
    /// a list.
    fn codes(&mut self, list: &Option<(Span, Vec<Ident>)>, default: CodeSet) -> CodeSet {
        let Some((_, idents)) = list else {
            return default;
        };
        let mut set = CodeSet::EMPTY;
        for ident in idents {
            match Code::from_name(&ident.to_string()) {
                Ok(code) => set = set.with(code),
                Err(msg) => self.fail(ident.span(), msg),
            }
        }
        // A list of unknown names only is not also reported as empty.
        if set.is_empty() && !idents.is_empty() {
            return default;
        }
        set
    }

    /// Reports the spec's errors as `key: message` at the token of each key (`at` gives the
    /// key and its span), or at the entry of a code list. A defaulted field is reported at the
    /// attribute. Returns whether everything was fine.
    fn report(
        mut self,
        result: Result<(), Vec<FieldError>>,
        at: impl Fn(&FieldError) -> Option<(&'static str, Option<Span>)>,
    ) -> bool {
        for e in result.err().unwrap_or_default() {
            let (key, span) = at(&e).unwrap_or((e.field, None));
            // An error about one entry of a code list sits on the entry, which it names.
            let msg = match e.code {
                Some(_) => e.message,
                None => format!("{key}: {}", e.message),
            };
            self.fail(span.unwrap_or_else(Span::call_site), msg);
        }
        self.ok
    }
}

fn span<T: Spanned>(token: &Option<T>) -> Option<Span> {
    token.as_ref().map(Spanned::span)
}

/// The span of the entry `code` in a code list, else of the whole list.
fn code_span(list: &Option<(Span, Vec<Ident>)>, code: Option<Code>) -> Option<Span> {
    let (list_span, idents) = list.as_ref()?;
    let entry = code.and_then(|code| {
        idents
            .iter()
            .find(|ident| Code::from_name(&ident.to_string()) == Ok(code))
    });
    Some(entry.map_or(*list_span, Ident::span))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a spec can report has an attribute key, so no error falls back to the
    /// spec's own field name.
    #[test]
    fn every_spec_field_has_a_key() {
        let retry = RetrySpec {
            max_attempts: 0,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            multiplier: 0.0,
            per_attempt_timeout: Some(Duration::ZERO),
            retryable_codes: CodeSet::EMPTY,
        };
        let breaker = BreakerSpec {
            min_failures: 0,
            failure_ratio: 2.0,
            window: Duration::ZERO,
            open_timeout: Duration::ZERO,
            max_open_timeout: Some(Duration::ZERO),
            half_open_max_calls: 0,
            half_open_successes: 0,
            failure_codes: CodeSet::EMPTY,
        };
        let throttle = ThrottleSpec {
            max_tokens: 0,
            token_ratio: 0.0,
        };
        let mut seen = 0;
        for e in retry.validate().unwrap_err() {
            assert!(retry_at(&RetryArgs::default(), &e).is_some(), "{e}");
            seen += 1;
        }
        for e in breaker.validate().unwrap_err() {
            assert!(breaker_at(&BreakerArgs::default(), &e).is_some(), "{e}");
            seen += 1;
        }
        for e in throttle.validate().unwrap_err() {
            assert!(throttle_at(&ThrottleArgs::default(), &e).is_some(), "{e}");
            seen += 1;
        }
        assert_eq!(seen, 16);
    }
}
