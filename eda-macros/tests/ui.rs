//! The compile-time experience of the macros: what compiles, and the error a
//! user sees, at their own tokens, when something does not.
//!
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test -p eda-macros
//! --test ui`, then read every `.stderr`: they are the product.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
