//! The property checks behind the fuzz targets. They live in `checks.rs` so that
//! `shared/tests/fuzz_regressions.rs` can compile the very same code (`#[path]`) and replay
//! every kept input in the ordinary test run, without linking libFuzzer.
pub mod checks;
