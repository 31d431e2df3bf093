//! Fuzz target `wire_ip`: the body is `lanparty_lite::fuzz_entry::wire_ip`, which
//! `tests/fuzz_corpus.rs` replays over `fuzz/corpus/wire_ip/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanparty_lite::fuzz_entry::wire_ip(data);
});
