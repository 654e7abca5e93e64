//! Fuzz target `rewrite`: the invariants live in `dualwrite_rules::fuzz_checks::check_rewrite`, shared
//! with the stable regression test rewrite-rules/tests/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dualwrite_rules::fuzz_checks::check_rewrite(data));
