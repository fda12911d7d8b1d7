#![no_main]
// The body is shared with the stable property tests (fuzz-harness).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz_harness::schema(data));
