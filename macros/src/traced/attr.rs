//! `#[traced(...)]` arguments.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token, parenthesized};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(skip_all);
    syn::custom_keyword!(fields);
    syn::custom_keyword!(level);
    syn::custom_keyword!(service);
}

#[derive(Default)]
pub(crate) struct TracedArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) service: Option<LitStr>,
    pub(crate) level: Option<LitStr>,
    pub(crate) skip: Option<Vec<Ident>>,
    pub(crate) skip_all: Option<kw::skip_all>,
    pub(crate) fields: Option<Vec<Field>>,
}

/// One entry of `fields(...)`, as in `tracing::instrument`: `a.b = expr`, `a = %expr`,
/// `a = ?expr`, or `a` alone (declared, recorded later with `Span::record`).
pub(crate) struct Field {
    pub(crate) name: Punctuated<Ident, Token![.]>,
    pub(crate) value: Option<(Option<TokenStream>, Expr)>,
}

impl Parse for Field {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name = Punctuated::<Ident, Token![.]>::parse_separated_nonempty_with(
            input,
            syn::ext::IdentExt::parse_any,
        )?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let sigil = if input.peek(Token![%]) {
                input.parse::<Token![%]>()?;
                Some(quote::quote!(%))
            } else if input.peek(Token![?]) {
                input.parse::<Token![?]>()?;
                Some(quote::quote!(?))
            } else {
                None
            };
            Some((sigil, input.parse()?))
        } else {
            None
        };
        Ok(Field { name, value })
    }
}

impl Parse for TracedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut a = TracedArgs::default();
        crate::attr::parse_keys(input, |input| {
            let look = input.lookahead1();
            if look.peek(kw::name) {
                let k: kw::name = input.parse()?;
                crate::attr::set_once(&mut a.name, &k, "name", crate::attr::value(input)?)
            } else if look.peek(kw::service) {
                let k: kw::service = input.parse()?;
                crate::attr::set_once(&mut a.service, &k, "service", crate::attr::value(input)?)
            } else if look.peek(kw::level) {
                let k: kw::level = input.parse()?;
                crate::attr::set_once(&mut a.level, &k, "level", crate::attr::value(input)?)
            } else if look.peek(kw::skip_all) {
                let k: kw::skip_all = input.parse()?;
                crate::attr::set_once(&mut a.skip_all, &k, "skip_all", k)
            } else if look.peek(kw::skip) {
                let k: kw::skip = input.parse()?;
                let content;
                parenthesized!(content in input);
                let list = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                crate::attr::set_once(&mut a.skip, &k, "skip", list.into_iter().collect())
            } else if look.peek(kw::fields) {
                let k: kw::fields = input.parse()?;
                let content;
                parenthesized!(content in input);
                let list = Punctuated::<Field, Token![,]>::parse_terminated(&content)?;
                crate::attr::set_once(&mut a.fields, &k, "fields", list.into_iter().collect())
            } else {
                Err(look.error())
            }
        })?;
        Ok(a)
    }
}
