//! Fuzz target `relay_frame`: the body is `lanparty_lite::fuzz_entry::relay_frame`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/relay_frame/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::relay_frame(data);
});
