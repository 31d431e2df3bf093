//! Fuzz target `http_response`: the body is `lanparty_lite::fuzz_entry::http_response`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/http_response/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::http_response(data);
});
