//! Fuzz target `api_bodies`: the body is `lanparty_lite::fuzz_entry::api_bodies`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/api_bodies/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::api_bodies(data);
});
