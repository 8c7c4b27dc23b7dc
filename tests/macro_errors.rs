//! `#[hsipc::service]` misuse is a compile error at the span to change, saying what to change:
//! one file per misuse in `tests/ui/`, each with its expected compiler output (`.stderr`).
//!
//! The expected output is rustc's, for the toolchain CI uses; after a toolchain or a macro
//! change, regenerate with `TRYBUILD=overwrite cargo test --all-features --test macro_errors`
//! and read every `.stderr` that changed.

#[test]
fn service_macro_misuse_is_a_compile_error_at_its_span() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
