//! Checks the parsed arguments and the trait, and builds the model that `expand` emits.
//! Every error spans the offending token and says what to write instead; errors are
//! combined so the user sees all of them at once. The policies (`retry`, `throttle`,
//! `breaker`) are checked by `steadfast-spec`, the same code the runtime runs (`policy`).

mod policy;

use std::time::Duration;

use proc_macro2::Span;
use steadfast_spec::{BreakerSpec, HedgeSpec, RetrySpec, ThrottleSpec};
use syn::{FnArg, Ident, ItemTrait, LitStr, Path, ReturnType, TraitItem, Type};

use crate::attr::{self, BreakerArgs, ClientArgs, RetryArgs};

/// Names the generated client already uses for its own items.
const RESERVED: [&str; 3] = ["connect", "from_core", "core"];

/// Default overall deadline of a call when the attribute gives none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The checked model of one client.
pub(crate) struct Client {
    pub(crate) service: String,
    pub(crate) client: Path,
    pub(crate) grpc_service: Option<String>,
    pub(crate) throttle: Option<ThrottleSpec>,
    pub(crate) breaker: BreakerSpec,
    pub(crate) async_trait: bool,
    pub(crate) methods: Vec<Method>,
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
    pub(crate) retry: Option<RetrySpec>,
    pub(crate) hedge: Option<HedgeSpec>,
    /// Whether the method returns a response stream (`Result<Streaming<R>, Status>`).
    pub(crate) streaming: bool,
    /// Whether the method sends a stream of requests (`impl Stream<Item = M> + Send +
    /// 'static`, or that inside `tonic::Request<..>`): client or bidirectional streaming.
    pub(crate) request_stream: bool,
    /// The message type `M` of a request stream.
    pub(crate) request_item: Option<Type>,
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
        .and_then(|t| policy::throttle(&mut errors, t));
    let breaker = policy::breaker(
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
        let mut request_item = None;
        let message = match (inputs.next(), inputs.next()) {
            (Some(FnArg::Typed(t)), None) if is_stream(&t.ty) => match request_stream(&t.ty) {
                Ok(item) => {
                    request_item = Some(item);
                    Some((*t.ty).clone())
                }
                Err((at, msg)) => {
                    errors.spanned(at, msg);
                    None
                }
            },
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
        if let (Some(attr), Some((span, _))) = (&margs.no_retry, &margs.hedge) {
            let _ = attr;
            errors.at(
                *span,
                "`no_retry` and `hedge(...)` contradict each other: a method that is not idempotent cannot be hedged; keep one",
            );
        }
        if let (Some((span, _)), Some(_)) = (&margs.hedge, &margs.retry) {
            errors.at(
                *span,
                "`hedge(...)` and `retry(...)` on one method: gRFC A6 allows one policy per method; keep one",
            );
        }
        // Method level wins over trait level; `retry(...)` on a method turns the trait's
        // hedging off for it, and `hedge(...)` on a method its retries.
        let hedge = if margs.no_retry.is_some() || margs.retry.is_some() {
            None
        } else {
            margs
                .hedge
                .as_ref()
                .or(args.hedge.as_ref())
                .and_then(|(_, h)| policy::hedge(&mut errors, h))
        };
        let retry = if margs.no_retry.is_some() {
            None
        } else {
            let merged = match &margs.retry {
                Some((_, m)) => merge(trait_retry, m),
                None => trait_retry.clone(),
            };
            policy::retry(&mut errors, &merged)
        };
        if let Some(message) = message {
            methods.push(Method {
                ident: sig.ident.clone(),
                grpc_method: camel(&sig.ident.to_string()),
                sig: sig.clone(),
                request_form: is_request(&message),
                streaming: streams_response(&sig.output),
                request_stream: request_item.is_some(),
                request_item,
                message,
                timeout,
                retry,
                hedge,
            });
        }
    }
    // Check the trait-level retry even when every method opts out, so typos surface.
    if args.retry.is_some() {
        let _ = policy::retry(&mut errors, trait_retry);
    }
    if let (Some((span, _)), Some(_)) = (&args.hedge, &args.retry) {
        errors.at(
            *span,
            "`hedge(...)` and `retry(...)` on one client: gRFC A6 allows one policy per method; keep one, or put them on different methods",
        );
    }
    if let Some((_, h)) = &args.hedge {
        let _ = policy::hedge(&mut errors, h);
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

/// A stream of requests: `impl Stream<..>`, `dyn Stream<..>`, `Streaming<..>` or a type named
/// `..Stream`, also inside `tonic::Request<..>`, `Pin<..>` or `Box<..>`.
fn is_stream(ty: &Type) -> bool {
    let names_stream =
        |bounds: &syn::punctuated::Punctuated<syn::TypeParamBound, syn::Token![+]>| {
            bounds.iter().any(|b| {
                matches!(b, syn::TypeParamBound::Trait(t)
                if t.path.segments.last().is_some_and(|s| s.ident == "Stream"))
            })
        };
    match ty {
        Type::ImplTrait(t) => names_stream(&t.bounds),
        Type::TraitObject(t) => names_stream(&t.bounds),
        Type::Reference(r) => is_stream(&r.elem),
        Type::Paren(p) => is_stream(&p.elem),
        Type::Path(tp) => {
            let Some(last) = tp.path.segments.last() else {
                return false;
            };
            let name = last.ident.to_string();
            if name == "Streaming" || name.ends_with("Stream") {
                return true;
            }
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return false;
            };
            matches!(name.as_str(), "Request" | "Pin" | "Box")
                && args
                    .args
                    .iter()
                    .any(|a| matches!(a, syn::GenericArgument::Type(t) if is_stream(t)))
        }
        _ => false,
    }
}

/// The one form of request stream a client method takes: `impl Stream<Item = M> + Send +
/// 'static`, alone or inside `tonic::Request<..>`. Any other form is an error on the
/// offending tokens, saying what to write.
fn request_stream(ty: &Type) -> Result<Type, (Box<dyn quote::ToTokens>, String)> {
    const WRITE: &str = "write a stream of requests as `impl Stream<Item = Message> + Send + 'static` (or `tonic::Request<impl Stream<Item = Message> + Send + 'static>` to send metadata)";
    let inner = match ty {
        Type::Path(tp) if is_request(ty) => {
            let Some(syn::PathArguments::AngleBracketed(a)) =
                tp.path.segments.last().map(|s| &s.arguments)
            else {
                unreachable!("is_request checked the one type argument")
            };
            match &a.args[0] {
                syn::GenericArgument::Type(t) => t,
                _ => unreachable!("is_request checked the one type argument"),
            }
        }
        _ => ty,
    };
    let Type::ImplTrait(it) = inner else {
        let streaming = matches!(inner, Type::Path(tp)
            if tp.path.segments.last().is_some_and(|s| s.ident == "Streaming"));
        let msg = if streaming {
            format!(
                "`Streaming` is a stream of received messages, as a server handler gets it; to send one, {WRITE}"
            )
        } else {
            format!("{WRITE}: a boxed or named stream can be passed to it as it is")
        };
        return Err((Box::new(inner.clone()), msg));
    };
    let mut send = false;
    let mut stat = false;
    let mut item = None;
    for bound in &it.bounds {
        match bound {
            syn::TypeParamBound::Trait(t) => {
                let Some(last) = t.path.segments.last() else {
                    continue;
                };
                if last.ident == "Send" {
                    send = true;
                } else if last.ident == "Stream"
                    && let syn::PathArguments::AngleBracketed(a) = &last.arguments
                {
                    item = a.args.iter().find_map(|g| match g {
                        syn::GenericArgument::AssocType(at) if at.ident == "Item" => {
                            Some(at.ty.clone())
                        }
                        _ => None,
                    });
                }
            }
            syn::TypeParamBound::Lifetime(l) if l.ident == "static" => stat = true,
            _ => {}
        }
    }
    let Some(item) = item else {
        return Err((
            Box::new(it.clone()),
            format!("name the message type of the stream: {WRITE}"),
        ));
    };
    if let Type::Path(tp) = &item
        && tp.path.segments.last().is_some_and(|s| s.ident == "Result")
    {
        return Err((
            Box::new(item.clone()),
            format!("the items of a request stream are messages, not results; {WRITE}"),
        ));
    }
    if !send || !stat {
        let missing = match (send, stat) {
            (false, false) => "`+ Send + 'static`",
            (false, true) => "`+ Send`",
            _ => "`+ 'static`",
        };
        return Err((
            Box::new(it.clone()),
            format!(
                "add {missing}: the stream is read by the connection's task and replayed on retries, after this method returns; {WRITE}"
            ),
        ));
    }
    Ok(item)
}

/// `Result<Streaming<R>, _>`: `tonic::Streaming` or an imported `Streaming`.
fn streams_response(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    let Type::Path(tp) = &**ty else { return false };
    let Some(syn::PathArguments::AngleBracketed(args)) =
        tp.path.segments.last().map(|s| &s.arguments)
    else {
        return false;
    };
    matches!(args.args.first(), Some(syn::GenericArgument::Type(Type::Path(ok)))
        if ok.path.segments.last().is_some_and(|s| s.ident == "Streaming"))
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

/// The overall deadline of a call: a duration above zero.
fn positive_duration(errors: &mut Errors, lit: &LitStr, name: &str) -> Option<Duration> {
    match steadfast_spec::duration::parse(&lit.value()) {
        Ok(d) if d.is_zero() => {
            errors.spanned(
                lit,
                format!("{name}: 0s is too short; write a duration greater than zero, e.g. \"2s\""),
            );
            None
        }
        Ok(d) => Some(d),
        Err(why) => {
            errors.spanned(lit, format!("invalid {name}: {why}"));
            None
        }
    }
}

/// `get_user` -> `GetUser`, as tonic-build derives Rust names from proto names.
pub(crate) fn camel(snake: &str) -> String {
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
