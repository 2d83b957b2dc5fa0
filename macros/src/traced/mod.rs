//! `#[traced]`: parse (`attr`), validate (`valid`), expand (`expand`).

mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn traced(args: TokenStream, item: syn::ItemFn) -> TokenStream {
    let parsed = syn::parse2::<attr::TracedArgs>(args).and_then(|a| valid::traced(a, item.clone()));
    match parsed {
        Ok(model) => expand::expand(model),
        Err(err) => {
            // The function as written, beside the error, so nothing else cascades.
            let err = err.to_compile_error();
            quote!(#item #err)
        }
    }
}
