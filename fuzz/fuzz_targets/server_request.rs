#![no_main]
// The first byte picks the route (pull, push, WatermelonDB POST and GET); the
// rest is the body. Shared with the stable property tests (fuzz-harness).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((route, body)) = data.split_first() {
        ferry_fuzz_harness::server_request(*route, body)
    }
});
