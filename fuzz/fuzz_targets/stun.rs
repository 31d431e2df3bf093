//! Fuzz target `stun`: the body is `lanparty_lite::fuzz_entry::stun`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/stun/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::stun(data);
});
