//! Compile-time checks of the macros: every misuse is an error with a span and a hint, and
//! the passing cases (full attribute, shadowed names, async_trait) compile.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/full-attribute.rs");
    t.pass("tests/ui/pass/shadowing.rs");
    t.pass("tests/ui/pass/async-trait.rs");
    t.pass("tests/ui/pass/traced.rs");
    t.pass("tests/ui/pass/request-argument.rs");
    t.pass("tests/ui/pass/request-stream.rs");
}
