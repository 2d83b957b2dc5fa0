//! Checks `#[traced]` use and works out what kind of function it is on.

use syn::{
    Block, Expr, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Stmt, Type,
    TypeParamBound,
};

use super::attr::{Field, TracedArgs};
use crate::valid::Errors;

/// Where the handler's context comes from.
pub(crate) enum Kind {
    /// A tonic handler: `Request<T>` in, `Result<Response<U>, Status>` out.
    Grpc { request: Ident },
    /// An HTTP handler with a `HeaderMap` argument.
    Http { headers: Ident },
    /// Anything else: a child span of the current context.
    Plain,
}

pub(crate) struct Traced {
    pub(crate) item: ItemFn,
    pub(crate) kind: Kind,
    pub(crate) span_name: String,
    pub(crate) method: String,
    pub(crate) service: Option<String>,
    pub(crate) level: &'static str,
    /// Arguments recorded with `Debug`.
    pub(crate) fields: Vec<Ident>,
    /// `fields(...)` entries.
    pub(crate) custom: Vec<Field>,
    pub(crate) output: Type,
    pub(crate) returns_result: bool,
    /// `Some` for `#[async_trait]` output: the `async move` block inside `Box::pin(..)`.
    pub(crate) async_trait_body: Option<Expr>,
    pub(crate) has_receiver: bool,
}

fn last_ident(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) => p.path.segments.last(),
        Type::Reference(r) => last_ident(&r.elem),
        _ => None,
    }
}

fn first_generic(seg: &syn::PathSegment) -> Option<&Type> {
    match &seg.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// `Pin<Box<dyn Future<Output = T> + ..>>` -> `T`.
fn boxed_future_output(ty: &Type) -> Option<Type> {
    let pin = last_ident(ty).filter(|s| s.ident == "Pin")?;
    let boxed = first_generic(pin)
        .and_then(last_ident)
        .filter(|s| s.ident == "Box")?;
    let Some(Type::TraitObject(obj)) = first_generic(boxed) else {
        return None;
    };
    obj.bounds.iter().find_map(|b| match b {
        TypeParamBound::Trait(t) => {
            let seg = t.path.segments.last().filter(|s| s.ident == "Future")?;
            match &seg.arguments {
                PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
                    GenericArgument::AssocType(at) if at.ident == "Output" => Some(at.ty.clone()),
                    _ => None,
                }),
                _ => None,
            }
        }
        _ => None,
    })
}

/// The `async move { .. }` inside a body that is only `Box::pin(async move { .. })`.
fn async_trait_block(block: &Block) -> Option<Expr> {
    let [Stmt::Expr(Expr::Call(call), None)] = block.stmts.as_slice() else {
        return None;
    };
    let Expr::Path(func) = &*call.func else {
        return None;
    };
    let is_pin = func.path.segments.last().is_some_and(|s| s.ident == "pin");
    match (is_pin, call.args.len(), call.args.first()) {
        (true, 1, Some(arg @ Expr::Async(_))) => Some(arg.clone()),
        _ => None,
    }
}

/// Types that carry request metadata, headers or credentials (tokens, cookies): never
/// recorded, whatever the options say, so no secret reaches a span by accident. Looks
/// through references, pointers, tuples, arrays and generic arguments (`Option<HeaderMap>`,
/// `Box<Request<T>>`, `TypedHeader<Authorization<Bearer>>`). `fields(...)` can still record
/// a part of them on purpose.
fn carries_metadata(ty: &Type) -> bool {
    const NAMES: [&str; 16] = [
        "Request",
        "HeaderMap",
        "MetadataMap",
        "Parts",
        "Extensions",
        "TypedHeader",
        "Authorization",
        "ProxyAuthorization",
        "Bearer",
        "Basic",
        "Credentials",
        "Cookie",
        "CookieJar",
        "PrivateCookieJar",
        "SignedCookieJar",
        "Secret",
    ];
    match ty {
        Type::Path(p) => p.path.segments.iter().any(|seg| {
            NAMES.iter().any(|n| seg.ident == n)
                || match &seg.arguments {
                    PathArguments::AngleBracketed(a) => a
                        .args
                        .iter()
                        .any(|g| matches!(g, GenericArgument::Type(t) if carries_metadata(t))),
                    _ => false,
                }
        }),
        Type::Reference(r) => carries_metadata(&r.elem),
        Type::Ptr(p) => carries_metadata(&p.elem),
        Type::Paren(p) => carries_metadata(&p.elem),
        Type::Group(g) => carries_metadata(&g.elem),
        Type::Array(a) => carries_metadata(&a.elem),
        Type::Slice(a) => carries_metadata(&a.elem),
        Type::Tuple(t) => t.elems.iter().any(carries_metadata),
        _ => false,
    }
}

/// Argument names that would repeat a field `#[traced]` records itself: such arguments are
/// not recorded (a second `trace_id` field would hide the real one in log pipelines).
const RECORDED: [&str; 6] = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "service",
    "method",
    "message_type",
];

/// Span fields `#[traced]` records itself.
const RESERVED: [&str; 6] = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "otel",
    "rpc",
    "client",
];

fn is_result(ty: &Type) -> bool {
    last_ident(ty).is_some_and(|s| s.ident == "Result")
}

/// `Result<Response<U>, Status>`.
fn is_grpc_result(ty: &Type) -> bool {
    let Some(seg) = last_ident(ty).filter(|s| s.ident == "Result") else {
        return false;
    };
    let PathArguments::AngleBracketed(a) = &seg.arguments else {
        return false;
    };
    let tys: Vec<&Type> = a
        .args
        .iter()
        .filter_map(|g| match g {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    match tys.as_slice() {
        [ok, err] => {
            last_ident(ok).is_some_and(|s| s.ident == "Response")
                && last_ident(err).is_some_and(|s| s.ident == "Status")
        }
        // `tonic::Result<Response<U>>`
        [ok] => last_ident(ok).is_some_and(|s| s.ident == "Response"),
        _ => false,
    }
}

pub(crate) fn traced(args: TracedArgs, item: ItemFn) -> syn::Result<Traced> {
    let mut errors = Errors::default();
    let sig = &item.sig;
    let async_trait_body = if sig.asyncness.is_none() {
        async_trait_block(&item.block)
    } else {
        None
    };
    let output: Type = match (&sig.output, &async_trait_body) {
        (ReturnType::Type(_, ty), None) => (**ty).clone(),
        (ReturnType::Type(_, ty), Some(_)) => match boxed_future_output(ty) {
            Some(t) => t,
            None => {
                errors.spanned(
                    ty,
                    "expected `Pin<Box<dyn Future<Output = T>>>` from #[async_trait]",
                );
                syn::parse_quote!(())
            }
        },
        (ReturnType::Default, _) => syn::parse_quote!(()),
    };
    if sig.asyncness.is_none() && async_trait_body.is_none() {
        errors.spanned(
            sig.fn_token,
            format!(
                "#[traced] goes on an async fn; write `async fn {}(..)` (with #[async_trait], put #[traced] on the method inside the impl)",
                sig.ident
            ),
        );
    }
    let mut has_receiver = false;
    let mut params: Vec<(Ident, Type)> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => has_receiver = true,
            FnArg::Typed(t) => {
                if let Pat::Ident(p) = &*t.pat {
                    params.push((p.ident.clone(), (*t.ty).clone()));
                }
            }
        }
    }
    let skip = args.skip.clone().unwrap_or_default();
    if let (Some(skip_all), Some(list)) = (&args.skip_all, &args.skip) {
        let at = list.first().map_or(skip_all.span, |i| i.span());
        errors.at(
            at,
            "`skip(..)` has no effect with `skip_all`, which records no argument; keep one of them",
        );
    }
    let custom = args.fields.unwrap_or_default();
    let mut seen: Vec<String> = Vec::new();
    for field in &custom {
        let name = field
            .name
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(".");
        let first = field
            .name
            .first()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if RESERVED.contains(&first.as_str()) {
            errors.spanned(
                &field.name,
                format!("`{name}` is recorded by #[traced] itself; choose another field name"),
            );
        } else if seen.contains(&name) {
            errors.spanned(&field.name, format!("the field `{name}` is given twice"));
        }
        seen.push(name);
    }
    for s in &skip {
        if !params.iter().any(|(i, _)| i == s) {
            errors.spanned(
                s,
                format!(
                    "`{s}` is not an argument of `{}`; skip lists argument names",
                    sig.ident
                ),
            );
        }
    }
    let level = match &args.level {
        None => "INFO",
        Some(lit) => match lit.value().to_ascii_lowercase().as_str() {
            "trace" => "TRACE",
            "debug" => "DEBUG",
            "info" => "INFO",
            "warn" => "WARN",
            "error" => "ERROR",
            other => {
                errors.spanned(
                    lit,
                    format!("unknown level `{other}`; use trace, debug, info, warn or error"),
                );
                "INFO"
            }
        },
    };
    if let Some(name) = &args.name
        && name.value().trim().is_empty()
    {
        errors.spanned(name, "the span name is empty");
    }
    errors.finish()?;

    let first_typed = sig.inputs.iter().find_map(|a| match a {
        FnArg::Typed(t) => Some(t),
        _ => None,
    });
    let grpc_request = first_typed.and_then(|t| match (&*t.pat, last_ident(&t.ty)) {
        (Pat::Ident(p), Some(seg)) if seg.ident == "Request" && first_generic(seg).is_some() => {
            Some(p.ident.clone())
        }
        _ => None,
    });
    let kind = match grpc_request {
        Some(request) if is_grpc_result(&output) => Kind::Grpc { request },
        _ => match params
            .iter()
            .find(|(_, ty)| last_ident(ty).is_some_and(|s| s.ident == "HeaderMap"))
        {
            Some((headers, _)) => Kind::Http {
                headers: headers.clone(),
            },
            None => Kind::Plain,
        },
    };
    let method = sig.ident.to_string();
    let span_name = match (&args.name, &kind) {
        (Some(n), _) => n.value(),
        (None, Kind::Grpc { .. }) => "rpc".to_owned(),
        (None, _) => method.clone(),
    };
    let fields = if args.skip_all.is_some() {
        Vec::new()
    } else {
        params
            .iter()
            .filter(|(i, ty)| {
                let name = i.to_string();
                !skip.contains(i)
                    && !carries_metadata(ty)
                    && !seen.contains(&name)
                    && !RECORDED.contains(&name.as_str())
            })
            .map(|(i, _)| i.clone())
            .collect()
    };
    Ok(Traced {
        returns_result: is_result(&output),
        kind,
        span_name,
        method,
        service: args.service.map(|s| s.value()),
        level,
        fields,
        custom,
        output,
        async_trait_body,
        has_receiver,
        item,
    })
}
