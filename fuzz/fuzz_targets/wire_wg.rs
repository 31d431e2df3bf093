//! Fuzz target `wire_wg`: the body is `lanparty_lite::fuzz_entry::wire_wg`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/wire_wg/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::wire_wg(data);
});
