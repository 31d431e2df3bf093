//! Fuzz target `join_code`: the body is `lanparty_lite::fuzz_entry::join_code`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/join_code/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::join_code(data);
});
