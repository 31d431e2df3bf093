//! Fuzz target `http_request`: the body is `lanparty_lite::fuzz_entry::http_request`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/http_request/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::http_request(data);
});
