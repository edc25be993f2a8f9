//! Compile-time behaviour of `#[workflow]`: what it accepts, and the errors
//! it reports for what it does not. Refresh the expected `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p workflow-macros --test ui`, then read
//! them. The cases live in this crate, whose dev-dependencies are few,
//! because trybuild builds its project with all of them from scratch.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
