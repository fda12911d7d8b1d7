#![no_main]
// The first byte picks the collection; the rest is the read-through query.
// Shared with the stable property tests (fuzz-harness).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((collection, query)) = data.split_first() {
        ferry_fuzz_harness::fetch_request(*collection, query)
    }
});
