//! Fuzz target `registry_json`: the body is `lanparty_lite::fuzz_entry::registry_json`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/registry_json/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::registry_json(data);
});
