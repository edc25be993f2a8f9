//! Compile-time behaviour of `#[workflow]`: what it accepts, and the errors
//! it reports for what it does not. Refresh the expected `.stderr` files with
//! `TRYBUILD=overwrite cargo test --test ui`, then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
