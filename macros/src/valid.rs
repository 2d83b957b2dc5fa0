//! Checks the parsed arguments and the trait, and builds the model that `expand` emits.
//! Every error spans the offending token and says what to write instead; errors are
//! combined so the user sees all of them at once.

use std::time::Duration;

use proc_macro2::Span;
use syn::{FnArg, Ident, ItemTrait, Lit, LitInt, LitStr, Path, ReturnType, TraitItem, Type};

use crate::attr::{self, BreakerArgs, ClientArgs, RetryArgs, ThrottleArgs};

/// Every gRPC status code name, in numeric order.
const CODES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Codes a retry cannot fix (gRFC A6 practice): rejected in `on = [..]`.
const NEVER_RETRYABLE: [&str; 8] = [
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "FailedPrecondition",
    "OutOfRange",
    "Unimplemented",
];

/// Names the generated client already uses for its own items.
const RESERVED: [&str; 3] = ["connect", "from_core", "core"];

/// Default overall deadline of a call when the attribute gives none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The checked model of one client.
pub(crate) struct Client {
    pub(crate) service: String,
    pub(crate) client: Path,
    pub(crate) grpc_service: Option<String>,
    pub(crate) throttle: Option<(u32, u32)>,
    pub(crate) breaker: Breaker,
    pub(crate) async_trait: bool,
    pub(crate) methods: Vec<Method>,
}

/// A checked retry policy.
#[derive(Clone, Copy)]
pub(crate) struct Retry {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) multiplier: f64,
    pub(crate) per_attempt_timeout: Option<Duration>,
    pub(crate) codes: u32,
}

/// A checked breaker config.
#[derive(Clone, Copy)]
pub(crate) struct Breaker {
    pub(crate) min_failures: u32,
    pub(crate) failure_ratio: f64,
    pub(crate) window: Duration,
    pub(crate) open_timeout: Duration,
    pub(crate) max_open_timeout: Option<Duration>,
    pub(crate) half_open_max_calls: u32,
    pub(crate) half_open_successes: u32,
    pub(crate) failure_codes: u32,
}

/// Unavailable, DeadlineExceeded, Internal, Unknown, ResourceExhausted, DataLoss.
const DEFAULT_FAILURE_CODES: u32 = 1 << 14 | 1 << 4 | 1 << 13 | 1 << 2 | 1 << 8 | 1 << 15;

fn breaker(errors: &mut Errors, a: &BreakerArgs) -> Breaker {
    let int = |errors: &mut Errors,
               lit: &Option<LitInt>,
               range: std::ops::RangeInclusive<u32>,
               default: u32,
               what: &str| match lit {
        None => default,
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                errors.spanned(
                    lit,
                    format!("{what} must be in {}..={}", range.start(), range.end()),
                );
                default
            }
        },
    };
    let span_dur =
        |errors: &mut Errors, lit: &Option<LitStr>, default: Duration, what: &str| match lit {
            None => Some(default),
            Some(lit) => match positive_duration(errors, lit, what) {
                Some(d) if (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) => {
                    Some(d)
                }
                Some(_) => {
                    errors.spanned(lit, format!("{what} must be between \"1s\" and \"10m\""));
                    None
                }
                None => None,
            },
        };
    let min_failures = int(errors, &a.min_failures, 1..=10_000, 4, "min_failures");
    let half_open_max_calls = int(
        errors,
        &a.half_open_max_calls,
        1..=1000,
        10,
        "half_open_max_calls",
    );
    let half_open_successes = int(
        errors,
        &a.half_open_successes,
        1..=half_open_max_calls,
        3.min(half_open_max_calls),
        "half_open_successes (at most half_open_max_calls)",
    );
    let failure_ratio = match &a.failure_ratio {
        None => 0.6,
        Some(lit) => {
            let v = match lit {
                Lit::Float(f) => f.base10_parse::<f64>().ok(),
                Lit::Int(i) => i.base10_parse::<f64>().ok(),
                _ => None,
            };
            match v {
                Some(r) if (0.0..1.0).contains(&r) => r,
                _ => {
                    errors.spanned(
                        lit,
                        "failure_ratio must be a number in [0, 1), e.g. failure_ratio = 0.6",
                    );
                    0.6
                }
            }
        }
    };
    let window = span_dur(errors, &a.window, Duration::from_secs(10), "window")
        .unwrap_or(Duration::from_secs(10));
    let open_timeout = span_dur(
        errors,
        &a.open_timeout,
        Duration::from_secs(30),
        "open_timeout",
    )
    .unwrap_or(Duration::from_secs(30));
    let max_open_timeout = match &a.max_open_timeout {
        None => None,
        Some(lit) => match span_dur(
            errors,
            &a.max_open_timeout,
            open_timeout,
            "max_open_timeout",
        ) {
            Some(d) if d < open_timeout => {
                errors.spanned(
                    lit,
                    "max_open_timeout must not be shorter than open_timeout",
                );
                None
            }
            other => other,
        },
    };
    let mut failure_codes = 0u32;
    match &a.failures {
        None => failure_codes = DEFAULT_FAILURE_CODES,
        Some((span, list)) if list.is_empty() => {
            errors.at(*span, "`failures` is empty; list the codes that mean the downstream is failing, e.g. failures = [Unavailable, DeadlineExceeded]");
        }
        Some((_, list)) => {
            for ident in list {
                match code_index(ident) {
                    Ok(0) => errors.spanned(ident, "`Ok` cannot be a failure"),
                    Ok(n) => failure_codes |= 1 << n,
                    Err(msg) => errors.spanned(ident, msg),
                }
            }
        }
    }
    Breaker {
        min_failures,
        failure_ratio,
        window,
        open_timeout,
        max_open_timeout,
        half_open_max_calls,
        half_open_successes,
        failure_codes,
    }
}

/// One checked method.
pub(crate) struct Method {
    pub(crate) ident: Ident,
    pub(crate) grpc_method: String,
    pub(crate) sig: syn::Signature,
    /// The declared argument type: the message, or `tonic::Request<Message>`.
    pub(crate) message: Type,
    /// Whether the argument is a `tonic::Request<..>` (its metadata and extensions are sent).
    pub(crate) request_form: bool,
    pub(crate) timeout: Duration,
    pub(crate) retry: Option<Retry>,
}

/// Collects errors so that all of them are reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    pub(crate) fn spanned(&mut self, tokens: impl quote::ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }
    pub(crate) fn at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

pub(crate) fn client(args: ClientArgs, item: &ItemTrait) -> syn::Result<Client> {
    let mut errors = Errors::default();
    let service = match &args.service {
        Some(s) if s.value().trim().is_empty() => {
            errors.spanned(
                s,
                "`service` is empty; name the downstream, e.g. service = \"user-svc\"",
            );
            String::new()
        }
        Some(s) => s.value(),
        None => {
            errors.at(
                Span::call_site(),
                "missing `service = \"...\"`: name the downstream service, e.g. service = \"user-svc\"",
            );
            String::new()
        }
    };
    if args.client.is_none() {
        errors.at(
            Span::call_site(),
            "missing `client = ...`: give the tonic-generated client type, e.g. client = pb::user_client::UserClient",
        );
    }
    let timeout = args
        .timeout
        .as_ref()
        .and_then(|t| positive_duration(&mut errors, t, "timeout"))
        .unwrap_or(DEFAULT_TIMEOUT);
    let base = RetryArgs::default();
    let trait_retry = args.retry.as_ref().unwrap_or(&base);
    let throttle = args
        .throttle
        .as_ref()
        .and_then(|t| throttle(&mut errors, t));
    let breaker = breaker(
        &mut errors,
        args.breaker.as_ref().unwrap_or(&BreakerArgs::default()),
    );
    let async_trait = item.attrs.iter().any(|a| {
        a.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "async_trait")
    });
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a #[resilient_client] trait cannot be generic; remove the parameters",
        );
    }

    let mut methods = Vec::new();
    for trait_item in &item.items {
        let TraitItem::Fn(f) = trait_item else {
            errors.spanned(
                trait_item,
                "only methods are allowed in a #[resilient_client] trait; move this item elsewhere",
            );
            continue;
        };
        let margs = match attr::method_args(&f.attrs) {
            Ok(m) => m,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let sig = &f.sig;
        if RESERVED.contains(&sig.ident.to_string().as_str()) {
            errors.spanned(
                &sig.ident,
                format!(
                    "`{}` clashes with an item of the generated client ({}); rename the RPC",
                    sig.ident,
                    RESERVED.join(", ")
                ),
            );
        }
        if sig.asyncness.is_none() {
            errors.spanned(
                sig.fn_token,
                format!(
                    "method `{}` must be async; write `async fn {}(&self, ...)`",
                    sig.ident, sig.ident
                ),
            );
        }
        if !sig.generics.params.is_empty() {
            errors.spanned(
                &sig.generics,
                "methods of a #[resilient_client] trait cannot be generic",
            );
        }
        if let Some(body) = &f.default {
            errors.spanned(
                body,
                "remove the default body: the generated client implements this method",
            );
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(r)) if matches!(r.kind, syn::ReceiverKind::Reference(_, _, None)) => {}
            Some(FnArg::Receiver(r)) => errors.spanned(r, "take `&self`: generated clients are shared, not mutated"),
            _ => errors.spanned(
                &sig.ident,
                format!("method `{}` must take `&self` first; write `async fn {}(&self, request: Message)`", sig.ident, sig.ident),
            ),
        }
        let message = match (inputs.next(), inputs.next()) {
            (Some(FnArg::Typed(t)), None) => Some((*t.ty).clone()),
            _ => {
                errors.spanned(
                    &sig.inputs,
                    "take exactly one argument after `&self`: the request message, e.g. `req: GetUserRequest`, or `req: tonic::Request<GetUserRequest>` to send metadata",
                );
                None
            }
        };
        if !returns_status_result(&sig.output) {
            let span_of: Box<dyn quote::ToTokens> = match &sig.output {
                ReturnType::Type(_, ty) => Box::new(ty.clone()),
                ReturnType::Default => Box::new(sig.ident.clone()),
            };
            errors.spanned(
                span_of,
                "return `Result<Reply, tonic::Status>`: the error type must be `tonic::Status`",
            );
        }
        let timeout = margs
            .timeout
            .as_ref()
            .and_then(|t| positive_duration(&mut errors, t, "timeout"))
            .unwrap_or(timeout);
        if let (Some(attr), Some(_)) = (&margs.no_retry, &margs.retry) {
            errors.spanned(
                attr,
                "`no_retry` and `retry(...)` contradict each other; keep one",
            );
        }
        let retry = if margs.no_retry.is_some() {
            None
        } else {
            let merged = match &margs.retry {
                Some((_, m)) => merge(trait_retry, m),
                None => trait_retry.clone(),
            };
            retry(&mut errors, &merged)
        };
        if let Some(message) = message {
            methods.push(Method {
                ident: sig.ident.clone(),
                grpc_method: camel(&sig.ident.to_string()),
                sig: sig.clone(),
                request_form: is_request(&message),
                message,
                timeout,
                retry,
            });
        }
    }
    // Check the trait-level retry even when every method opts out, so typos surface.
    if args.retry.is_some() {
        let _ = retry(&mut errors, trait_retry);
    }
    errors.finish()?;
    Ok(Client {
        service,
        client: args.client.expect("checked above"),
        grpc_service: args.grpc_service.map(|s| s.value()),
        throttle,
        breaker,
        async_trait,
        methods,
    })
}

/// Whether `ty` is `Request<M>` (`tonic::Request<M>`, or `Request<M>` imported): one type
/// argument, last path segment `Request`.
fn is_request(ty: &Type) -> bool {
    let Type::Path(tp) = ty else { return false };
    let Some(last) = tp.path.segments.last() else {
        return false;
    };
    // `tonic::Request<M>` or an imported `Request<M>`; not `http::Request` or another crate's.
    let n = tp.path.segments.len();
    let from_tonic = n == 1 || (n >= 2 && tp.path.segments[n - 2].ident == "tonic");
    from_tonic
        && last.ident == "Request"
        && matches!(&last.arguments, syn::PathArguments::AngleBracketed(a)
            if a.args.len() == 1 && matches!(a.args[0], syn::GenericArgument::Type(_)))
}

/// `Result<_, Status>` where the error path ends in `Status`.
fn returns_status_result(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    let Type::Path(tp) = &**ty else { return false };
    let Some(last) = tp.path.segments.last() else {
        return false;
    };
    if last.ident != "Result" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    let mut tys = args.args.iter().filter_map(|a| match a {
        syn::GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let (Some(_), Some(Type::Path(err)), None) = (tys.next(), tys.next(), tys.next()) else {
        return false;
    };
    err.path
        .segments
        .last()
        .is_some_and(|s| s.ident == "Status")
}

/// Method-level keys override trait-level ones.
fn merge(base: &RetryArgs, over: &RetryArgs) -> RetryArgs {
    RetryArgs {
        max_attempts: over
            .max_attempts
            .clone()
            .or_else(|| base.max_attempts.clone()),
        initial_backoff: over
            .initial_backoff
            .clone()
            .or_else(|| base.initial_backoff.clone()),
        max_backoff: over
            .max_backoff
            .clone()
            .or_else(|| base.max_backoff.clone()),
        multiplier: over.multiplier.clone().or_else(|| base.multiplier.clone()),
        per_attempt_timeout: over
            .per_attempt_timeout
            .clone()
            .or_else(|| base.per_attempt_timeout.clone()),
        on: over.on.clone().or_else(|| base.on.clone()),
    }
}

fn retry(errors: &mut Errors, args: &RetryArgs) -> Option<Retry> {
    let mut ok = true;
    let mut fail = |errors: &mut Errors, tokens: &dyn quote::ToTokens, msg: String| {
        errors.spanned(tokens, msg);
        ok = false;
    };
    let max_attempts = match &args.max_attempts {
        None => 3,
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(n) if (2..=5).contains(&n) => n,
            _ => {
                fail(
                    errors,
                    lit,
                    format!(
                        "max_attempts = {} is outside 2..=5 (gRFC A6 counts the first call); use #[no_retry] for a single attempt",
                        lit.base10_digits()
                    ),
                );
                3
            }
        },
    };
    let dur = |errors: &mut Errors, lit: &Option<LitStr>, name: &str, default: Duration| match lit {
        None => Some(default),
        Some(lit) => positive_duration(errors, lit, name),
    };
    let initial = dur(
        errors,
        &args.initial_backoff,
        "initial_backoff",
        Duration::from_millis(100),
    );
    let max = dur(
        errors,
        &args.max_backoff,
        "max_backoff",
        Duration::from_secs(1),
    );
    let per_attempt = match &args.per_attempt_timeout {
        None => Some(None),
        Some(lit) => positive_duration(errors, lit, "per_attempt_timeout").map(Some),
    };
    let multiplier = match &args.multiplier {
        None => 2.0,
        Some(lit) => {
            let value = match lit {
                Lit::Float(f) => f.base10_parse::<f64>().ok(),
                Lit::Int(i) => i.base10_parse::<f64>().ok(),
                _ => None,
            };
            match value {
                Some(m) if m.is_finite() && m > 0.0 => m,
                Some(_) => {
                    fail(
                        errors,
                        lit,
                        "multiplier must be greater than 0, e.g. multiplier = 2.0".into(),
                    );
                    2.0
                }
                None => {
                    fail(
                        errors,
                        lit,
                        "multiplier must be a number, e.g. multiplier = 2.0".into(),
                    );
                    2.0
                }
            }
        }
    };
    let mut codes = 0u32;
    match &args.on {
        None => codes = 1 << 14, // Unavailable
        Some((span, list)) if list.is_empty() => {
            errors.at(
                *span,
                "`on` is empty; list at least one code, e.g. on = [Unavailable]",
            );
            ok = false;
        }
        Some((_, list)) => {
            for ident in list {
                match code(ident) {
                    Ok(n) => codes |= 1 << n,
                    Err(msg) => fail(errors, ident, msg),
                }
            }
        }
    }
    let (Some(initial), Some(max), Some(per_attempt)) = (initial, max, per_attempt) else {
        return None;
    };
    ok.then_some(Retry {
        max_attempts,
        initial_backoff: initial,
        max_backoff: max,
        multiplier,
        per_attempt_timeout: per_attempt,
        codes,
    })
}

/// A retryable code: known, and not one a retry cannot fix.
fn code(ident: &Ident) -> Result<usize, String> {
    let n = code_index(ident)?;
    let name = CODES[n];
    if NEVER_RETRYABLE.contains(&name) || name == "Ok" {
        return Err(format!(
            "`{name}` is never retried: sending the same request again cannot succeed; remove it"
        ));
    }
    Ok(n)
}

/// Any known code name, with a spelling hint when it is close to one.
fn code_index(ident: &Ident) -> Result<usize, String> {
    let name = ident.to_string();
    if let Some(n) = CODES.iter().position(|c| *c == name) {
        return Ok(n);
    }
    let folded: String = name
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    match CODES.iter().find(|c| c.to_lowercase() == folded) {
        Some(hint) => Err(format!("unknown status code `{name}`; write `{hint}`")),
        None => Err(format!(
            "unknown status code `{name}`; expected a tonic::Code name such as Unavailable, ResourceExhausted, Aborted, Internal"
        )),
    }
}

fn throttle(errors: &mut Errors, t: &ThrottleArgs) -> Option<(u32, u32)> {
    let max = match &t.max_tokens {
        None => 10,
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                errors.spanned(lit, "max_tokens must be in 1..=1000");
                return None;
            }
        },
    };
    let ratio = match &t.token_ratio {
        None => 100,
        Some(lit) => {
            let v = match lit {
                Lit::Float(f) => f.base10_parse::<f64>().ok(),
                Lit::Int(i) => i.base10_parse::<f64>().ok(),
                _ => None,
            };
            match v.map(|v| (v * 1000.0).round()) {
                Some(milli) if milli >= 1.0 && milli <= f64::from(max) * 1000.0 => milli as u32,
                _ => {
                    errors.spanned(lit, "token_ratio must be a number in 0.001..=max_tokens, e.g. token_ratio = 0.1");
                    return None;
                }
            }
        }
    };
    Some((max, ratio))
}

fn positive_duration(errors: &mut Errors, lit: &LitStr, name: &str) -> Option<Duration> {
    match parse_duration(&lit.value()) {
        Ok(d) if d.is_zero() => {
            errors.spanned(lit, format!("{name} must be greater than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(why) => {
            errors.spanned(lit, format!("invalid {name}: {why}"));
            None
        }
    }
}

/// Same grammar as `steadfast::duration::parse`: a decimal number and a unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. \"250ms\" or \"2s\""))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` does not start with a number; write e.g. \"250ms\" or \"2s\""
        ));
    }
    let unit = unit.trim();
    let nanos: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; use one of ns, us, ms, s, m, h"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` does not start with a number; write e.g. \"250ms\" or \"2s\"")
    })?;
    let total = (value * nanos).round();
    if !(total.is_finite() && total < u64::MAX as f64) {
        return Err(format!("`{text}` is too large"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// `get_user` -> `GetUser`, as tonic-build derives Rust names from proto names.
fn camel(snake: &str) -> String {
    snake
        .trim_start_matches("r#")
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}
