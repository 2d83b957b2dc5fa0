//! `#[traced(...)]` arguments.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Token, parenthesized};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(level);
    syn::custom_keyword!(service);
}

#[derive(Default)]
pub(crate) struct TracedArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) service: Option<LitStr>,
    pub(crate) level: Option<LitStr>,
    pub(crate) skip: Option<Vec<Ident>>,
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
            } else if look.peek(kw::skip) {
                let k: kw::skip = input.parse()?;
                let content;
                parenthesized!(content in input);
                let list = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                crate::attr::set_once(&mut a.skip, &k, "skip", list.into_iter().collect())
            } else {
                Err(look.error())
            }
        })?;
        Ok(a)
    }
}
