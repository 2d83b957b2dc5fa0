//! Expansion of `#[traced]`: the span is created here (so its call site is the user's), and
//! everything else is a call into `::steadfast::__private::trace`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::quote;

use super::valid::{Kind, Traced};

pub(crate) fn expand(t: Traced) -> TokenStream {
    let Traced {
        item,
        kind,
        span_name,
        method,
        service,
        level,
        fields,
        custom,
        output,
        returns_result,
        async_trait_body,
        has_receiver,
    } = t;
    let level = Ident::new(level, Span::call_site());
    let grpc_service = match &service {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    };
    let service = match service {
        Some(s) => quote!(#s),
        None => quote!(::core::env!("CARGO_PKG_NAME")),
    };
    // The gRPC name of the method when the request path is not known: `get_user` -> `GetUser`.
    let grpc_method = crate::valid::camel(&method);
    let call = match &kind {
        Kind::Grpc { request } => {
            let service_type = if has_receiver {
                quote!(::core::any::type_name::<Self>())
            } else {
                quote!(::core::module_path!())
            };
            quote! {{
                static __STEADFAST_SITE: ::steadfast::__private::trace::Site =
                    ::steadfast::__private::trace::Site::new();
                ::steadfast::__private::trace::Call::grpc(
                    &#request,
                    &__STEADFAST_SITE,
                    #service_type,
                    #method,
                    #grpc_service,
                    #grpc_method,
                )
            }}
        }
        Kind::Http { headers } => {
            quote!(::steadfast::__private::trace::Call::http(&#headers, #service, #method))
        }
        Kind::Plain => quote!(::steadfast::__private::trace::Call::child(#service, #method)),
    };
    let code = if returns_result {
        quote!(::steadfast::__private::trace::result_code)
    } else {
        quote!(::steadfast::__private::trace::ok_code)
    };
    let body = match &async_trait_body {
        Some(block) => quote!(#block),
        None => {
            let stmts = &item.block.stmts;
            quote! {
                async move {
                    // Keeps the return type known to inference inside the block.
                    #[allow(unreachable_code, clippy::diverging_sub_expression)]
                    if false {
                        let __steadfast_fake_return: #output = loop {};
                        return __steadfast_fake_return;
                    }
                    #(#stmts)*
                }
            }
        }
    };
    let run = match &kind {
        // A handler answering with a stream keeps its span until the stream ends.
        Kind::Grpc { .. } => quote! {{
            #[allow(unused_imports)]
            use ::steadfast::__private::trace::{StreamReply as _, UnaryReply as _};
            let __steadfast_hold = (&::steadfast::__private::trace::Probe::<#output>::new()).hold();
            __steadfast_call.run_grpc(__steadfast_span, #body, __steadfast_hold).await
        }},
        Kind::Http { .. } => {
            quote!(__steadfast_call.run(__steadfast_span, #body, #code, true).await)
        }
        Kind::Plain => quote!(__steadfast_call.run(__steadfast_span, #body, #code, false).await),
    };
    let empty = quote!(::steadfast::__private::tracing::field::Empty);
    let custom = custom.iter().map(|f| {
        let name = &f.name;
        match &f.value {
            Some((sigil, value)) => quote!(#name = #sigil #value),
            None => quote!(#name = #empty),
        }
    });
    let kind_fields = match &kind {
        Kind::Grpc { .. } => quote! {
            otel.name = __steadfast_call.otel_name(),
            otel.kind = __steadfast_call.span_kind(),
            otel.status_code = #empty,
            rpc.system = "grpc",
            rpc.service = __steadfast_call.rpc_service(),
            rpc.method = __steadfast_call.rpc_method(),
            rpc.grpc.status_code = #empty,
            client.address = #empty,
            client.port = #empty,
            message_type = __steadfast_call.message_type(),
        },
        Kind::Http { .. } => quote! {
            otel.kind = __steadfast_call.span_kind(),
            service = __steadfast_call.service(),
            method = #method,
        },
        Kind::Plain => quote! {
            service = __steadfast_call.service(),
            method = #method,
        },
    };
    let instrumented = quote! {
        let mut __steadfast_call = #call;
        let __steadfast_span = ::steadfast::__private::tracing::span!(
            target: ::core::module_path!(),
            ::steadfast::__private::tracing::Level::#level,
            #span_name,
            #kind_fields
            trace_id = #empty,
            span_id = #empty,
            parent_span_id = #empty,
            #(#custom,)*
            #(#fields = ::steadfast::__private::tracing::field::debug(&#fields),)*
        );
        __steadfast_call.bind(&__steadfast_span);
        #run
    };
    let attrs = &item.attrs;
    let vis = &item.vis;
    let sig = &item.sig;
    let block = if async_trait_body.is_some() {
        quote!({ ::std::boxed::Box::pin(async move { #instrumented }) })
    } else {
        quote!({ #instrumented })
    };
    quote! {
        #(#attrs)*
        #vis #sig #block
    }
}
