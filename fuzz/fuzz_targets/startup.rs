//! Fuzz target `startup`: the invariants live in `dualwrite_proxy::fuzz_checks::check_startup`, shared with the
//! stable regression test proxy/tests/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dualwrite_proxy::fuzz_checks::check_startup(data));
