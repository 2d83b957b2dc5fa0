//! Procedural macros for [steadfast](https://docs.rs/steadfast). Use them through the
//! `steadfast` crate, which re-exports them.
//!
//! The crate follows parse -> validate -> expand: `attr` turns attribute arguments into
//! plain structs, `valid` checks them and builds the model, and `expand` emits tokens
//! that call the runtime only through `::steadfast::__private`.

mod attr;
mod expand;
mod traced;
mod valid;

use proc_macro::TokenStream;

/// Generates a resilient client for a trait that describes a downstream gRPC service.
/// See the `steadfast` crate documentation for the full syntax.
#[proc_macro_attribute]
pub fn resilient_client(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    expand::resilient_client(args.into(), item).into()
}

/// Instruments a tonic handler, an HTTP handler or a plain async fn with the request's trace
/// context. See the `steadfast` crate documentation.
#[proc_macro_attribute]
pub fn traced(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemFn);
    traced::traced(args.into(), item).into()
}

/// Marks a method of a `#[resilient_client]` trait as not retried (not idempotent).
#[proc_macro_attribute]
pub fn no_retry(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::helper_outside_client("no_retry", args.into(), item.into()).into()
}

/// Overrides the retry policy of one method of a `#[resilient_client]` trait.
#[proc_macro_attribute]
pub fn retry(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::helper_outside_client("retry", args.into(), item.into()).into()
}

/// Hedges the calls of one method of a `#[resilient_client]` trait (gRFC A6 hedging).
#[proc_macro_attribute]
pub fn hedge(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::helper_outside_client("hedge", args.into(), item.into()).into()
}

/// Overrides the overall timeout of one method of a `#[resilient_client]` trait.
#[proc_macro_attribute]
pub fn timeout(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::helper_outside_client("timeout", args.into(), item.into()).into()
}
