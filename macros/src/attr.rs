//! Parsing of attribute arguments into plain structs. No checks beyond syntax here.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Lit, LitInt, LitStr, Path, Token, bracketed, parenthesized};

pub(crate) mod kw {
    syn::custom_keyword!(service);
    syn::custom_keyword!(client);
    syn::custom_keyword!(grpc_service);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(retry);
    syn::custom_keyword!(throttle);
    syn::custom_keyword!(max_attempts);
    syn::custom_keyword!(initial_backoff);
    syn::custom_keyword!(max_backoff);
    syn::custom_keyword!(multiplier);
    syn::custom_keyword!(per_attempt_timeout);
    syn::custom_keyword!(on);
    syn::custom_keyword!(max_tokens);
    syn::custom_keyword!(token_ratio);
    syn::custom_keyword!(breaker);
    syn::custom_keyword!(min_failures);
    syn::custom_keyword!(failure_ratio);
    syn::custom_keyword!(window);
    syn::custom_keyword!(open_timeout);
    syn::custom_keyword!(max_open_timeout);
    syn::custom_keyword!(half_open_max_calls);
    syn::custom_keyword!(half_open_successes);
    syn::custom_keyword!(failures);
    syn::custom_keyword!(hedge);
    syn::custom_keyword!(delay);
    syn::custom_keyword!(non_fatal);
}

/// `#[resilient_client(...)]` arguments.
#[derive(Default)]
pub(crate) struct ClientArgs {
    pub(crate) service: Option<LitStr>,
    pub(crate) client: Option<Path>,
    pub(crate) grpc_service: Option<LitStr>,
    pub(crate) timeout: Option<LitStr>,
    pub(crate) retry: Option<RetryArgs>,
    pub(crate) hedge: Option<(Span, HedgeArgs)>,
    pub(crate) throttle: Option<ThrottleArgs>,
    pub(crate) breaker: Option<BreakerArgs>,
}

/// `breaker(...)` arguments.
#[derive(Default)]
pub(crate) struct BreakerArgs {
    pub(crate) min_failures: Option<LitInt>,
    pub(crate) failure_ratio: Option<Lit>,
    pub(crate) window: Option<LitStr>,
    pub(crate) open_timeout: Option<LitStr>,
    pub(crate) max_open_timeout: Option<LitStr>,
    pub(crate) half_open_max_calls: Option<LitInt>,
    pub(crate) half_open_successes: Option<LitInt>,
    pub(crate) failures: Option<(Span, Vec<Ident>)>,
}

/// `retry(...)` arguments, at trait or method level.
#[derive(Default, Clone)]
pub(crate) struct RetryArgs {
    pub(crate) max_attempts: Option<LitInt>,
    pub(crate) initial_backoff: Option<LitStr>,
    pub(crate) max_backoff: Option<LitStr>,
    pub(crate) multiplier: Option<Lit>,
    pub(crate) per_attempt_timeout: Option<LitStr>,
    pub(crate) on: Option<(Span, Vec<Ident>)>,
}

/// `hedge(...)` arguments, at trait or method level.
#[derive(Default, Clone)]
pub(crate) struct HedgeArgs {
    pub(crate) max_attempts: Option<LitInt>,
    pub(crate) delay: Option<LitStr>,
    pub(crate) non_fatal: Option<(Span, Vec<Ident>)>,
}

/// `throttle(...)` arguments.
#[derive(Default)]
pub(crate) struct ThrottleArgs {
    pub(crate) max_tokens: Option<LitInt>,
    pub(crate) token_ratio: Option<Lit>,
}

/// Stores `value` into `slot`, or fails with an error on `key` when the key was given twice.
/// The one place duplicate keys are caught.
pub(crate) fn set_once<T, K: syn::spanned::Spanned>(
    slot: &mut Option<T>,
    key: &K,
    name: &str,
    value: T,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            key.span(),
            format!("duplicate `{name}`; give each key once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses `key = value` pairs separated by commas, dispatching on the key via `one`.
pub(crate) fn parse_keys(
    input: ParseStream<'_>,
    mut one: impl FnMut(ParseStream<'_>) -> syn::Result<()>,
) -> syn::Result<()> {
    while !input.is_empty() {
        one(input)?;
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(())
}

pub(crate) fn value<T: Parse>(input: ParseStream<'_>) -> syn::Result<T> {
    input.parse::<Token![=]>()?;
    input.parse()
}

impl Parse for ClientArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = ClientArgs::default();
        parse_keys(input, |input| {
            let look = input.lookahead1();
            if look.peek(kw::service) {
                let k: kw::service = input.parse()?;
                set_once(&mut args.service, &k, "service", value(input)?)
            } else if look.peek(kw::client) {
                let k: kw::client = input.parse()?;
                set_once(&mut args.client, &k, "client", value(input)?)
            } else if look.peek(kw::grpc_service) {
                let k: kw::grpc_service = input.parse()?;
                set_once(&mut args.grpc_service, &k, "grpc_service", value(input)?)
            } else if look.peek(kw::timeout) {
                let k: kw::timeout = input.parse()?;
                set_once(&mut args.timeout, &k, "timeout", value(input)?)
            } else if look.peek(kw::retry) {
                let k: kw::retry = input.parse()?;
                let content;
                parenthesized!(content in input);
                set_once(&mut args.retry, &k, "retry", content.parse()?)
            } else if look.peek(kw::hedge) {
                let k: kw::hedge = input.parse()?;
                let content;
                parenthesized!(content in input);
                set_once(&mut args.hedge, &k, "hedge", (k.span, content.parse()?))
            } else if look.peek(kw::breaker) {
                let k: kw::breaker = input.parse()?;
                let content;
                parenthesized!(content in input);
                set_once(&mut args.breaker, &k, "breaker", content.parse()?)
            } else if look.peek(kw::throttle) {
                let k: kw::throttle = input.parse()?;
                let content;
                parenthesized!(content in input);
                set_once(&mut args.throttle, &k, "throttle", content.parse()?)
            } else {
                Err(look.error())
            }
        })?;
        Ok(args)
    }
}

impl Parse for RetryArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = RetryArgs::default();
        parse_keys(input, |input| {
            let look = input.lookahead1();
            if look.peek(kw::max_attempts) {
                let k: kw::max_attempts = input.parse()?;
                set_once(&mut args.max_attempts, &k, "max_attempts", value(input)?)
            } else if look.peek(kw::initial_backoff) {
                let k: kw::initial_backoff = input.parse()?;
                set_once(
                    &mut args.initial_backoff,
                    &k,
                    "initial_backoff",
                    value(input)?,
                )
            } else if look.peek(kw::max_backoff) {
                let k: kw::max_backoff = input.parse()?;
                set_once(&mut args.max_backoff, &k, "max_backoff", value(input)?)
            } else if look.peek(kw::multiplier) {
                let k: kw::multiplier = input.parse()?;
                set_once(&mut args.multiplier, &k, "multiplier", value(input)?)
            } else if look.peek(kw::per_attempt_timeout) {
                let k: kw::per_attempt_timeout = input.parse()?;
                set_once(
                    &mut args.per_attempt_timeout,
                    &k,
                    "per_attempt_timeout",
                    value(input)?,
                )
            } else if look.peek(kw::on) {
                let k: kw::on = input.parse()?;
                set_once(&mut args.on, &k, "on", code_list(input)?)
            } else {
                Err(look.error())
            }
        })?;
        Ok(args)
    }
}

impl Parse for HedgeArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = HedgeArgs::default();
        parse_keys(input, |input| {
            let look = input.lookahead1();
            if look.peek(kw::max_attempts) {
                let k: kw::max_attempts = input.parse()?;
                set_once(&mut args.max_attempts, &k, "max_attempts", value(input)?)
            } else if look.peek(kw::delay) {
                let k: kw::delay = input.parse()?;
                set_once(&mut args.delay, &k, "delay", value(input)?)
            } else if look.peek(kw::non_fatal) {
                let k: kw::non_fatal = input.parse()?;
                set_once(&mut args.non_fatal, &k, "non_fatal", code_list(input)?)
            } else {
                Err(look.error())
            }
        })?;
        Ok(args)
    }
}

fn code_list(input: ParseStream<'_>) -> syn::Result<(Span, Vec<Ident>)> {
    input.parse::<Token![=]>()?;
    let content;
    let bracket = bracketed!(content in input);
    let codes = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
    Ok((bracket.span.join(), codes.into_iter().collect()))
}

impl Parse for BreakerArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut a = BreakerArgs::default();
        parse_keys(input, |input| {
            let look = input.lookahead1();
            if look.peek(kw::min_failures) {
                let k: kw::min_failures = input.parse()?;
                set_once(&mut a.min_failures, &k, "min_failures", value(input)?)
            } else if look.peek(kw::failure_ratio) {
                let k: kw::failure_ratio = input.parse()?;
                set_once(&mut a.failure_ratio, &k, "failure_ratio", value(input)?)
            } else if look.peek(kw::window) {
                let k: kw::window = input.parse()?;
                set_once(&mut a.window, &k, "window", value(input)?)
            } else if look.peek(kw::open_timeout) {
                let k: kw::open_timeout = input.parse()?;
                set_once(&mut a.open_timeout, &k, "open_timeout", value(input)?)
            } else if look.peek(kw::max_open_timeout) {
                let k: kw::max_open_timeout = input.parse()?;
                set_once(
                    &mut a.max_open_timeout,
                    &k,
                    "max_open_timeout",
                    value(input)?,
                )
            } else if look.peek(kw::half_open_max_calls) {
                let k: kw::half_open_max_calls = input.parse()?;
                set_once(
                    &mut a.half_open_max_calls,
                    &k,
                    "half_open_max_calls",
                    value(input)?,
                )
            } else if look.peek(kw::half_open_successes) {
                let k: kw::half_open_successes = input.parse()?;
                set_once(
                    &mut a.half_open_successes,
                    &k,
                    "half_open_successes",
                    value(input)?,
                )
            } else if look.peek(kw::failures) {
                let k: kw::failures = input.parse()?;
                set_once(&mut a.failures, &k, "failures", code_list(input)?)
            } else {
                Err(look.error())
            }
        })?;
        Ok(a)
    }
}

impl Parse for ThrottleArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = ThrottleArgs::default();
        parse_keys(input, |input| {
            let look = input.lookahead1();
            if look.peek(kw::max_tokens) {
                let k: kw::max_tokens = input.parse()?;
                set_once(&mut args.max_tokens, &k, "max_tokens", value(input)?)
            } else if look.peek(kw::token_ratio) {
                let k: kw::token_ratio = input.parse()?;
                set_once(&mut args.token_ratio, &k, "token_ratio", value(input)?)
            } else {
                Err(look.error())
            }
        })?;
        Ok(args)
    }
}

/// The per-method helper attributes, as found on a trait method.
#[derive(Default)]
pub(crate) struct MethodArgs {
    pub(crate) no_retry: Option<syn::Attribute>,
    pub(crate) retry: Option<(Span, RetryArgs)>,
    pub(crate) hedge: Option<(Span, HedgeArgs)>,
    pub(crate) timeout: Option<LitStr>,
}

/// Which helper attribute `attr` is, if any: `name` or `steadfast::name`.
pub(crate) fn helper_name(attr: &syn::Attribute) -> Option<&'static str> {
    let path = attr.path();
    let last = path.segments.last()?.ident.to_string();
    let qualified_ok = match path.segments.len() {
        1 => true,
        2 => path.segments[0].ident == "steadfast",
        _ => false,
    };
    if !qualified_ok {
        return None;
    }
    ["no_retry", "retry", "hedge", "timeout"]
        .into_iter()
        .find(|name| *name == last)
}

/// Parses the helper attributes of one method. Errors are combined.
pub(crate) fn method_args(attrs: &[syn::Attribute]) -> syn::Result<MethodArgs> {
    let mut args = MethodArgs::default();
    let mut errors: Option<syn::Error> = None;
    for attr in attrs {
        let result = match helper_name(attr) {
            Some("no_retry") => attr
                .meta
                .require_path_only()
                .and_then(|_| set_once(&mut args.no_retry, attr, "no_retry", attr.clone())),
            Some("retry") => attr
                .parse_args::<RetryArgs>()
                .and_then(|r| set_once(&mut args.retry, attr, "retry", (attr_span(attr), r))),
            Some("hedge") => attr
                .parse_args::<HedgeArgs>()
                .and_then(|h| set_once(&mut args.hedge, attr, "hedge", (attr_span(attr), h))),
            Some("timeout") => match &attr.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: Lit::Str(s), ..
                    }) => set_once(&mut args.timeout, attr, "timeout", s.clone()),
                    other => Err(syn::Error::new_spanned(
                        other,
                        "expected a duration string; write #[timeout = \"2s\"]",
                    )),
                },
                _ => Err(syn::Error::new_spanned(
                    attr,
                    "expected #[timeout = \"2s\"]",
                )),
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            }
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(args),
    }
}

fn attr_span(attr: &syn::Attribute) -> Span {
    syn::spanned::Spanned::span(attr)
}
